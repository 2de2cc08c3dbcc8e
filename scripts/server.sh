#!/usr/bin/env bash
# A team's tracking server: PostgreSQL as MLflow's backend store, `mlflow server` serving the artifacts, both
# kept in one directory of your choosing.
#
#   bash scripts/server.sh start DIR [--port 5000] [--pg-port 5432] [--host 127.0.0.1] [--workers 4]
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000     # what `start` prints; or tracking.uri=... per run
#   bash scripts/server.sh status DIR
#   bash scripts/server.sh stop DIR
#
# DIR holds pg/ (the cluster), artifacts/, run/ (sockets, pid files) and the two logs. PostgreSQL listens on
# 127.0.0.1 only, with trust authentication for its one role; MLflow listens on --host (default 127.0.0.1:
# put a reverse proxy with authentication in front before opening it to a network). PostgreSQL comes from the
# system packages when missing; the driver is the package's `server` extra (psycopg2-binary). As root, the
# cluster runs as the `postgres` user (initdb refuses root), which must be able to reach DIR. MLflow's GenAI job
# runner (7 huey consumers, a store in /dev/shm that outlives the server) is off unless
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true: editharm runs never submit jobs.
set -euo pipefail
die() { echo "server.sh: error: $*" >&2; exit 2; }
usage="usage: server.sh start|stop|status DIR [--port P] [--pg-port Q] [--host H] [--workers N]"
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "$usage"
shift 2
port=5000; pg_port=5432; host=127.0.0.1; workers=4
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=${2:?}; shift 2 ;;
    --pg-port) pg_port=${2:?}; shift 2 ;;
    --host) host=${2:?}; shift 2 ;;
    --workers) workers=${2:?}; shift 2 ;;
    *) die "unknown option $1; $usage" ;;
  esac
done
for p in "$port" "$pg_port"; do [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "not a port: $p"; done
[[ $workers =~ ^[0-9]+$ ]] && [ "$workers" -ge 1 ] || die "not a worker count: $workers"
case $cmd in start|stop|status) ;; *) die "unknown command $cmd; $usage" ;; esac
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
run="$dir/run"

pg_bindir() {
  local d
  for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_mlflow() {
  local pid
  if alive "$run/mlflow.pid"; then
    pid=$(cat "$run/mlflow.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"  # its own process group: workers and job consumer too
    for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$run/mlflow.pid"
}

if [ "$cmd" = status ]; then
  alive "$run/mlflow.pid" && echo "mlflow: running (pid $(cat "$run/mlflow.pid"), $(cat "$run/uri"))" || echo "mlflow: stopped"
  if bin=$(pg_bindir) && [ -d "$dir/pg" ]; then as_pg "$bin/pg_ctl" -D "$dir/pg" status >/dev/null && echo "postgresql: running" || echo "postgresql: stopped"; fi
  exit 0
fi

if [ "$cmd" = stop ]; then
  stop_mlflow
  if [ -f "$dir/pg/postmaster.pid" ]; then
    bin=$(pg_bindir) || die "PostgreSQL's pg_ctl not found"
    as_pg "$bin/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null
  fi
  echo "server.sh: stopped ($dir)"
  exit 0
fi

# start
if alive "$run/mlflow.pid"; then echo "server.sh: already running: MLFLOW_TRACKING_URI=$(cat "$run/uri")"; exit 0; fi
mlflow=$repo/.venv/bin/mlflow
[ -x "$mlflow" ] || mlflow=$(command -v mlflow) || die "mlflow not found: run bash scripts/setup.sh"
"$(dirname "$mlflow")/python" -c "import psycopg2" 2>/dev/null || [ ! -x "$(dirname "$mlflow")/python" ] \
  || die "the PostgreSQL driver is missing: pip install 'editharm[server]' (psycopg2-binary)"
if ! bin=$(pg_bindir); then
  echo "server.sh: installing PostgreSQL (apt)"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  bin=$(pg_bindir) || die "PostgreSQL could not be installed"
fi
in_use "$port" && die "port $port is in use (choose another with --port)"
mkdir -p "$run" "$dir/artifacts"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
  chown postgres "$run"
  runuser -u postgres -- test -x "$dir" \
    || die "the postgres user cannot reach $dir (initdb refuses root): choose a directory it can traverse"
fi
if [ ! -f "$dir/pg/PG_VERSION" ]; then
  mkdir -p "$dir/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/pg"
  as_pg "$bin/initdb" -D "$dir/pg" -U editharm -A trust -E UTF8 >"$run/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -3 "$run/initdb.log")"
fi
if ! as_pg "$bin/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; then
  in_use "$pg_port" && die "port $pg_port is in use (choose another with --pg-port)"
  as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$run/postgresql.log" -w -t 60 \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $run" start >/dev/null \
    || die "PostgreSQL did not start: $(tail -5 "$run/postgresql.log")"
  echo "$pg_port" >"$run/pg_port"
fi
pg_port=$(cat "$run/pg_port")
psql() { as_pg "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U editharm -d postgres -tAc "$1"; }
[ "$(psql "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" = 1 ] || psql "CREATE DATABASE mlflow" >/dev/null
uri="http://$host:$port"
echo "$uri" >"$run/uri"
# MLflow's job runner (GenAI judges, trace roll-ups: about seven huey consumer processes) is off unless asked for.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
  setsid "$mlflow" server --backend-store-uri "postgresql+psycopg2://editharm@127.0.0.1:$pg_port/mlflow" \
  --artifacts-destination "$dir/artifacts" --serve-artifacts --host "$host" --port "$port" --workers "$workers" \
  >"$run/mlflow.log" 2>&1 </dev/null &
echo $! >"$run/mlflow.pid"
for _ in $(seq 240); do
  alive "$run/mlflow.pid" || die "mlflow server exited: $(tail -5 "$run/mlflow.log")"
  if "$(dirname "$mlflow")/python" -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; then
    echo "server.sh: running: export MLFLOW_TRACKING_URI=$uri   (stop: bash scripts/server.sh stop $dir)"
    exit 0
  fi
  sleep 0.5
done
stop_mlflow
die "mlflow server gave no /health in 120 s: $(tail -5 "$run/mlflow.log")"
