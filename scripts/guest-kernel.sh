#!/usr/bin/env bash
# guest-kernel.sh [DIR]: builds a tiny bootable kernel entry for a
# linux-kernel pool, for guests the qemu runtime boots in tests (and demos):
#   DIR (default $QS_GUEST_KERNEL_DIR, else /var/cache/qubes-storage/guest-kernel)/
#     VERSION/            VERSION = the Debian kernel's, plus `-qsguest`
#       vmlinuz           Debian's linux-image-amd64 kernel
#       initramfs         busybox (busybox-static) with scripts/guest-init.sh as
#                         /init and the modules it loads (virtio disks, ACPI
#                         power button)
#       modules.img       a small ext2 image of those modules (the guest's xvdd)
# from the packages scripts/test-vm-fetch.sh unpacks into the test VM's cache
# (fetched first when missing). Prints DIR/VERSION on stdout. Idempotent: an
# entry built from the same kernel, busybox and init is kept; another is
# replaced (built beside it, then renamed into place). Exits 1 saying why
# when something is missing.
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"
me="guest-kernel"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DIR="${1:-${QS_GUEST_KERNEL_DIR:-/var/cache/qubes-storage/guest-kernel}}"
CACHE="${QS_TEST_VM_CACHE:-/var/cache/qubes-storage/test-vm}"
# In load order (each after what it needs).
MODULES_WANTED=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk button evdev)

for c in cpio mke2fs sha256sum; do
  command -v "$c" >/dev/null 2>&1 || { echo "$me: $c not found (run scripts/install-test-deps.sh as root)" >&2; exit 1; }
done
[ -f "$CACHE/current" ] || bash "$ROOT/scripts/test-vm-fetch.sh" >&2
kdir="$(sed -n 's/^kernel=//p' "$CACHE/current")"
bdir="$(sed -n 's/^busybox=//p' "$CACHE/current")"
KVER="${kdir#kernel-}"
KERNEL="$CACHE/$kdir/boot/vmlinuz-$KVER"
MODULES="$CACHE/$kdir/lib/modules/$KVER"
BUSYBOX="$CACHE/$bdir/bin/busybox"
for f in "$KERNEL" "$MODULES/modules.dep" "$BUSYBOX"; do
  [ -e "$f" ] || { echo "$me: $f missing (delete $CACHE and run scripts/test-vm-fetch.sh)" >&2; exit 1; }
done

VERSION="$KVER-qsguest"
key="$( (echo "$kdir $bdir ${MODULES_WANTED[*]}"; cat "$ROOT/scripts/guest-init.sh" "$0") | sha256sum | cut -d' ' -f1)"
if [ -f "$DIR/$VERSION/.key" ] && [ "$(cat "$DIR/$VERSION/.key")" = "$key" ]; then
  echo "$DIR/$VERSION"
  exit 0
fi

mkdir -p "$DIR"
work="$(mktemp -d "$DIR/.build.XXXXXX")"
trap 'rm -rf --one-file-system -- "$work"' EXIT

# Modules with what they need first (modules.dep lists a module's own needs).
declare -A seen=()
order=()
add() { # NAME
  local line path dep
  line="$(grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$MODULES/modules.dep" | head -n 1)"
  [ -n "$line" ] || { echo "$me: module $1 not in $MODULES/modules.dep" >&2; exit 1; }
  path="${line%%:*}"
  [ -n "${seen[$path]:-}" ] && return 0
  for dep in ${line#*:}; do
    dep="${dep##*/}"
    dep="${dep%%.ko*}"
    add "$dep"
  done
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  order+=("$path")
}
for m in "${MODULES_WANTED[@]}"; do add "$m"; done

mkdir -p "$work/out"
ird="$work/initramfs.d"
mkdir -p "$ird/bin" "$ird/modules" "$work/modules.d"
cp -- "$BUSYBOX" "$ird/bin/busybox"
cp -- "$ROOT/scripts/guest-init.sh" "$ird/init"
chmod 0755 "$ird/init" "$ird/bin/busybox"
: >"$ird/modules.list"
for m in "${order[@]}"; do
  # Compressed modules (.ko.xz) are unpacked: busybox insmod loads plain ones.
  case "$m" in
    *.ko) cp -- "$MODULES/$m" "$ird/modules/${m##*/}"; name="${m##*/}" ;;
    *.ko.xz) name="$(basename "$m" .xz)"; xz -dc -- "$MODULES/$m" >"$ird/modules/$name" ;;
    *) echo "$me: cannot load $m" >&2; exit 1 ;;
  esac
  echo "$name" >>"$ird/modules.list"
  cp -- "$ird/modules/$name" "$work/modules.d/"
done
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$work/out/initramfs"
cp -- "$KERNEL" "$work/out/vmlinuz"
mke2fs -q -t ext2 -L modules -d "$work/modules.d" "$work/out/modules.img" 4M >/dev/null
echo "$key" >"$work/out/.key"
chmod 0644 "$work/out/"*
chmod 0755 "$work/out"
sync -f "$work/out/vmlinuz" 2>/dev/null || true
rm -rf --one-file-system -- "${DIR:?}/$VERSION"
mv -- "$work/out" "$DIR/$VERSION"
echo "$me: built $DIR/$VERSION" >&2
echo "$DIR/$VERSION"
