#!/usr/bin/env bash
# Throwaway PostgreSQL + MLflow tracking server for the `services` tests (CI and local).
#
#   .ci/services.sh [start] STATEFILE      start (idempotent); write `export ...` lines to STATEFILE
#   .ci/services.sh stop STATEFILE         stop both, delete the temp dir and STATEFILE
#   .ci/services.sh status STATEFILE       print what runs; exit 1 if something is down
#   .ci/services.sh restart-postgres STATEFILE [SECONDS_DOWN]   fault tests: fast stop, wait, start
#   .ci/services.sh restart-mlflow STATEFILE [SECONDS_DOWN]     fault tests: TERM the server, wait, start
#   .ci/services.sh stop-postgres|start-postgres|stop-mlflow|start-mlflow STATEFILE
#
# STATEFILE is meant to be sourced; it exports
#   RECSTUDIO_TEST_PG_URL      postgresql+psycopg://recstudio:<random>@127.0.0.1:<port>/recstudio  (Optuna storage)
#   RECSTUDIO_TEST_MLFLOW_URL  http://127.0.0.1:<port>  (backend store: its own database `mlflow`;
#                              artifacts proxied by the server: --serve-artifacts to a temp folder)
#   RECSTUDIO_SERVICES_DIR     the temp folder (data, logs, artifacts)
#   RECSTUDIO_SERVICES_STATEFILE  STATEFILE itself (fault tests call restart-* with it)
# Everything listens on 127.0.0.1 only; the password is random per cluster and never on a command line.
# PostgreSQL comes from Debian packages (installed with apt-get when missing). Root runs the cluster as
# the `postgres` user (runuser); a normal user runs it as itself. The mlflow server runs with
# $RECSTUDIO_SERVICES_PYTHON (default: `python` on PATH, e.g. the active venv), which needs mlflow and
# psycopg 3 (`psycopg[binary]` is pip-installed into it when missing). URLs name the driver
# (postgresql+psycopg://): SQLAlchemy 2.1 defaults to psycopg 3, 2.0 to psycopg2.
set -euo pipefail

log() { echo "services: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

MLFLOW_HEALTH_TIMEOUT="${RECSTUDIO_MLFLOW_HEALTH_TIMEOUT:-180}"
PY="${RECSTUDIO_SERVICES_PYTHON:-$(command -v python || command -v python3)}"

# ---------------------------------------------------------------- helpers

pg_bindir() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do # newest major version wins
    [[ -x "$d/initdb" ]] || continue
    if [[ -z "$best" || "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n 1)" == "$d" ]]; then best="$d"; fi
  done
  if [[ -n "$best" ]]; then echo "$best"; return 0; fi
  if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir; return 0
  fi
  return 1
}

ensure_postgres_installed() {
  if pg_bindir >/dev/null; then return 0; fi
  [[ "$(id -u)" == 0 ]] || die "PostgreSQL server binaries not found and not root: apt-get install postgresql"
  log "installing PostgreSQL from Debian packages (apt-get)"
  local t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  log "PostgreSQL installed in $((SECONDS - t0)) s"
  pg_bindir >/dev/null || die "PostgreSQL installed but initdb not found"
}

ensure_python_deps() {
  [[ -n "$PY" ]] || die "no python found (set RECSTUDIO_SERVICES_PYTHON)"
  "$PY" -c 'import mlflow' 2>/dev/null || die "$PY cannot import mlflow (activate the project venv)"
  if ! "$PY" -c 'import psycopg' 2>/dev/null; then
    log "installing psycopg[binary] into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install -q 'psycopg[binary]>=3.1' >/dev/null
  fi
}

# run a command as the cluster owner
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  "$PY" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

random_hex() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

http_ok() { curl -fsS -o /dev/null --max-time 3 "$1" 2>/dev/null; }

# read the private state of a running set of services (dir, ports, password, pid)
load_state() {
  local statefile="$1"
  [[ -f "$statefile" ]] || die "no state file $statefile (start the services first)"
  # shellcheck disable=SC1090
  . "$statefile"
  [[ -n "${RECSTUDIO_SERVICES_DIR:-}" && -f "$RECSTUDIO_SERVICES_DIR/state" ]] ||
    die "$statefile does not name a services folder"
  # shellcheck disable=SC1091
  . "$RECSTUDIO_SERVICES_DIR/state"
  DIR="$RECSTUDIO_SERVICES_DIR"
  BIN="$(pg_bindir)" || die "PostgreSQL binaries not found"
}

pg_running() { as_pg "$BIN/pg_ctl" -D "$DIR/pgdata" status >/dev/null 2>&1; }

