#!/usr/bin/env bash
# with-test-fs.sh CMD [ARGS...]
#
# Runs CMD with real filesystems for the driver tests and tells it where they
# are through the environment:
#   QS_TEST_XFS    a directory on a loop-mounted XFS (reflink=1)
#   QS_TEST_BTRFS  a directory on a loop-mounted btrfs
#   QS_TEST_EXT4   a directory on the machine's ext2/3/4 filesystem (no reflink)
#   QS_TEST_SMALL_XFS, QS_TEST_SMALL_EXT4  small loop-mounted XFS (320M) and
#                  ext4 (48M), for tests that fill a filesystem to the last block
#   QS_TEST_FS_SKIP          why some of the above are missing (one line)
#   QS_TEST_{XFS,BTRFS,EXT4}_SKIP  the same, per filesystem
# XFS and btrfs need root (losetup, mount) and mkfs.xfs/mkfs.btrfs (Debian
# packages xfsprogs/btrfs-progs, see scripts/install-test-deps.sh). Without
# them the tests for those filesystems are reported as skipped, with the
# reason. QS_TEST_REQUIRE=1 (CI sets it) makes any missing filesystem an
# error: the script says why and exits 1 without running CMD.
#
# Everything made here (mounts, loop devices, image files, directories) is
# removed on exit, also when CMD fails or the script is interrupted. The exit
# code is CMD's (128+N when killed by signal N).
set -uo pipefail

readonly ME="with-test-fs"
readonly IMAGE_SIZE="3G"

if [ "$#" -eq 0 ]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

# mkfs.*, losetup and friends live in /sbin on Debian, outside a user's PATH.
PATH="$PATH:/usr/sbin:/sbin"

say() { echo "$ME: $*" >&2; }

WORK=""        # our mktemp -d, holds images, mount points and the ext4 dir
EXTRA_DIRS=()  # other directories we made (an ext4 fallback outside WORK)
LOOPS=()       # loop devices we attached
MOUNTS=()      # mount points we mounted
CHILD=""       # pid of CMD (also its process group id)
CLEANED=0

