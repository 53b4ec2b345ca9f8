#!/usr/bin/env bash
# with-test-vm.sh COMMAND [ARGS...]
#
# Runs COMMAND inside a test VM: Debian's kernel (with device-mapper, which
# the machine running the tests may lack) under qemu-system-x86_64, booted
# from a busybox initramfs onto the host's own root filesystem (shared
# read-only over virtio-9p, with a throw-away tmpfs on top), with the project
# checkout mounted writable at its host path. COMMAND runs as root in the
# guest, in the current directory when it lies inside the checkout (else the
# checkout's top), stdin /dev/null. How it works and what it costs:
# test/testvm/README.md.
#
# COMMAND's stdout and stderr come back on this script's stdout and stderr
# as it writes them (through files on a 9p share, never mixed with kernel
# messages), and its exit status is this script's. The harness's own
# failures exit with:
#   124  the guest ran longer than QS_TEST_VM_TIMEOUT seconds (it is killed)
#   125  the guest could not be started, or ended without reporting COMMAND's
#        exit status (crashed, hung at boot, powered off by COMMAND); the
#        console's last lines are printed to stderr
#   128+N  this script was killed by signal N (the guest is killed first)
# The harness prints nothing else unless QS_TEST_VM_VERBOSE=1.
#
# Environment (host side):
#   QS_TEST_VM_DISKS=N         attach N scratch disks (sparse files, virtio-blk);
#                              in the guest QS_TEST_VM_DISK_1..N name their
#                              devices (/dev/vdX) and QS_TEST_VM_DISKS is N
#   QS_TEST_VM_DISK_SIZE=SIZE  size of each (truncate(1) syntax; default 1G)
#   QS_TEST_VM_TIMEOUT=SECONDS the whole run, boot included (default 1800)
#   QS_TEST_VM_MEMORY=MB       guest memory (default 1024)
#   QS_TEST_VM_ACCEL=auto|tcg|kvm  auto (default): KVM when /dev/kvm is usable
#                              and a probe guest really ran a command there
#                              (probed once, remembered in the cache), TCG otherwise
#   QS_TEST_VM_ENV="NAME ..."  more host variables to pass to COMMAND (always
#                              passed when set: CI QS_TEST_REQUIRE
#                              QUBES_STORAGE_CHECK_SAVES NODE_OPTIONS LANG LC_ALL TZ)
#   QS_TEST_VM_CONSOLE=FILE    also keep the guest's serial console there
#   QS_TEST_VM_CACHE=DIR       kernel and busybox (scripts/test-vm-fetch.sh,
#                              run by scripts/install-test-deps.sh); default
#                              /var/cache/qubes-storage/test-vm
# In the guest: QS_TEST_VM=1, PATH as here plus /usr/sbin:/sbin, HOME=/root.
#
# Everything made here (a temporary directory holding the initramfs, the
# scratch disks, the console log and the exchange files) is removed on exit,
# and the qemu process started here is killed by its pid if still running,
# also when this script is interrupted or times out.
set -uo pipefail

readonly ME="with-test-vm"
readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PATH="$PATH:/usr/sbin:/sbin"

say() { echo "$ME: $*" >&2; }
verbose() { [ "${QS_TEST_VM_VERBOSE:-0}" = 1 ] && say "$@"; return 0; }

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

CACHE="${QS_TEST_VM_CACHE:-/var/cache/qubes-storage/test-vm}"
DISKS="${QS_TEST_VM_DISKS:-0}"
DISK_SIZE="${QS_TEST_VM_DISK_SIZE:-1G}"
TIMEOUT="${QS_TEST_VM_TIMEOUT:-1800}"
MEMORY="${QS_TEST_VM_MEMORY:-1024}"
ACCEL="${QS_TEST_VM_ACCEL:-auto}"
[[ "$DISKS" =~ ^[0-9]+$ ]] && [ "$DISKS" -le 20 ] || { say "QS_TEST_VM_DISKS=$DISKS: not a number from 0 to 20"; exit 2; }
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || { say "QS_TEST_VM_TIMEOUT=$TIMEOUT: not a number of seconds"; exit 2; }
[[ "$MEMORY" =~ ^[1-9][0-9]*$ ]] || { say "QS_TEST_VM_MEMORY=$MEMORY: not a number of megabytes"; exit 2; }
case "$ACCEL" in auto | tcg | kvm) ;; *) say "QS_TEST_VM_ACCEL=$ACCEL: not auto, tcg or kvm"; exit 2 ;; esac