start_postgres() {
  if pg_running; then return 0; fi
  local t0=$SECONDS
  as_pg "$BIN/pg_ctl" -D "$DIR/pgdata" -l "$DIR/pglog/postgres.log" -w -t 60 start >/dev/null ||
    { tail -n 30 "$DIR/pglog/postgres.log" >&2 || true; die "PostgreSQL did not start"; }
  log "PostgreSQL up on 127.0.0.1:$PG_PORT ($((SECONDS - t0)) s)"
}

stop_postgres() {
  if pg_running; then
    as_pg "$BIN/pg_ctl" -D "$DIR/pgdata" -m fast -w -t 60 stop >/dev/null
    log "PostgreSQL stopped"
  fi
}

mlflow_pid() { [[ -f "$DIR/mlflow.pid" ]] && cat "$DIR/mlflow.pid"; }

mlflow_running() {
  local pid
  pid="$(mlflow_pid)" || return 1
  kill -0 "$pid" 2>/dev/null
}

start_mlflow() {
  if mlflow_running; then
    # alive: give a busy server a while to answer before deciding it is wedged
    for _ in $(seq 1 30); do
      http_ok "http://127.0.0.1:$MLFLOW_PORT/health" && return 0
      mlflow_running || break
      sleep 1
    done
  fi
  stop_mlflow
  local t0=$SECONDS
  # setsid: the server and its uvicorn workers form one process group that `stop` ends together.
  # The password reaches libpq through PGPASSWORD, never through argv.
  (
    cd "$DIR"
    # MLflow's job runner (GenAI jobs: 1 runner + 7 huey consumers) is not used by RecStudio
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${RECSTUDIO_MLFLOW_JOB_EXECUTION:-false}"
    PGPASSWORD="$PG_PASSWORD" exec setsid "$PY" -m mlflow server \
      --backend-store-uri "postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/mlflow" \
      --serve-artifacts --artifacts-destination "$DIR/artifacts" \
      --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "${RECSTUDIO_MLFLOW_WORKERS:-2}" \
      >>"$DIR/mlflow.log" 2>&1 </dev/null
  ) &
  echo $! >"$DIR/mlflow.pid"
  local pid
  pid="$(cat "$DIR/mlflow.pid")"
  while ! http_ok "http://127.0.0.1:$MLFLOW_PORT/health"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$DIR/mlflow.log" >&2 || true
      die "mlflow server exited during startup (log: $DIR/mlflow.log)"
    fi
    if ((SECONDS - t0 > MLFLOW_HEALTH_TIMEOUT)); then
      tail -n 40 "$DIR/mlflow.log" >&2 || true
      die "mlflow server not healthy after ${MLFLOW_HEALTH_TIMEOUT} s (log: $DIR/mlflow.log)"
    fi
    sleep 1
  done
  log "mlflow server healthy on http://127.0.0.1:$MLFLOW_PORT ($((SECONDS - t0)) s to /health)"
}

stop_mlflow() {
  local pid
  pid="$(mlflow_pid)" || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "mlflow server stopped"
  fi
  # a worker of the group may outlive the leader for a moment
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$DIR/mlflow.pid"
}

