#!/bin/busybox sh
# The test VM's /init (busybox sh, PID 1 in the guest), put into the
# initramfs by scripts/with-test-vm.sh. It loads the modules the initramfs
# carries (listed in /modules.list, dependencies first), mounts the host's
# shares and runs COMMAND in a chroot that looks like the host:
#   /            overlay: the host's root (9p tag qsroot, read-only) under a
#                tmpfs, so the guest may write anywhere and the host never sees it
#   CHECKOUT     the project checkout (9p tag qscheckout, writable), at its host path
#   /lib/modules/VERSION  the guest kernel's modules (9p tag qsmodules, read-only)
#   /run/qs-test-vm       the harness's exchange directory (9p tag qsio):
#                config (read here), run.sh (COMMAND), stdout, stderr, status
# then writes COMMAND's exit status to /run/qs-test-vm/status and reboots,
# which ends qemu (-no-reboot). If anything here fails, it says so on the
# console and ends the guest without a status: the harness reports that as
# a failure.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
  echo "test-vm init: $*" >&2
  reboot -f
  sleep 60
}
mountfs() { # TYPE SOURCE TARGET [OPTIONS]
  mount -t "$1" ${4:+-o "$4"} "$2" "$3" || fail "mount -t $1 $2 $3 failed"
}

mkdir -p /proc /sys /dev /lower /upper /root /io
mountfs proc proc /proc
mountfs sysfs sys /sys
mountfs devtmpfs dev /dev
while read -r m; do
  insmod "/modules/$m" || fail "insmod $m failed"
done </modules.list

p9='trans=virtio,version=9p2000.L,msize=262144'
mountfs 9p qsio /io "$p9"
. /io/config || fail "no /io/config"
# The host's root does not change during a run: its metadata may be cached.
mountfs 9p qsroot /lower "$p9,ro,cache=loose"
mountfs tmpfs upper /upper mode=0755
mkdir -p /upper/data /upper/work
mountfs overlay overlay /root lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work
mountfs proc proc /root/proc
mountfs sysfs sys /root/sys
mountfs devtmpfs dev /root/dev
mkdir -p /root/dev/pts /root/dev/shm
mountfs devpts devpts /root/dev/pts
mountfs tmpfs shm /root/dev/shm mode=1777
mountfs tmpfs tmp /root/tmp mode=1777
mountfs tmpfs run /root/run mode=0755
mkdir -p "/root/lib/modules/$QS_KERNEL" "/root$QS_CHECKOUT" /root/run/qs-test-vm /root/run/lock
mountfs 9p qsmodules "/root/lib/modules/$QS_KERNEL" "$p9,ro"
mountfs 9p qscheckout "/root$QS_CHECKOUT" "$p9"
mount --bind /io /root/run/qs-test-vm || fail "cannot bind /io"

# The kernel loads modules on demand (a device-mapper target such as
# dm-crypt, the ciphers it asks for) through its usermode helper, which runs
# in this initramfs, not in the chroot: pass those requests to the chroot's
# modprobe, as on a host the kernel's own requests reach /sbin/modprobe.
printf '#!/bin/busybox sh\nexec chroot /root /sbin/modprobe "$@"\n' >/bin/qs-modprobe
chmod 0755 /bin/qs-modprobe
echo /bin/qs-modprobe >/proc/sys/kernel/modprobe || fail "cannot set the kernel's modprobe helper"

# LVM without udev must make its device nodes itself; the guest's own
# lvm.conf (in the overlay, the host's /etc is untouched) says so, and keeps
# LVM from waiting for daemons that do not run here.
mkdir -p /root/etc/lvm
cat >/root/etc/lvm/lvm.conf <<'EOF'
# Written by the test VM's init (scripts/test-vm-init.sh).
activation {
	udev_sync = 0
	udev_rules = 0
	verify_udev_operations = 1
	monitoring = 0
}
global {
	use_lvmpolld = 0
}
devices {
	obtain_device_list_from_udev = 0
	external_device_info_source = "none"
}
EOF

# Scratch disks: virtio disks whose serial the harness set to qs-disk-N.
for d in /sys/block/vd*; do
  [ -e "$d/serial" ] || continue
  s="$(cat "$d/serial")"
  case "$s" in
  qs-disk-[0-9]*) export "QS_TEST_VM_DISK_${s#qs-disk-}=/dev/${d##*/}" ;;
  esac
done
export QS_TEST_VM=1 QS_TEST_VM_DISKS="$QS_DISKS"

chroot /root /bin/bash /run/qs-test-vm/run.sh </dev/null
echo "$?" >/io/status.tmp && mv /io/status.tmp /io/status
sync
reboot -f
sleep 60
