#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost (munge, MariaDB + slurmdbd, slurmctld, slurmd) for
# canbench's `pytest -m slurm` tests (docs/grid.md). Run as root.
#
#   slurm/cluster.sh up       # tear down any previous one, install missing packages, start, wait until idle
#   slurm/cluster.sh down     # cancel jobs, stop the daemons (by pid file), remove the state folder
#   slurm/cluster.sh status   # sinfo / squeue of the running cluster
#   slurm/cluster.sh env      # prints `export SLURM_CONF=...` (eval "$(slurm/cluster.sh env)")
#
# All state lives under $CANBENCH_SLURM_DIR (default /tmp/canbench-slurm); clients and jobs need
# SLURM_CONF=$CANBENCH_SLURM_DIR/etc/slurm.conf, which `up` writes to $CANBENCH_SLURM_DIR/env.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${CANBENCH_SLURM_DIR:-/tmp/canbench-slurm}"
CLUSTER="${CANBENCH_SLURM_CLUSTER:-canbench}"
CTLD_PORT="${CANBENCH_SLURM_PORT_BASE:-16817}"
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=$((CTLD_PORT + 3))
DB_PASS="canbench-$(id -u)"
export SLURM_CONF="$STATE/etc/slurm.conf"

log() { printf '[cluster.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND... : poll until COMMAND succeeds
  local secs=$1 what=$2; shift 2
  local t=0
  until "$@" >/dev/null 2>&1; do
    t=$((t + 1))
    if [ "$t" -gt $((secs * 4)) ]; then
      die "timed out after ${secs}s waiting for $what (logs: $STATE/log, $STATE/mysql/error.log)"
    fi
    sleep 0.25
  done
}

install_packages() {
  local need=()
  command -v munged >/dev/null || need+=(munge)
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sinfo >/dev/null || need+=(slurm-client)
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  ls /usr/lib/*/slurm-wlm/accounting_storage_mysql.so >/dev/null 2>&1 || need+=(slurm-wlm-mysql-plugin)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${need[*]}) and not root"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
  fi
}

render() {  # render TEMPLATE OUT
  sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
      -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" \
      -e "s|@DB_PASS@|$DB_PASS|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" "$1" > "$2"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE : SIGTERM, wait up to 10 s, then SIGKILL
  local name=$1 pidfile=$2 pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

down() {
  if [ -f "$SLURM_CONF" ] && [ -f "$STATE/run/slurmctld.pid" ]; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 60); do  # jobs are SIGKILLed KillWait=5 s after SIGTERM
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.25
    done
  fi
  stop_pidfile slurmd "$STATE/run/slurmd.pid"
  stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
  stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
  stop_pidfile mariadbd "$STATE/mysql/mysqld.pid"
  stop_pidfile munged "$STATE/munge/munged.pid"
  rm -rf "$STATE"
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root (the daemons run as root/munge/mysql)"
  down
  install_packages
  CPUS="$(nproc)"
  local real
  real="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
  [ -n "$real" ] || die "slurmd -C did not report RealMemory"
  MEM_MB=$((real * 9 / 10))  # RealMemory above what slurmd -C reports makes the node INVAL
  mkdir -p "$STATE"/{etc,spool/ctld,spool/d,log,run,munge,mysql}
  chmod 755 "$STATE"

  # 1. munge (default socket, which slurm's auth/munge uses; pid and log files here)
  chown munge:munge "$STATE/munge"
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none)
    chown munge:munge /etc/munge/munge.key
  fi
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    runuser -u munge -- munged --force --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
      </dev/null >>"$STATE/log/daemons.out" 2>&1
  fi
  wait_for 10 "munge" bash -c 'munge -n | unmunge'

  # 2. MariaDB with a private datadir, socket and port
  chown mysql:mysql "$STATE/mysql"
  mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql/data" --auth-root-authentication-method=socket \
    >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
  # detached, with no inherited stdout/stderr (a caller piping our output must not wait for the daemons)
  setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql/data" \
      --socket="$STATE/mysql/mysqld.sock" --pid-file="$STATE/mysql/mysqld.pid" --log-error="$STATE/mysql/error.log" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  wait_for 60 "mariadbd" mariadb-admin --no-defaults --socket="$STATE/mysql/mysqld.sock" -u root ping
  mariadb --no-defaults --socket="$STATE/mysql/mysqld.sock" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

  # 3. slurmdbd (reads slurmdbd.conf beside $SLURM_CONF), then register the cluster
  render "$HERE/slurm.conf.in" "$STATE/etc/slurm.conf"
  render "$HERE/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf"
  chmod 600 "$STATE/etc/slurmdbd.conf"
  slurmdbd </dev/null >>"$STATE/log/daemons.out" 2>&1
  wait_for 60 "slurmdbd" sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true

  # 4. slurmctld, then slurmd; wait until the node is idle
  slurmctld </dev/null >>"$STATE/log/daemons.out" 2>&1
  wait_for 30 "slurmctld" scontrol ping
  slurmd -N localhost </dev/null >>"$STATE/log/daemons.out" 2>&1
  wait_for 60 "an idle node" bash -c '[ "$(sinfo -h -o %T | head -1)" = idle ]'
  echo "export SLURM_CONF=$SLURM_CONF" > "$STATE/env.sh"
  log "up: $(sinfo -h -o '%P %D %T %c CPUs %m MB') (SLURM_CONF=$SLURM_CONF)"
}

status() {
  [ -f "$SLURM_CONF" ] || { echo "down (no $SLURM_CONF)"; return 1; }
  sinfo && squeue
}

case "${1:-}" in
  up) up ;;
  down) down; log "down" ;;
  status) status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