write_statefile() {
  local statefile="$1" tmp
  tmp="$(mktemp "${statefile}.XXXXXX")"
  chmod 600 "$tmp"
  {
    echo "# written by .ci/services.sh; source it. Stop with: .ci/services.sh stop $statefile"
    echo "export RECSTUDIO_SERVICES_DIR=$DIR"
    echo "export RECSTUDIO_SERVICES_STATEFILE=$statefile"
    echo "export RECSTUDIO_TEST_PG_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    echo "export RECSTUDIO_TEST_MLFLOW_URL=http://127.0.0.1:$MLFLOW_PORT"
  } >"$tmp"
  mv -f "$tmp" "$statefile"
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local statefile="$1"
  ensure_python_deps
  # idempotent: reuse a live (or restartable) set of services named by the state file
  if [[ -s "$statefile" ]]; then
    if (
      load_state "$statefile" 2>/dev/null || exit 1
      [[ -d "$DIR/pgdata" ]] || exit 1
      start_postgres && start_mlflow && write_statefile "$statefile"
    ); then
      log "already running (state: $statefile)"
      return 0
    fi
    log "stale state file $statefile: starting afresh"
    cmd_stop "$statefile" 2>/dev/null || rm -f "$statefile"
  fi

  ensure_postgres_installed
  BIN="$(pg_bindir)"
  DIR="$(mktemp -d "${TMPDIR:-/tmp}/recstudio-services.XXXXXX")"
  chmod 711 "$DIR" # the postgres user must traverse it; its own subfolders stay private
  mkdir -p "$DIR/pgdata" "$DIR/pglog" "$DIR/sock" "$DIR/artifacts"
  chmod 700 "$DIR/pgdata" "$DIR/artifacts"
  if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$DIR/pgdata" "$DIR/pglog" "$DIR/sock"; fi

  PG_USER=recstudio
  PG_DB=recstudio
  PG_PASSWORD="$(random_hex)"
  PG_PORT="$(free_port)"
  MLFLOW_PORT="$(free_port)"
  {
    echo "PG_USER=$PG_USER"
    echo "PG_DB=$PG_DB"
    echo "PG_PASSWORD=$PG_PASSWORD"
    echo "PG_PORT=$PG_PORT"
    echo "MLFLOW_PORT=$MLFLOW_PORT"
  } >"$DIR/state"
  chmod 600 "$DIR/state"

  # on any failure below: stop what started, keep logs visible
  trap 'rc=$?; if [[ $rc != 0 ]]; then log "start failed; logs in $DIR"; stop_mlflow || true; stop_postgres || true; fi' EXIT

  local t0=$SECONDS
  as_pg "$BIN/initdb" -D "$DIR/pgdata" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 ||
    as_pg "$BIN/initdb" -D "$DIR/pgdata" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      -E UTF8 --locale=C >"$DIR/initdb.log" 2>&1 ||
    { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  log "initdb done ($((SECONDS - t0)) s)"
  # throwaway cluster: loopback only, private socket dir, durability traded for speed
  cat >>"$DIR/pgdata/postgresql.conf" <<EOF

# --- .ci/services.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$DIR/sock'
password_encryption = 'scram-sha-256'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  start_postgres

  # role + databases over the peer-authenticated socket; the password travels on stdin only
  as_pg "$BIN/psql" -v ON_ERROR_STOP=1 -q -h "$DIR/sock" -p "$PG_PORT" -U postgres -d postgres >/dev/null <<EOF
CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
CREATE DATABASE $PG_DB OWNER $PG_USER;
CREATE DATABASE mlflow OWNER $PG_USER;
EOF

  start_mlflow
  trap - EXIT
  write_statefile "$statefile"
  log "state written to $statefile (source it)"
}

cmd_stop() {
  local statefile="$1"
  if [[ ! -s "$statefile" ]]; then
    log "nothing to stop ($statefile missing or empty)"
    rm -f "$statefile"
    return 0
  fi
  if ! (load_state "$statefile") 2>/dev/null; then
    log "$statefile names no services folder any more: nothing to stop"
    rm -f "$statefile"
    return 0
  fi
  load_state "$statefile"
  stop_mlflow || true
  stop_postgres || true
  if [[ "${RECSTUDIO_SERVICES_KEEP:-0}" == 1 ]]; then
    log "kept $DIR (RECSTUDIO_SERVICES_KEEP=1)"
  else
    rm -rf "$DIR"
  fi
  rm -f "$statefile"
}

cmd_status() {
  load_state "$1"
  local rc=0
  if pg_running; then echo "postgres: up (127.0.0.1:$PG_PORT)"; else echo "postgres: down"; rc=1; fi
  if http_ok "http://127.0.0.1:$MLFLOW_PORT/health"; then
    echo "mlflow:   up (http://127.0.0.1:$MLFLOW_PORT)"
  else
    echo "mlflow:   down"; rc=1
  fi
  echo "dir:      $DIR"
  return $rc
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd="$1"
  case "$cmd" in
    start | stop | status | restart-postgres | restart-mlflow | stop-postgres | start-postgres | stop-mlflow | start-mlflow)
      shift ;;
    -h | --help) usage ;;
    *) cmd=start ;; # `.ci/services.sh STATEFILE`
  esac
  [[ $# -ge 1 ]] || usage
  local statefile="$1"
  case "$statefile" in /*) ;; *) statefile="$PWD/$statefile" ;; esac
  case "$cmd" in
    start) cmd_start "$statefile" ;;
    stop) cmd_stop "$statefile" ;;
    status) cmd_status "$statefile" ;;
    restart-postgres)
      load_state "$statefile"
      stop_postgres
      sleep "${2:-0}"
      start_postgres ;;
    restart-mlflow)
      load_state "$statefile"
      stop_mlflow
      sleep "${2:-0}"
      start_mlflow ;;
    stop-postgres) load_state "$statefile"; stop_postgres ;;
    start-postgres) load_state "$statefile"; start_postgres ;;
    stop-mlflow) load_state "$statefile"; stop_mlflow ;;
    start-mlflow) load_state "$statefile"; start_mlflow ;;
  esac
}

main "$@"
