#!/usr/bin/env bash
# ceph-cluster.sh start DIR | stop DIR | kill-osd DIR | start-osd DIR | status DIR
#
# A throw-away single-node Ceph cluster for tests, on 127.0.0.1 only: one
# monitor, one manager and one BlueStore OSD whose disk is a sparse regular
# file (no device-mapper, no block device), with a pool `rbd` of size 1.
#
#   start DIR      makes DIR (must not exist or be empty) and everything in it:
#                  DIR/ceph.conf (clients use it: CEPH_CONF=DIR/ceph.conf),
#                  DIR/keyring (client.admin), DIR/mon, DIR/osd, DIR/mgr, DIR/log,
#                  DIR/run/*.pid; waits until the pool `rbd` answers.
#                  On failure it stops what it started and exits non-zero.
#   stop DIR       stops the daemons by the pids in DIR/run (TERM, then KILL
#                  after a grace time); leaves DIR itself to the caller.
#   kill-osd DIR   SIGKILLs the OSD (tests: a cluster failing mid-operation).
#   start-osd DIR  starts the OSD again and waits until it is up.
#   status DIR     `ceph -s` of the cluster.
#
# Needs root and the Debian packages ceph-mon ceph-osd ceph-mgr ceph-common
# (scripts/install-test-deps.sh). Daemons are found, and stopped, only by the
# pids written at start; nothing is ever killed by name.
#
# Settings and why (pitfalls met on this kind of machine):
# - the OSD's block file is made by bluestore_block_create inside its own
#   data directory (pointing bluestore_block_path there by hand breaks mkfs);
# - pool size 1 needs mon_allow_pool_size_one;
# - admin sockets only in the daemon sections: in [global] every client
#   would try to bind the same socket;
# - client timeouts (rados_osd_op_timeout, rados_mon_op_timeout,
#   client_mount_timeout) make calls fail instead of hanging when the OSD is
#   gone or full;
# - mon_data_avail_warn is lowered: the test machine's disk may be small;
# - paxos_propose_interval is lowered: each RBD snapshot create/remove is a
#   monitor map change, batched for 1 s by default (tests would crawl).
set -uo pipefail

readonly ME="ceph-cluster"
PATH="$PATH:/usr/sbin:/sbin"
OSD_SIZE="${QS_CEPH_OSD_SIZE:-4G}"
CLIENT_TIMEOUT="${QS_CEPH_CLIENT_TIMEOUT:-20}"

say() { echo "$ME: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
  echo "usage: $0 start DIR | stop DIR | kill-osd DIR | start-osd DIR | status DIR" >&2
  exit 2
}

[ "$#" -eq 2 ] || usage
CMD="$1"
DIR="$2"
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac

CONF="$DIR/ceph.conf"
ceph_() { timeout 60 ceph --conf "$CONF" "$@"; }

# --- pids -------------------------------------------------------------------
pid_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$DIR/run/$1.pid" 2>/dev/null || true; }

stop_daemon() { # NAME
  local pid n
  pid="$(pid_of "$1")"
  [ -n "$pid" ] || return 0
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for n in $(seq 1 50); do
      pid_alive "$pid" || break
      sleep 0.2
    done
    if pid_alive "$pid"; then
      say "$1 (pid $pid) did not stop on TERM; killing it"
      kill -KILL "$pid" 2>/dev/null
      for n in $(seq 1 25); do pid_alive "$pid" || break; sleep 0.2; done
    fi
  fi
  rm -f "$DIR/run/$1.pid"
}

stop_all() {
  stop_daemon osd.0
  stop_daemon mgr.x
  stop_daemon mon.a
}

# Starts a daemon in the foreground (-f), in the background of this script,
# detached from our session so it outlives `start`; records its pid.
launch() { # NAME BINARY ARGS...
  local name="$1" pid
  shift
  setsid "$@" -f --conf "$CONF" </dev/null >>"$DIR/log/$name.out" 2>&1 &
  pid=$!
  echo "$pid" >"$DIR/run/$name.pid"
}

wait_for() { # SECONDS WHAT COMMAND...
  local secs="$1" what="$2" end
  shift 2
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      say "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.3
  done
}

