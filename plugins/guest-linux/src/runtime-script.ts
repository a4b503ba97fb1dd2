/**
 * The runtime Ferry deploys into a Linux guest for one session (`ferry-guest.sh` in the session's
 * folder, removed at the end). POSIX sh: runs under bash, dash and busybox. Subcommands:
 *
 * - `run LIMIT SCRIPT`: runs a user script in its own process group; after LIMIT seconds the whole
 *   group is killed and the exit code is 124 with a line saying so.
 * - `mounts`: the local file systems to freeze, one per line (first mount of each device; types
 *   that can be frozen: ext2/3/4, xfs, btrfs, f2fs, jfs, reiserfs, vfat, exfat, nilfs2).
 * - `arm LIMIT [MOUNT...]`: starts the watchdog that thaws MOUNT... (default: `mounts`) after LIMIT
 *   seconds unless `thaw`/`disarm` comes first: a guest is never left frozen by a dead backup server.
 * - `freeze LIMIT [MOUNT...]`: `arm`, then `fsfreeze -f` each mount (in reverse order, so nested
 *   mounts freeze before their parents). A failure thaws what was frozen and exits 1.
 *   Prints `frozen N`.
 * - `thaw`: `fsfreeze -u` every mount `freeze`/`arm` listed (errors for mounts not frozen are
 *   ignored), then stops the watchdog. Prints `thawed N`.
 * - `disarm`: stops the watchdog only (the agent thawed).
 * - `swaps`: the guest's active swap areas and where each lies on its whole disk (partition start,
 *   or a swap file's extents from `filefrag -e` plus its file system's partition start).
 *
 * While frozen, nothing here writes to a file system: the mount list and the watchdog's pid are
 * written before the freeze, and `thaw` only reads them until every mount is thawed.
 */
