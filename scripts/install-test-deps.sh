#!/usr/bin/env bash
# Installs the Debian packages the tests need, only those that are missing:
#   xfsprogs     mkfs.xfs   (XFS test filesystem, reflink=1)
#   btrfs-progs  mkfs.btrfs (btrfs test filesystem)
#   mount        losetup    (loop devices; normally always installed)
#   qemu-system-x86 cpio kmod lvm2 thin-provisioning-tools   the test VM
#                (scripts/with-test-vm.sh; the guest runs this machine's programs)
#   e2fsprogs    mke2fs: the test guest's modules.img (scripts/guest-kernel.sh,
#                the qemu runtime's tests)
#   qemu-block-extra  qemu's rbd driver: the qemu runtime's guest on rbd
#   dmsetup      dm-crypt mappings of ephemeral volumes, in the test VM (and
#                for qubesd on a host with device-mapper)
#   chromium fonts-liberation   headless Chromium for the web page's tests
#                (test/web/, driven by playwright-core, which downloads no
#                browser); a font so that the page's text renders
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
need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need modprobe kmod
need lvm lvm2
need dmsetup dmsetup
need mke2fs e2fsprogs
need thin_check thin-provisioning-tools
# qemu's rbd driver (a module, no command): the qemu runtime's guest on rbd.
compgen -G '/usr/lib/*/qemu/block-rbd.so' >/dev/null || missing+=(qemu-block-extra)
need chromium chromium
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
# Ceph comes separately: where it cannot be installed the rest still can.
ceph=()
for pair in ceph-mon:ceph-mon ceph-osd:ceph-osd ceph-mgr:ceph-mgr rbd:ceph-common; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || ceph+=("${pair#*:}")
done

missing+=("${ceph[@]}")

# Without QS_TEST_REQUIRE=1 a missing package only means skipped suites (and
# failed test VM tests: those never skip).
required="${QS_TEST_REQUIRE:-0}"
cannot() { # MESSAGE: exits 1 under QS_TEST_REQUIRE=1, else returns
  if [ "$required" = 1 ]; then
    echo "$me: $1; QS_TEST_REQUIRE=1, so this is an error" >&2
    exit 1
  fi
  echo "$me: $1 (the tests that need them will be skipped, the test VM's fail)" >&2
}

install_packages() {
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    cannot "missing ${missing[*]}; not root, not installing"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    cannot "missing ${missing[*]}; no apt-get here, install them by hand"
    return 0
  fi
  echo "$me: installing ${missing[*]}" >&2
  local log p rest
  log="$(mktemp)"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get -q update >"$log" 2>&1 &&
    apt-get -q install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1 </dev/null; then
    rm -f "$log"
    return 0
  fi
  if [ "${#ceph[@]}" -gt 0 ]; then
    # Perhaps only Ceph is unavailable here: install the rest, skip the rbd tests.
    rest=()
    for p in "${missing[@]}"; do [[ " ${ceph[*]} " == *" $p "* ]] || rest+=("$p"); done
    if [ "${#rest[@]}" -eq 0 ] || apt-get -q install -y --no-install-recommends "${rest[@]}" >>"$log" 2>&1 </dev/null; then
      cat "$log" >&2
      p="$(tail -n 1 "$log")"
      rm -f "$log"
      cannot "installing ${ceph[*]} failed ($p)"
      return 0
    fi
  fi
  cat "$log" >&2
  rm -f "$log"
  echo "$me: apt-get failed installing ${missing[*]}" >&2
  return 1
}

# The test VM's kernel and busybox (scripts/test-vm-fetch.sh: unpacked into
# a cache directory, not installed), once.
fetch_vm() {
  local cache="${QS_TEST_VM_CACHE:-/var/cache/qubes-storage/test-vm}"
  [ -f "$cache/current" ] && return 0
  if [ "$(id -u)" != 0 ] && ! mkdir -p "$cache" 2>/dev/null; then
    cannot "no test VM kernel in $cache; not root, not fetching it"
    return 0
  fi
  bash "$(dirname "${BASH_SOURCE[0]}")/test-vm-fetch.sh" ||
    cannot "fetching the test VM's kernel and busybox failed"
}

# The test guest of the qemu runtime's tests (scripts/guest-kernel.sh: built
# from the test VM's packages into a cache directory), once per change of them.
build_guest_kernel() {
  [ -f "${QS_TEST_VM_CACHE:-/var/cache/qubes-storage/test-vm}/current" ] || return 0
  if [ "$(id -u)" != 0 ]; then
    cannot "not root, not building the test guest's kernel entry"
    return 0
  fi
  bash "$(dirname "${BASH_SOURCE[0]}")/guest-kernel.sh" >/dev/null ||
    cannot "building the test guest's kernel entry (scripts/guest-kernel.sh) failed"
}

install_packages || exit 1
fetch_vm
build_guest_kernel