# A port below the kernel's ephemeral range (outgoing connections take those,
# and a port one of them holds cannot be bound), that no socket uses.
free_port() {
  local p n low
  low="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
  [ "$low" -gt 12000 ] || low=32768
  for n in $(seq 1 50); do
    p=$((10000 + RANDOM % (low - 11000)))
    if command -v ss >/dev/null 2>&1; then
      [ -z "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ] || continue
    elif (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      continue
    fi
    echo "$p"
    return 0
  done
  return 1
}

osd_up() { ceph_ osd dump --format json 2>/dev/null | grep -q '"up":1'; }
# After a restart the monitor may still list the dead OSD as up: ask the OSD itself.
osd_answers() {
  local out
  out="$(timeout 10 rados --conf "$CONF" -p rbd --rados-osd-op-timeout=3 stat qs-probe-object 2>&1)"
  [[ "$out" == *"No such file"* ]]
}

start_osd() { # [probe]
  launch osd.0 ceph-osd -i 0
  if [ "${1:-}" = probe ]; then
    wait_for 90 "osd.0 to answer" osd_answers || return 1
  else
    wait_for 90 "osd.0 up" osd_up || return 1
  fi
}

show_logs() {
  local f
  for f in "$DIR"/log/*; do
    [ -f "$f" ] || continue
    say "--- last lines of $f"
    tail -n 15 "$f" >&2
  done
}

start_cluster() {
  local t0 port fsid uuid out
  t0=$(date +%s.%N)
  [ "$(id -u)" = 0 ] || die "needs root"
  for b in ceph-mon ceph-osd ceph-mgr ceph ceph-authtool monmaptool rbd; do
    command -v "$b" >/dev/null 2>&1 || die "$b not found (Debian packages ceph-mon ceph-osd ceph-mgr ceph-common)"
  done
  if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then die "$DIR exists and is not empty"; fi
  mkdir -p "$DIR"/{mon/a,mgr/x,osd/0,log,run} || die "cannot make $DIR"
  chmod 0755 "$DIR"
  port="$(free_port)" || die "no free port on 127.0.0.1"
  fsid="$(cat /proc/sys/kernel/random/uuid)"
  uuid="$(cat /proc/sys/kernel/random/uuid)"

  cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$port
public_addr = 127.0.0.1
public_network = 127.0.0.0/8
ms_bind_msgr1 = false
ms_bind_msgr2 = true
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $DIR/run
log_file = $DIR/log/\$name.log
crash_dir = $DIR/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
rbd_default_features = layering, exclusive-lock, object-map, fast-diff, deep-flatten
rbd_default_clone_format = 2

[mon]
# A single monitor has no one to wait for: commit map changes (snapshot ids,
# locks broken) at once instead of batching them for a second.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
mon_data = $DIR/mon/\$id
keyring = $DIR/mon/\$id/keyring
admin_socket = $DIR/run/\$name.asok

[mgr]
mgr_data = $DIR/mgr/\$id
keyring = $DIR/mgr/\$id/keyring
admin_socket = $DIR/run/\$name.asok

[osd]
osd_data = $DIR/osd/\$id
keyring = $DIR/osd/\$id/keyring
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $OSD_SIZE
bluestore_block_db_create = false
bluestore_block_wal_create = false
osd_memory_target = 939524096
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
admin_socket = $DIR/run/\$name.asok

[client]
keyring = $DIR/keyring
log_file = $DIR/log/client.log
log_to_stderr = false
rados_osd_op_timeout = $CLIENT_TIMEOUT
rados_mon_op_timeout = $CLIENT_TIMEOUT
client_mount_timeout = $CLIENT_TIMEOUT
EOF

  ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null || die "ceph-authtool (mon) failed"
  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null || die "ceph-authtool (admin) failed"
  ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring" >/dev/null || die "ceph-authtool import failed"
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" >/dev/null 2>&1 || die "monmaptool failed"
  if ! out="$(ceph-mon --conf "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" 2>&1)"; then
    die "ceph-mon --mkfs failed: $out"
  fi

  # From here on, a failure stops what was started.
  trap 'say "start failed; stopping the daemons"; show_logs; stop_all; exit 1' ERR
  set -E
  launch mon.a ceph-mon -i a
  wait_for 30 "the monitor" ceph_ --connect-timeout 5 mon stat || false

  ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$DIR/mgr/x/keyring" >/dev/null
  launch mgr.x ceph-mgr -i x

  [ "$(ceph_ osd new "$uuid" 2>/dev/null)" = 0 ] || { say "ceph osd new did not give id 0"; false; }
  ceph_ auth get-or-create osd.0 mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' -o "$DIR/osd/0/keyring" >/dev/null
  if ! out="$(ceph-osd --conf "$CONF" -i 0 --mkfs --osd-uuid "$uuid" 2>&1)"; then
    say "ceph-osd --mkfs failed: $out"
    false
  fi
  start_osd

  # clone v2 (no snapshot protection) needs clients of mimic or later
  ceph_ osd set-require-min-compat-client mimic >/dev/null 2>&1
  ceph_ osd pool create rbd 16 16 replicated >/dev/null 2>&1
  ceph_ osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1
  ceph_ osd pool application enable rbd rbd >/dev/null 2>&1
  # `rbd pool init` would wait for the PGs; this is where the pool becomes usable.
  timeout 90 rbd --conf "$CONF" pool init rbd
  wait_for 60 "the manager" bash -c "ceph --conf '$CONF' mgr stat --format json | grep -q '\"available\": *true'"
  trap - ERR
  set +E
  printf '%s\n' "CEPH_CONF=$CONF" "CEPH_POOL=rbd" "CEPH_FSID=$fsid" >"$DIR/env"
  say "cluster up in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")s: CEPH_CONF=$CONF, pool rbd, mon 127.0.0.1:$port"
  say "pids: mon $(pid_of mon.a), mgr $(pid_of mgr.x), osd $(pid_of osd.0); stop with: $0 stop $DIR"
}

case "$CMD" in
  start) start_cluster ;;
  stop)
    [ -d "$DIR/run" ] || exit 0
    stop_all
    ;;
  kill-osd)
    pid="$(pid_of osd.0)"
    pid_alive "$pid" || die "osd.0 is not running"
    kill -KILL "$pid"
    for n in $(seq 1 50); do pid_alive "$pid" || break; sleep 0.1; done
    rm -f "$DIR/run/osd.0.pid"
    ;;
  start-osd)
    pid_alive "$(pid_of osd.0)" && exit 0
    start_osd probe || { show_logs; exit 1; }
    ;;
  status) ceph_ -s ;;
  *) usage ;;
esac
