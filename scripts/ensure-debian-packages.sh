#!/usr/bin/env bash
# Installs the Debian packages Ferry's tests use as real peers, when they are missing:
#   qemu-utils          qemu-img, qemu-io, qemu-nbd        (qcow2 and NBD oracles)
#   qemu-system-common  qemu-storage-daemon                (QEMU source host in tests)
#   nbdkit              nbdkit and its plugins/filters     (NBD peer, fault injection)
#   libnbd-bin          nbdinfo, nbdcopy                   (reference NBD clients)
#   openssl             certificates for TLS tests
#   qemu-system-x86     qemu-system-x86_64: a real Linux guest under TCG (test/src/support/test-vm.ts)
#   e2fsprogs           mkfs.ext4, e2fsck, debugfs for the guest's data disk
#   fdisk               sfdisk: real MBR and GPT partition tables (disk-format and swap-filter tests)
#   ntfs-3g             mkntfs, ntfscp: real NTFS images holding a pagefile.sys
#   util-linux          mkswap, blkid: Linux swap areas and their headers
#   postgresql          a PostgreSQL server in the "guest", quiesced and restored (test/src/guest-postgres)
#   mariadb-server, mariadb-client  a MariaDB server in the "guest", locked across the snapshot (test/src/guest-mariadb)
#   libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients
#                       libvirtd, virtlogd, virsh          (libvirt source host in tests; needs the
#                                                          user libvirt-qemu and group kvm, made below)
#   openssh-server, openssh-client  sshd, ssh, ssh-keygen  (sshd on loopback as a Linux guest; qemu+ssh:// to a test's libvirtd)
# Without root (or apt-get), it prints what is missing and the tests that need it skip, saying so.
set -u
declare -A need=([qemu-img]=qemu-utils [qemu-storage-daemon]=qemu-system-common [nbdkit]=nbdkit [nbdinfo]=libnbd-bin
  [openssl]=openssl [qemu-system-x86_64]=qemu-system-x86 [mkfs.ext4]=e2fsprogs
  [sfdisk]=fdisk [mkntfs]=ntfs-3g [ntfscp]=ntfs-3g [mkswap]=util-linux [blkid]=util-linux
  [/usr/sbin/sshd]=openssh-server [ssh]=openssh-client [pg_ctlcluster]=postgresql
  [mariadb-install-db]=mariadb-server [mariadb]=mariadb-client
  [libvirtd]=libvirt-daemon [virsh]=libvirt-clients)
missing=()
for cmd in "${!need[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
compgen -G '/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so' >/dev/null || missing+=(libvirt-daemon-driver-qemu)
# libvirtd's QEMU driver refuses to start without them (Debian's package scripts make them, but
# --no-install-recommends containers may lack the user).
libvirt_users() {
  [ "$(id -u)" -eq 0 ] || return 0
  getent group kvm >/dev/null || groupadd --system kvm
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home --gid kvm --shell /usr/sbin/nologin libvirt-qemu
}
if [ ${#missing[@]} -eq 0 ]; then libvirt_users; exit 0; fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)   # one package may ship several tools
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ferry: missing Debian packages (tests that need them will skip): ${missing[*]}" >&2
  exit 0
fi
echo "ferry: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || { echo "ferry: apt-get install failed for: ${missing[*]}" >&2; exit 1; }
libvirt_users