export const RUNTIME_SCRIPT = `#!/bin/sh
# Ferry guest runtime: deployed for one backup session and removed after it.
set -u
DIR=$(cd "$(dirname "$0")" && pwd)


mounts() {
  awk '$3 ~ /^(ext2|ext3|ext4|xfs|btrfs|f2fs|jfs|reiserfs|vfat|exfat|nilfs2)$/ && !seen[$1]++ { print $2 }' /proc/self/mounts |
    sed 's/\\\\040/ /g'
}

list() {
  if [ $# -gt 0 ]; then for m in "$@"; do printf '%s\\n' "$m"; done; else mounts; fi
}

arm() {
  limit=$1; shift
  list "$@" > "$DIR/mounts"
  # the mounts travel as arguments: the watchdog must work after this folder is gone
  set --
  while IFS= read -r m; do set -- "$@" "$m"; done < "$DIR/mounts"
  setsid sh -c 'sleep "$1"; shift; for m in "$@"; do fsfreeze -u "$m" 2>/dev/null; done' sh "$limit" "$@" \\
    </dev/null >/dev/null 2>&1 &
  echo $! > "$DIR/watchdog.pid"
}

disarm() {
  if [ -f "$DIR/watchdog.pid" ]; then
    kill -KILL -"$(cat "$DIR/watchdog.pid")" 2>/dev/null || kill -KILL "$(cat "$DIR/watchdog.pid")" 2>/dev/null
    rm -f "$DIR/watchdog.pid"
  fi
}

cmd=\${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  run)
    limit=$1; script=$2
    start=$(date +%s)
    setsid "$script" </dev/null &
    pid=$!
    setsid sh -c 'sleep "$1"; kill -KILL -"$2" 2>/dev/null || kill -KILL "$2"' sh "$limit" "$pid" </dev/null >/dev/null 2>&1 &
    dog=$!
    wait "$pid"; rc=$?
    kill -KILL -"$dog" 2>/dev/null || kill -KILL "$dog" 2>/dev/null
    if [ "$rc" -eq 137 ] && [ $(( $(date +%s) - start )) -ge "$limit" ]; then
      echo "ferry-guest: $(basename "$script") was stopped after $limit s" >&2
      exit 124
    fi
    exit "$rc" ;;
  mounts) mounts ;;
  arm) arm "$@" ;;
  freeze)
    limit=$1; shift
    command -v fsfreeze >/dev/null 2>&1 || { echo "fsfreeze is not installed in the guest (util-linux)" >&2; exit 2; }
    echo $$ > "$DIR/freeze.pid"
    arm "$limit" "$@"
    tac "$DIR/mounts" 2>/dev/null > "$DIR/order" || awk '{ l[NR] = $0 } END { for (i = NR; i > 0; i--) print l[i] }' "$DIR/mounts" > "$DIR/order"
    n=0
    while IFS= read -r m; do
      if ! fsfreeze -f "$m"; then
        while IFS= read -r t; do fsfreeze -u "$t" 2>/dev/null; done < "$DIR/mounts"
        disarm
        echo "fsfreeze -f $m failed" >&2
        exit 1
      fi
      n=$((n + 1))
    done < "$DIR/order"
    echo "frozen $n" ;;
  thaw)
    n=0
    running=
    # a freeze still under way (its step timed out) is stopped first; one of its fsfreeze calls may
    # still complete after this thaw, so the watchdog then stays armed to thaw that too
    if [ -f "$DIR/freeze.pid" ] && kill -0 "$(cat "$DIR/freeze.pid")" 2>/dev/null; then
      kill -KILL "$(cat "$DIR/freeze.pid")" 2>/dev/null; running=yes
    fi
    if [ -f "$DIR/mounts" ]; then
      while IFS= read -r m; do fsfreeze -u "$m" 2>/dev/null && n=$((n + 1)); done < "$DIR/mounts"
    fi
    if [ -n "$running" ]; then
      sleep 1
      while IFS= read -r m; do fsfreeze -u "$m" 2>/dev/null && n=$((n + 1)); done < "$DIR/mounts"
      echo "thawed $n (a freeze was still running: the watchdog stays armed)"
    else
      disarm
      rm -f "$DIR/freeze.pid"
      echo "thawed $n"
    fi ;;
  disarm) disarm ;;
  swaps)
    # each active swap area and where it lies on its whole disk (sizes in 512-byte sectors):
    #   part DISK DISK_SECTORS START SECTORS | file DISK DISK_SECTORS FS_START PATH, then filefrag lines
    #   (prefixed '|') | unknown NAME WHY
    tail -n +2 /proc/swaps | while read -r name type rest; do
      case "$type" in
        partition)
          dev=$(basename "$(readlink -f "$name")"); sys=/sys/class/block/$dev
          if [ -f "$sys/partition" ]; then
            disk=$(basename "$(dirname "$(readlink -f "$sys")")")
            echo "part $disk $(cat "/sys/class/block/$disk/size") $(cat "$sys/start") $(cat "$sys/size")"
          elif [ -f "$sys/size" ] && [ ! -d "$sys/slaves" -o -z "$(ls "$sys/slaves" 2>/dev/null)" ]; then
            echo "part $dev $(cat "$sys/size") 0 $(cat "$sys/size")"
          else
            echo "unknown $name on a mapped device (LVM, dm-crypt, md)"
          fi ;;
        file)
          fsdev=$(df -P "$name" | tail -n 1 | awk '{ print $1 }')
          dev=$(basename "$(readlink -f "$fsdev")"); sys=/sys/class/block/$dev
          if ! command -v filefrag >/dev/null 2>&1; then echo "unknown $name filefrag (e2fsprogs) is not installed"; continue; fi
          if [ -f "$sys/partition" ]; then
            disk=$(basename "$(dirname "$(readlink -f "$sys")")"); start=$(cat "$sys/start")
          elif [ -f "$sys/size" ] && [ -z "$(ls "$sys/slaves" 2>/dev/null)" ]; then
            disk=$dev; start=0
          else
            echo "unknown $name on a mapped device (LVM, dm-crypt, md)"; continue
          fi
          echo "file $disk $(cat "/sys/class/block/$disk/size") $start $name"
          filefrag -e "$name" | sed 's/^/|/' ;;
        *) echo "unknown $name type $type" ;;
      esac
    done ;;
  *) echo "usage: ferry-guest.sh run|mounts|arm|freeze|thaw|disarm|swaps" >&2; exit 2 ;;
esac
`;