WORK=""       # our mktemp -d
QEMU=""       # pid of the qemu we started
TIMER=""      # pid of the sleep that bounds the run
TAILS=()      # pids of the tails that copy COMMAND's output
CLEANED=0

# Kills one process we started, by pid: TERM, then KILL if it lingers.
stop_pid() { # PID
  local n
  kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return 0; }
  kill -TERM "$1" 2>/dev/null
  for n in $(seq 1 25); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
  return 0
}

cleanup() {
  [ "$CLEANED" = 1 ] && return
  CLEANED=1
  trap '' INT TERM HUP # a second ^C must not cut the cleanup short
  local p
  [ -n "$QEMU" ] && stop_pid "$QEMU"
  [ -n "$TIMER" ] && stop_pid "$TIMER"
  for p in "${TAILS[@]}"; do stop_pid "$p"; done
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ -n "${QS_TEST_VM_CONSOLE:-}" ] && [ -f "$WORK/console.log" ]; then
      cp -- "$WORK/console.log" "$QS_TEST_VM_CONSOLE" || say "cannot copy the console log to $QS_TEST_VM_CONSOLE"
    fi
    rm -rf --one-file-system -- "$WORK"
  fi
  return 0
}
on_signal() { # NAME CODE
  say "interrupted by SIG$1, stopping the guest"
  exit "$2" # the EXIT trap kills qemu and removes the work directory
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# Shows why a guest failed: the end of its console.
console_tail() {
  if [ -s "$WORK/console.log" ]; then
    say "last lines of the guest's console:"
    tail -n 25 "$WORK/console.log" | sed 's/^/  | /' >&2
  else
    say "the guest's console is empty"
  fi
}

# --- what to boot -----------------------------------------------------------
QEMU_BIN="$(command -v qemu-system-x86_64)" || {
  say "qemu-system-x86_64 not found (Debian package qemu-system-x86; run scripts/install-test-deps.sh as root)"
  exit 125
}
if [ ! -f "$CACHE/current" ]; then
  say "no test VM kernel in $CACHE (run scripts/install-test-deps.sh as root, or scripts/test-vm-fetch.sh)"
  exit 125
fi
KDIR="$CACHE/$(sed -n 's/^kernel=//p' "$CACHE/current")"
BUSYBOX="$CACHE/$(sed -n 's/^busybox=//p' "$CACHE/current")/bin/busybox"
KVER="${KDIR##*/kernel-}"
KERNEL="$KDIR/boot/vmlinuz-$KVER"
MODULES="$KDIR/lib/modules/$KVER"
for f in "$KERNEL" "$MODULES/modules.dep" "$BUSYBOX"; do
  [ -e "$f" ] || { say "$f missing: the cache $CACHE is incomplete (delete it and run scripts/test-vm-fetch.sh)"; exit 125; }
done
command -v cpio >/dev/null 2>&1 || { say "cpio not found (Debian package cpio; run scripts/install-test-deps.sh as root)"; exit 125; }

CHECKOUT="$ROOT"
CWD="$(pwd -P)"
case "$CWD/" in "$CHECKOUT"/*) ;; *) CWD="$CHECKOUT" ;; esac

WORK="$(mktemp -d "${TMPDIR:-/tmp}/qs-test-vm.XXXXXX")" || { say "mktemp -d failed"; exit 125; }
verbose "work directory $WORK, kernel $KVER"

# --- the initramfs: busybox, /init and the modules needed to reach the shares
# Modules in load order, dependencies first (modules.dep lists a module's
# dependencies in the order modprobe unloads them: load them backwards).
modules_in_order() { # NAME...
  local name path deps i seen=" "
  for name in "$@"; do
    path="$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$MODULES/modules.dep" | head -n 1)"
    [ -n "$path" ] || { say "module $name not in $MODULES/modules.dep"; return 1; }
    read -r -a deps <<<"${path#*:}"
    path="${path%%:*}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
      [[ "$seen" == *" ${deps[i]} "* ]] || { echo "${deps[i]}"; seen+="${deps[i]} "; }
    done
    [[ "$seen" == *" $path "* ]] || { echo "$path"; seen+="$path "; }
  done
}
build_initramfs() {
  local dir="$WORK/initramfs" m
  mkdir -p "$dir/bin" "$dir/modules"
  cp -- "$BUSYBOX" "$dir/bin/busybox"
  cp -- "$ROOT/scripts/test-vm-init.sh" "$dir/init"
  chmod 0755 "$dir/init" "$dir/bin/busybox"
  modules_in_order virtio_pci virtio_blk 9pnet_virtio 9p overlay dm-mod >"$WORK/modules.path" || return 1
  : >"$dir/modules.list"
  while read -r m; do
    cp -- "$MODULES/$m" "$dir/modules/${m##*/}"
    echo "${m##*/}" >>"$dir/modules.list"
  done <"$WORK/modules.path"
  (cd "$dir" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$WORK/initramfs.cpio"
}
build_initramfs || { say "cannot build the initramfs"; exit 125; }
rm -rf -- "$WORK/initramfs"

