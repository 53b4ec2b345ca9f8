#!/usr/bin/env bash
# test-vm-fetch.sh: puts the test VM's kernel, its modules and a static
# busybox into the cache directory scripts/with-test-vm.sh boots from:
#   $QS_TEST_VM_CACHE (default /var/cache/qubes-storage/test-vm)/
#     kernel-VERSION/boot/vmlinuz-VERSION, kernel-VERSION/lib/modules/VERSION/
#     busybox-VERSION/bin/busybox
#     current     two lines, `kernel=kernel-VERSION` and `busybox=busybox-VERSION`;
#                 written last (temp + rename), so it names only complete trees
# The packages are Debian's `linux-image-amd64` (the versioned kernel package
# it depends on) and `busybox-static`, fetched with `apt-get download` and
# unpacked with `dpkg-deb -x`, NOT installed: installing a kernel package runs
# its hooks (initramfs, boot loader) and would make it a boot kernel of the
# machine running the tests; unpacked in the cache it touches neither /boot
# nor dpkg's database, and works where /boot does not exist (containers).
# `depmod -b` then writes the modules' index there for modprobe.
# Idempotent: with a complete tree in the cache it does nothing (delete the
# cache directory to fetch newer packages). Exits 1, saying why, when it
# cannot fetch (no apt-get, no network, no such package).
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"
me="test-vm-fetch"
cache="${QS_TEST_VM_CACHE:-/var/cache/qubes-storage/test-vm}"

if [ -f "$cache/current" ]; then
  exit 0
fi
for c in apt-get apt-cache dpkg-deb depmod; do
  if ! command -v "$c" >/dev/null 2>&1; then
    echo "$me: $c not found: cannot fetch the test VM's kernel and busybox (Debian packages linux-image-amd64, busybox-static)" >&2
    exit 1
  fi
done

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf --one-file-system -- "$work"' EXIT
# apt-get download as root hands the download to the `_apt` user, which must
# be able to write there.
chmod 0755 "$work"

# linux-image-amd64 is a metapackage: the kernel is the package it depends on.
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)"
if [ -z "$kpkg" ]; then
  echo "$me: apt-cache knows no kernel package behind linux-image-amd64 (run apt-get update?)" >&2
  exit 1
fi
if ! (cd "$work" && apt-get -q download "$kpkg" busybox-static) >"$work/log" 2>&1; then
  cat "$work/log" >&2
  echo "$me: apt-get download $kpkg busybox-static failed" >&2
  exit 1
fi

unpack() { # DEB DIR: unpacks DEB into DIR under the cache (replacing a partial one)
  local tmp="$work/unpacked"
  rm -rf -- "$tmp"
  dpkg-deb -x "$1" "$tmp"
  rm -rf --one-file-system -- "${cache:?}/$2"
  mv -- "$tmp" "$cache/$2"
}

kdeb="$(ls "$work"/linux-image-*.deb)"
kver="$(dpkg-deb -f "$kdeb" Package)"
kver="${kver#linux-image-}"
unpack "$kdeb" "kernel-$kver"
depmod -b "$cache/kernel-$kver" "$kver"
bdeb="$(ls "$work"/busybox-static_*.deb)"
bver="$(dpkg-deb -f "$bdeb" Version)"
bver="${bver#*:}"
unpack "$bdeb" "busybox-$bver"
test -x "$cache/busybox-$bver/bin/busybox"
test -f "$cache/kernel-$kver/boot/vmlinuz-$kver"

printf 'kernel=kernel-%s\nbusybox=busybox-%s\n' "$kver" "$bver" >"$work/current"
sync -f "$work/current" 2>/dev/null || true
mv -- "$work/current" "$cache/current"
echo "$me: kernel $kver and busybox $bver in $cache" >&2
