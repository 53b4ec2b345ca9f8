#!/usr/bin/env bash
# with-ceph.sh CMD [ARGS...]
#
# Runs CMD with a throw-away single-node Ceph cluster (scripts/ceph-cluster.sh)
# and tells it where the cluster is through the environment:
#   QS_TEST_CEPH_CONF    its ceph.conf (client.admin keyring next to it)
#   QS_TEST_CEPH_POOL    the Ceph pool for RBD images (rbd, size 1)
#   QS_TEST_CEPH_DIR     the cluster's directory (for ceph-cluster.sh kill-osd/start-osd)
#   QS_TEST_CEPH_SCRIPT  the path of ceph-cluster.sh
#   QS_TEST_CEPH_SKIP    instead of the above: why there is no cluster (one line)
# The cluster needs root and the Debian packages ceph-mon ceph-osd ceph-mgr
# ceph-common (scripts/install-test-deps.sh); without them, or when it does
# not come up, CMD still runs and the rbd tests are reported as skipped with
# the reason. QS_TEST_REQUIRE=1 (CI sets it) makes a missing cluster an
# error, even with QS_TEST_CEPH=0 (which otherwise skips it on purpose).
#
# The daemons are stopped by pid and the directory removed on exit, also
# when CMD fails or the script is interrupted. The exit code is CMD's.
set -uo pipefail

readonly ME="with-ceph"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$HERE/ceph-cluster.sh"
PATH="$PATH:/usr/sbin:/sbin"

if [ "$#" -eq 0 ]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

say() { echo "$ME: $*" >&2; }

DIR=""
CHILD=""
CLEANED=0

cleanup() {
  [ "$CLEANED" = 1 ] && return
  CLEANED=1
  trap '' INT TERM HUP
  if [ -n "$DIR" ] && [ -d "$DIR" ]; then
    bash "$CLUSTER" stop "$DIR" || say "stopping the cluster failed"
    rm -rf --one-file-system -- "$DIR"
  fi
  return 0
}

on_signal() {
  local sig="$1" code="$2" n
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
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

skip() {
  export QS_TEST_CEPH_SKIP="$1"
  say "rbd tests will be skipped: $1"
  if [ "${QS_TEST_REQUIRE:-0}" = 1 ]; then
    say "QS_TEST_REQUIRE=1: a cluster is required"
    exit 1
  fi
}

missing=()
for b in ceph-mon ceph-osd ceph-mgr ceph rbd; do
  command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done

if [ "${QS_TEST_CEPH:-1}" = 0 ]; then
  skip "QS_TEST_CEPH=0: no Ceph cluster wanted"
elif [ "$(id -u)" != 0 ]; then
  skip "not root: cannot start a Ceph cluster"
elif [ "${#missing[@]}" -gt 0 ]; then
  skip "${missing[*]} not found (Debian packages ceph-mon ceph-osd ceph-mgr ceph-common; run scripts/install-test-deps.sh as root)"
else
  DIR="$(mktemp -d "${TMPDIR:-/tmp}/qs-ceph.XXXXXX")" || { skip "mktemp -d failed"; DIR=""; }
  if [ -n "$DIR" ]; then
    t0=$SECONDS
    if bash "$CLUSTER" start "$DIR"; then
      export QS_TEST_CEPH_CONF="$DIR/ceph.conf" QS_TEST_CEPH_POOL=rbd QS_TEST_CEPH_DIR="$DIR" QS_TEST_CEPH_SCRIPT="$CLUSTER"
      unset QS_TEST_CEPH_SKIP
      say "Ceph cluster ready in $((SECONDS - t0))s ($DIR)"
    else
      skip "the single-node Ceph cluster did not start (see the ceph-cluster lines above)"
    fi
  fi
fi

set -m
"$@" &
CHILD=$!
set +m
wait "$CHILD"
rc=$?
CHILD=""
exit "$rc"