# --- the exchange directory: what to run, and where its output goes --------
IO="$WORK/io"
mkdir -m 0755 "$IO"
q() { local s="$1"; printf "'%s'" "${s//\'/\'\\\'\'}"; } # single-quoted for any sh
{
  echo "QS_KERNEL=$(q "$KVER")"
  echo "QS_CHECKOUT=$(q "$CHECKOUT")"
  echo "QS_DISKS=$(q "$DISKS")"
} >"$IO/config"
{
  echo '# COMMAND, as with-test-vm.sh was asked to run it'
  echo 'exec >/run/qs-test-vm/stdout 2>/run/qs-test-vm/stderr'
  echo "export HOME=/root PATH=$(q "$PATH:/usr/sbin:/sbin")"
  for v in CI QS_TEST_REQUIRE QUBES_STORAGE_CHECK_SAVES NODE_OPTIONS LANG LC_ALL TZ ${QS_TEST_VM_ENV:-}; do
    [[ "$v" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { say "QS_TEST_VM_ENV: $v is not a variable name"; exit 2; }
    [ -n "${!v+set}" ] && echo "export $v=$(q "${!v}")"
  done
  echo "cd -- $(q "$CWD") || exit 125"
  printf 'exec'
  for a in "$@"; do printf ' %s' "$(q "$a")"; done
  echo
} >"$IO/run.sh"
: >"$IO/stdout"
: >"$IO/stderr"

# --- scratch disks: sparse files ----------------------------------------------
DRIVES=()
for ((i = 1; i <= DISKS; i++)); do
  truncate -s "$DISK_SIZE" "$WORK/disk-$i.img" || { say "cannot make a $DISK_SIZE scratch disk in $WORK"; exit 125; }
  DRIVES+=(-drive "file=$WORK/disk-$i.img,format=raw,if=none,id=disk$i,aio=threads"
    -device "virtio-blk-pci,drive=disk$i,serial=qs-disk-$i")
done

# --- qemu ---------------------------------------------------------------------
share() { # PATH TAG [readonly=on]
  printf 'local,path=%s,mount_tag=%s,security_model=none,multidevs=remap%s' \
    "${1//,/,,}" "$2" "${3:+,$3}"
}
qemu_args() { # ACCEL CONSOLE-FILE
  local cpu=max
  [ "$1" = kvm ] && cpu=host
  printf '%s\0' -nodefaults -no-user-config -nographic -no-reboot \
    -machine "q35,accel=$1" -cpu "$cpu" -smp 1 -m "$MEMORY" \
    -kernel "$KERNEL" -initrd "$WORK/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 loglevel=4 rdinit=/init" \
    -serial "file:$2" -monitor none \
    -virtfs "$(share / qsroot readonly=on)" \
    -virtfs "$(share "$MODULES" qsmodules readonly=on)" \
    -virtfs "$(share "$CHECKOUT" qscheckout)" \
    -virtfs "$(share "$IO" qsio)" \
    "${DRIVES[@]}"
}

# KVM only when a guest really runs there (on some hosts /dev/kvm exists but
# the guest hangs): a probe guest with a short timeout runs `true`. The answer
# is remembered per host kernel, qemu and guest kernel. Sets ACCEL.
choose_accel() {
  [ "$ACCEL" != auto ] && return
  ACCEL=tcg
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 0
  local key memo n saved_run
  key="$(uname -r) $(stat -c %Y "$QEMU_BIN") $KVER"
  memo="$CACHE/kvm-probe"
  if [ -f "$memo" ] && [ "$(sed -n 1p "$memo")" = "$key" ]; then
    ACCEL="$(sed -n 2p "$memo")"
    return 0
  fi
  saved_run="$(cat "$IO/run.sh")"
  printf 'exec true\n' >"$IO/run.sh"
  mapfile -d '' -t ARGS < <(qemu_args kvm "$WORK/probe-console.log")
  "$QEMU_BIN" "${ARGS[@]}" </dev/null >/dev/null 2>&1 &
  QEMU=$! # cleanup kills it, should we be interrupted
  for n in $(seq 1 150); do
    kill -0 "$QEMU" 2>/dev/null || break
    sleep 0.2
  done
  stop_pid "$QEMU"
  QEMU=""
  [ "$(cat "$IO/status" 2>/dev/null)" = 0 ] && ACCEL=kvm
  verbose "KVM probe: $ACCEL"
  rm -f -- "$IO/status" "$WORK/probe-console.log"
  printf '%s\n' "$saved_run" >"$IO/run.sh"
  printf '%s\n%s\n' "$key" "$ACCEL" >"$memo.$$" 2>/dev/null && mv -f -- "$memo.$$" "$memo" 2>/dev/null
  return 0
}
choose_accel
verbose "accelerator $ACCEL, $DISKS scratch disk(s) of $DISK_SIZE, timeout ${TIMEOUT}s"

mapfile -d '' -t ARGS < <(qemu_args "$ACCEL" "$WORK/console.log")
"$QEMU_BIN" "${ARGS[@]}" </dev/null >"$WORK/qemu.out" 2>&1 &
QEMU=$!
sleep "$TIMEOUT" &
TIMER=$!
# COMMAND's output, as the guest writes it; each tail ends once qemu has
# ended and it has copied the rest.
tail -q -f -s 0.2 -n +1 --pid="$QEMU" -- "$IO/stdout" &
TAILS+=($!)
tail -q -f -s 0.2 -n +1 --pid="$QEMU" -- "$IO/stderr" >&2 &
TAILS+=($!)

# `wait -n` returns when qemu or the timer ends (or a trapped signal comes).
ended=""
wait -n -p ended "$QEMU" "$TIMER"
if [ "$ended" = "$TIMER" ]; then
  TIMER=""
  stop_pid "$QEMU"
  QEMU=""
  for p in "${TAILS[@]}"; do wait "$p"; done
  TAILS=()
  say "the guest ran longer than QS_TEST_VM_TIMEOUT=${TIMEOUT}s; killed it"
  console_tail
  exit 124
fi
wait "$QEMU"
qrc=$?
QEMU=""
stop_pid "$TIMER"
TIMER=""
for p in "${TAILS[@]}"; do wait "$p"; done
TAILS=()

status="$(cat "$IO/status" 2>/dev/null)"
if ! [[ "$status" =~ ^[0-9]+$ ]]; then
  if [ "$qrc" != 0 ]; then
    say "qemu failed (exit $qrc): $(tail -n 3 "$WORK/qemu.out" | tr '\n' ' ')"
  fi
  say "the guest ended without reporting COMMAND's exit status"
  console_tail
  exit 125
fi
verbose "COMMAND exited with $status"
exit "$status"
