#!/usr/bin/env bash
# Installs the Debian packages Ferry's tests use as real peers, when they are missing:
#   qemu-utils          qemu-img, qemu-io, qemu-nbd        (qcow2 and NBD oracles)
#   qemu-system-common  qemu-storage-daemon                (QEMU source host in tests)
#   nbdkit              nbdkit and its plugins/filters     (NBD peer, fault injection)
#   libnbd-bin          nbdinfo, nbdcopy                   (reference NBD clients)
#   openssl             certificates for TLS tests
#   qemu-system-x86     qemu-system-x86_64: a real Linux guest under TCG (test/src/support/test-vm.ts)
#   e2fsprogs           mkfs.ext4, e2fsck, debugfs for the guest's data disk
#   openssh-server      sshd on loopback acting as a Linux guest (plugins/guest-linux); ssh-keygen
#   postgresql          a PostgreSQL server in the "guest", quiesced and restored (test/src/guest-postgres)
#   mariadb-server      a MariaDB server in the "guest", locked across the snapshot (test/src/guest-mariadb)
# Without root (or apt-get), it prints what is missing and the tests that need it skip, saying so.
set -u
declare -A need=([qemu-img]=qemu-utils [qemu-storage-daemon]=qemu-system-common [nbdkit]=nbdkit [nbdinfo]=libnbd-bin
  [openssl]=openssl [qemu-system-x86_64]=qemu-system-x86 [mkfs.ext4]=e2fsprogs [/usr/sbin/sshd]=openssh-server [pg_ctlcluster]=postgresql [mariadb-install-db]=mariadb-server)
missing=()
for cmd in "${!need[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ferry: missing Debian packages (tests that need them will skip): ${missing[*]}" >&2
  exit 0
fi
echo "ferry: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || { echo "ferry: apt-get install failed for: ${missing[*]}" >&2; exit 1; }
