#!/bin/busybox sh
# The test guest's /init (busybox sh, PID 1), put into the initramfs of the
# kernel entry scripts/guest-kernel.sh builds. It loads the virtio disk
# modules, names the disks by their Qubes names (the serial the qemu runtime
# gives each: /dev/xvda root, xvdb private, xvdc volatile, xvdd modules),
# makes the ACPI power button power the guest off, then runs the guest
# script it finds on private (else root): a disk whose first bytes are the
# line `#qs-guest-script`, the script being the first 64 KiB (NUL bytes
# dropped). When the script ends (or without one), the guest syncs and
# powers off. Everything it says starts with `qs-guest: ` on the console.
/bin/busybox --install -s /bin
export PATH=/bin

say() { echo "qs-guest: $*"; }
off() {
  sync
  say "power off"
  poweroff -f
  sleep 60
}

mkdir -p /proc /sys /dev /tmp /etc/acpi/PWRF /var/log /var/run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
while read -r m; do
  insmod "/modules/$m" || say "insmod $m failed"
done </modules.list

for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  s="$(cat "$b/serial" 2>/dev/null)"
  case "$s" in xvd[a-z]) ln -s "/dev/${b##*/}" "/dev/$s" ;; esac
done
say "disks: $(cd /dev && echo xvd*)"

# The power button (qvm-shutdown: ACPI through QMP) powers off.
printf '#!/bin/sh\necho "qs-guest: power button" >/dev/console\nsync\npoweroff -f\n' >/etc/acpi/PWRF/00000080
chmod 0755 /etc/acpi/PWRF/00000080
# (busybox acpid logs to /var/log/acpid.log and keeps /var/run/acpid.pid: tmpfs here)
mount -t tmpfs var /var && mkdir -p /var/log /var/run
acpid -c /etc/acpi || say "acpid failed: the power button does nothing"

script=""
for d in xvdb xvda; do
  [ -b "/dev/$d" ] || continue
  if [ "$(head -c 17 "/dev/$d" 2>/dev/null)" = "#qs-guest-script" ]; then
    head -c 65536 "/dev/$d" | tr -d '\000' >/tmp/guest-script
    script="/dev/$d"
    break
  fi
done
if [ -z "$script" ]; then
  say "no guest script on xvdb or xvda"
  off
fi
say "running the script of $script"
sh /tmp/guest-script
say "script exited $?"
off
