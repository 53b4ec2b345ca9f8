#!/usr/bin/env bash
# Installs the Debian packages the tests need, only those that are missing:
#   xfsprogs     mkfs.xfs   (XFS test filesystem, reflink=1)
#   btrfs-progs  mkfs.btrfs (btrfs test filesystem)
#   mount        losetup    (loop devices; normally always installed)
#   ceph-mon ceph-osd ceph-mgr ceph-common   a single-node Ceph cluster for
#                the rbd driver tests (scripts/with-ceph.sh; ~210 MB)
# As root it runs `apt-get update` once and `apt-get install` quietly; as
# another user (or without apt-get) it only says what is missing, and the
# tests for those filesystems are then reported as skipped. With
# QS_TEST_REQUIRE=1 (CI sets it) anything it cannot install, Ceph included,
# is an error (exit 1): the suites that need it must not be skipped.
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
# Ceph comes separately: where it cannot be installed the rest still can.
ceph=()
for pair in ceph-mon:ceph-mon ceph-osd:ceph-osd ceph-mgr:ceph-mgr rbd:ceph-common; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || ceph+=("${pair#*:}")
done

missing+=("${ceph[@]}")
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

# Without QS_TEST_REQUIRE=1 a missing package only means skipped suites.
required="${QS_TEST_REQUIRE:-0}"
cannot() { # MESSAGE
  if [ "$required" = 1 ]; then
    echo "$me: $1; QS_TEST_REQUIRE=1, so this is an error" >&2
    exit 1
  fi
  echo "$me: $1 (the tests that need them will be skipped)" >&2
  exit 0
}
if [ "$(id -u)" != 0 ]; then
  cannot "missing ${missing[*]}; not root, not installing"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  cannot "missing ${missing[*]}; no apt-get here, install them by hand"
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
    if [ "${#rest[@]}" -eq 0 ] || apt-get -q install -y --no-install-recommends "${rest[@]}" >>"$log" 2>&1 </dev/null; then
      cat "$log" >&2
      cannot "installing ${ceph[*]} failed ($(tail -n 1 "$log"))"
    fi
  fi
  cat "$log" >&2
  echo "$me: apt-get failed installing ${missing[*]}" >&2
  exit 1
fi
