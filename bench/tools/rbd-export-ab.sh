#!/bin/bash
# `qvm-volume export` timed from outside, as a user runs it, against the
# `rbd export` command on the same data, and one build against another.
#
#   bash scripts/with-ceph.sh bash bench/tools/rbd-export-ab.sh [ROUNDS [MIB [TREE...]]]
#
# TREE: a checkout with a built dist/ (default: this one); each gets its own
# child qubesd with its own rbd pool on the test cluster (QS_TEST_CEPH_CONF,
# set by scripts/with-ceph.sh), a StandaloneVM whose private volume holds MIB
# MiB of random data (the same file `rbd import`s into the command's image).
# Each round runs every export once (the command, then each tree's tool), in
# an order turned round by round, each after an untimed `sync` and 1 s of
# quiet; the wall time includes the process's start, as a user meets it.
# The outputs go to the temp directory's filesystem (TMPDIR); with
# QS_AB_TO=pipe each export writes to its stdout instead, read by `cat` into
# that file (as `... export - | ssh ...` would be read). QS_AB_FSYNC=1 times
# `rbd export` to a file with an fsync of its output (`sync FILE`), as the
# tool makes its output durable before it renames it in. Prints each
# export's times, their medians and the ratio command / tool (above 1: the
# tool is faster). Everything made here is removed on exit; the daemons are
# ended by pid.
set -euo pipefail
ROUNDS=${1:-20}
MIB=${2:-256}
TO=${QS_AB_TO:-file}
FSYNC=${QS_AB_FSYNC:-0}
[ "$TO" = file ] || [ "$TO" = pipe ] || { echo "QS_AB_TO: file or pipe, not $TO" >&2; exit 2; }
shift $(( $# < 2 ? $# : 2 ))
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TREES=("$@")
[ ${#TREES[@]} -gt 0 ] || TREES=("$HERE")
: "${QS_TEST_CEPH_CONF:?run under scripts/with-ceph.sh (QS_TEST_CEPH_CONF is not set)}"
POOL=${QS_TEST_CEPH_POOL:-rbd}
W=$(mktemp -d "${TMPDIR:-/tmp}/qs-export-ab.XXXXXX")
TAG=ab$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
CMD_IMAGE="$POOL/$TAG-cmd"
PIDS=()
rbdc() { rbd -c "$QS_TEST_CEPH_CONF" "$@"; }
tool() { # tree-index tool args...
  local k=$1 t=$2; shift 2
  HOME="$W/q$k" QUBES_BASE_DIR="$W/q$k" QUBESD_SOCKET="$W/s$k" node "${TREES[$k]}/dist/src/cli/$t.js" "$@"
}
cleanup() {
  set +e
  for k in "${!PIDS[@]}"; do tool "$k" qvm-remove --force imp >/dev/null 2>&1; kill "${PIDS[$k]}" 2>/dev/null; done
  for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
  rbdc rm --no-progress "$CMD_IMAGE" >/dev/null 2>&1
  rm -rf "$W"
}
trap cleanup EXIT

echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
head -c $((MIB * 1048576)) /dev/urandom >"$W/data"
rbdc import --no-progress --image-feature layering "$W/data" "$CMD_IMAGE" >/dev/null
for k in "${!TREES[@]}"; do
  mkdir -p "$W/q$k"
  QUBES_STORAGE_RUNTIME=bookkeeping node "${TREES[$k]}/dist/src/daemon/qubesd.js" --base-dir "$W/q$k" --socket "$W/s$k" >"$W/qubesd$k.log" 2>&1 &
  PIDS[$k]=$!
  for _ in $(seq 150); do [ -S "$W/s$k" ] && break; sleep 0.2; done
  [ -S "$W/s$k" ] || { echo "qubesd of ${TREES[$k]} did not start: $(tail -3 "$W/qubesd$k.log")" >&2; exit 1; }
  tool "$k" qvm-pool add "ceph$k" rbd -o "ceph_pool=$POOL" -o "ceph_conf=$QS_TEST_CEPH_CONF" -o "image_prefix=$TAG-$k-" -o "host_id=$TAG$k" -o revisions_to_keep=1 >/dev/null
  tool "$k" qvm-create --class StandaloneVM --label red -P "ceph$k" imp >/dev/null
  tool "$k" qvm-volume import imp:private "$W/data" >/dev/null
done

NAMES=(cmd)
for k in "${!TREES[@]}"; do NAMES+=("tool$k"); done
declare -A TIMES
once() { # name
  local n=$1 t0 t1
  sync
  sleep 1
  t0=$(date +%s%N)
  if [ "$TO" = pipe ]; then
    if [ "$n" = cmd ]; then rbdc export --no-progress "$CMD_IMAGE" - 2>/dev/null | cat >"$W/out"
    else tool "${n#tool}" qvm-volume export imp:private - | cat >"$W/out"; fi
  elif [ "$n" = cmd ]; then
    rbdc export --no-progress "$CMD_IMAGE" "$W/out" >/dev/null 2>&1
    if [ "$FSYNC" = 1 ]; then sync "$W/out"; fi
  else tool "${n#tool}" qvm-volume export imp:private "$W/out" >/dev/null; fi
  t1=$(date +%s%N)
  TIMES[$n]+="$(((t1 - t0) / 1000000)) "
  if [ "$n" != cmd ] && [ -z "${CHECKED[$n]:-}" ]; then
    cmp -s "$W/data" "$W/out" || { echo "$n: the export differs from the data" >&2; exit 1; }
    CHECKED[$n]=1
  fi
  rm -f "$W/out"
}
declare -A CHECKED
for r in $(seq "$ROUNDS"); do
  for i in "${!NAMES[@]}"; do once "${NAMES[$(((r + i) % ${#NAMES[@]}))]}"; done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
CMD_MED=$(echo "${TIMES[cmd]}" | median)
echo "$MIB MiB, $ROUNDS rounds, output to a $TO; ms per export, then the median"
echo "rbd export$([ "$FSYNC" = 1 ] && [ "$TO" = file ] && echo ' + fsync'): ${TIMES[cmd]}-> $CMD_MED"
for k in "${!TREES[@]}"; do
  m=$(echo "${TIMES[tool$k]}" | median)
  echo "qvm-volume export (${TREES[$k]}): ${TIMES[tool$k]}-> $m; rbd export / this: $(awk -v a="$CMD_MED" -v b="$m" 'BEGIN { printf "%.2fx", a / b }')"
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
