#!/usr/bin/env bash
# Installs the Debian packages the tests need, only those that are missing:
#   xfsprogs     mkfs.xfs   (XFS test filesystem, reflink=1)
#   btrfs-progs  mkfs.btrfs (btrfs test filesystem)
#   mount        losetup    (loop devices; normally always installed)
#   ceph-mon ceph-osd ceph-mgr ceph-common   a single-node Ceph cluster for
#                the rbd driver tests (scripts/with-ceph.sh; ~210 MB)
# As root it runs `apt-get update` once and `apt-get install` quietly; as
# another user (or without apt-get) it only says what is missing, and the
# tests for those filesystems are then reported as skipped.
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"
me="install-test-deps"

missing=()
need() { # COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need mkfs.xfs xfsprogs
need mkfs.btrfs btrfs-progs
need losetup mount
# Ceph is optional: when it cannot be installed the rbd tests are skipped.
ceph=()
for pair in ceph-mon:ceph-mon ceph-osd:ceph-osd ceph-mgr:ceph-mgr rbd:ceph-common; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || ceph+=("${pair#*:}")
done

missing+=("${ceph[@]}")
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "$me: missing ${missing[*]}; not root, not installing (XFS/btrfs/rbd tests will be skipped)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$me: missing ${missing[*]}; no apt-get here, install them by hand (XFS/btrfs/rbd tests will be skipped)" >&2
  exit 0
fi

echo "$me: installing ${missing[*]}" >&2
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! apt-get -q update >"$log" 2>&1 ||
  ! apt-get -q install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1 </dev/null; then
  if [ "${#ceph[@]}" -gt 0 ]; then
    # Perhaps only Ceph is unavailable here: install the rest, skip the rbd tests.
    rest=()
    for p in "${missing[@]}"; do [[ " ${ceph[*]} " == *" $p "* ]] || rest+=("$p"); done
    echo "$me: installing ${ceph[*]} failed; the rbd tests will be skipped ($(tail -n 1 "$log"))" >&2
    if [ "${#rest[@]}" -eq 0 ] || apt-get -q install -y --no-install-recommends "${rest[@]}" >>"$log" 2>&1 </dev/null; then
      exit 0
    fi
  fi
  cat "$log" >&2
  echo "$me: apt-get failed installing ${missing[*]}" >&2
  exit 1
fi