cleanup() {
  [ "$CLEANED" = 1 ] && return
  CLEANED=1
  trap '' INT TERM HUP   # a second ^C must not cut the cleanup short
  local i m dev n
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    m="${MOUNTS[i]}"
    for n in 1 2 3 4 5 6 7 8 9 10; do
      umount "$m" 2>/dev/null && break
      if [ "$n" = 10 ]; then
        say "umount $m: still busy, detaching it lazily"
        umount -l "$m" || say "umount -l $m failed"
      fi
      sleep 0.5
    done
  done
  for ((i = ${#LOOPS[@]} - 1; i >= 0; i--)); do
    dev="${LOOPS[i]}"
    losetup -d "$dev" 2>/dev/null || say "losetup -d $dev failed (it detaches when no longer used)"
  done
  for m in "${EXTRA_DIRS[@]}" "$WORK"; do
    [ -n "$m" ] && [ -d "$m" ] && rm -rf --one-file-system -- "$m"
  done
  return 0
}

on_signal() {
  local sig="$1" code="$2" n
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    # CMD runs in its own process group: stop it and everything it started
    # (test files run as subprocesses and keep the mounts busy).
    kill -TERM -- "-$CHILD" 2>/dev/null
    for n in $(seq 1 50); do
      kill -0 "$CHILD" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
  say "interrupted by SIG$sig, cleaning up"
  exit "$code"
}

trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

WORK="$(mktemp -d "${TMPDIR:-/tmp}/qs-test-fs.XXXXXX")" || { say "mktemp -d failed"; exit 1; }
chmod 0755 "$WORK"

SKIPS=()
skip_fs() { # NAME REASON
  local var="QS_TEST_$(echo "$1" | tr '[:lower:]-' '[:upper:]_')_SKIP"
  export "$var=$2"
  SKIPS+=("$1: $2")
  say "$1: skipped: $2"
}

fs_type() { stat -f -c %T "$1" 2>/dev/null || echo unknown; }
is_ext() { case "$1" in ext2/ext3 | ext2 | ext3 | ext4) return 0 ;; *) return 1 ;; esac; }

# --- ext4: a directory on the machine's own filesystem ----------------------
prepare_ext4() {
  local dir t cand
  dir="$WORK/ext4"
  mkdir -m 0755 "$dir" || { skip_fs ext4 "mkdir $dir failed"; return; }
  t="$(fs_type "$dir")"
  if ! is_ext "$t"; then
    # TMPDIR may be a tmpfs; try the root filesystem's own temp directory.
    rmdir "$dir"
    cand="$(mktemp -d /var/tmp/qs-test-ext4.XXXXXX 2>/dev/null)" || cand=""
    if [ -n "$cand" ]; then
      EXTRA_DIRS+=("$cand")
      chmod 0755 "$cand"
      if is_ext "$(fs_type "$cand")"; then
        dir="$cand"
        t="$(fs_type "$cand")"
      else
        skip_fs ext4 "temp dirs are on $t and $(fs_type "$cand"), not ext2/ext3/ext4"
        return
      fi
    else
      skip_fs ext4 "temp dir $WORK is on $t, not ext2/ext3/ext4"
      return
    fi
  fi
  export QS_TEST_EXT4="$dir"
  say "ext4: $dir (on $t, $(df -h --output=avail "$dir" | tail -n 1 | tr -d ' ') free)"
}

# --- xfs / btrfs: a sparse image, loop-attached and mounted -----------------
# NAME names the image, the mount point and the variable QS_TEST_<NAME>;
# FSTYPE is what to mount it as.
prepare_loop_fs() { # NAME FSTYPE SIZE MKFS-COMMAND...
  local name="$1" fstype="$2" size="$3" upper img mnt dev out
  shift 3
  upper="$(echo "$name" | tr '[:lower:]-' '[:upper:]_')"
  img="$WORK/$name.img"
  mnt="$WORK/$name"
  if ! out="$(truncate -s "$size" "$img" 2>&1)"; then
    skip_fs "$name" "cannot create image $img: $out"
    return
  fi
  if ! out="$("$@" "$img" 2>&1)"; then
    skip_fs "$name" "$1 failed: $(echo "$out" | tail -n 1)"
    rm -f "$img"
    return
  fi
  if ! dev="$(losetup --find --show "$img" 2>&1)"; then
    skip_fs "$name" "losetup failed: $dev"
    rm -f "$img"
    return
  fi
  LOOPS+=("$dev")
  mkdir -m 0755 "$mnt"
  if ! out="$(mount -t "$fstype" "$dev" "$mnt" 2>&1)"; then
    skip_fs "$name" "mount $dev failed: $out"
    return # the loop device is detached by cleanup
  fi
  MOUNTS+=("$mnt")
  chmod 0755 "$mnt"
  export "QS_TEST_$upper=$mnt"
  say "$name: $mnt ($dev, $size sparse image, $*)"
}

prepare_ext4

LOOP_REASON=""
if [ "$(id -u)" != 0 ]; then
  LOOP_REASON="not root: cannot loop-mount XFS/btrfs"
elif ! command -v losetup >/dev/null 2>&1 || ! command -v mount >/dev/null 2>&1; then
  LOOP_REASON="losetup/mount not found (Debian package mount)"
fi
if [ -n "$LOOP_REASON" ]; then
  skip_fs xfs "$LOOP_REASON"
  skip_fs btrfs "$LOOP_REASON"
  skip_fs small-xfs "$LOOP_REASON"
  skip_fs small-ext4 "$LOOP_REASON"
else
  if command -v mkfs.xfs >/dev/null 2>&1; then
    prepare_loop_fs xfs xfs "$IMAGE_SIZE" mkfs.xfs -q -m reflink=1
    # Small ones, for the full-disk tests: cheap to fill to the last block.
    prepare_loop_fs small-xfs xfs 320M mkfs.xfs -q -m reflink=1
  else
    skip_fs xfs "mkfs.xfs not found (Debian package xfsprogs; run scripts/install-test-deps.sh as root)"
    skip_fs small-xfs "mkfs.xfs not found (Debian package xfsprogs)"
  fi
  if command -v mkfs.btrfs >/dev/null 2>&1; then
    prepare_loop_fs btrfs btrfs "$IMAGE_SIZE" mkfs.btrfs -q
  else
    skip_fs btrfs "mkfs.btrfs not found (Debian package btrfs-progs; run scripts/install-test-deps.sh as root)"
  fi
  if command -v mkfs.ext4 >/dev/null 2>&1; then
    prepare_loop_fs small-ext4 ext4 48M mkfs.ext4 -q -F
  else
    skip_fs small-ext4 "mkfs.ext4 not found (Debian package e2fsprogs)"
  fi
fi

if [ "${#SKIPS[@]}" -gt 0 ]; then
  export QS_TEST_FS_SKIP="$(IFS=';'; echo "${SKIPS[*]}" | sed 's/;/; /g')"
  if [ "${QS_TEST_REQUIRE:-0}" = 1 ]; then
    say "QS_TEST_REQUIRE=1 and some filesystems are missing: $QS_TEST_FS_SKIP"
    exit 1
  fi
fi

# Run CMD in its own process group (set -m) so an interrupt can stop all of it;
# `wait` returns early on a trapped signal, which then runs on_signal.
set -m
"$@" &
CHILD=$!
set +m
wait "$CHILD"
rc=$?
CHILD=""
exit "$rc"
