#!/usr/bin/env bash
# The production lane (docs/production.md): install the project the way `make run` does
# (runtime dependencies only, own venv, no test extras), serve it the way README "Scaling out"
# says (DEBUG=false, PostgreSQL + Redis, two daphne processes, ANTHROPIC_API_KEY set and
# ANTHROPIC_BASE_URL pointing at the scripted model running as its own process, as a remote API
# would be), and drive it from outside with the AI SDK's own client (e2e/, `ai` 7.x on Node),
# once per agent backend (sdk, api). For the backends in PRODLANE_FRONT_BACKENDS the client goes
# through the front door instead: Debian's nginx running the shipped deploy/nginx.conf (rendered
# by scripts/front_door.py: only ports and paths change), first checked by scripts/front_door.py
# (TLS, websocket upgrade, unbuffered SSE, static files, body limits, the client address reaching
# the throttles, /metrics allow-list). Last, a short chaos run (bench/chaos.py) through nginx.
# Exits non-zero when anything fails.
#
# Needs: python3 (3.11+), node + npm, nginx and openssl (installed with apt-get when missing and
# root), PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (.ci/run starts them), and the
# test venv .venv for the chaos client (made with `make install-test` when missing). Settings:
# PRODLANE_PG (server URL without database, default postgres://postgres@127.0.0.1:5432),
# PRODLANE_REDIS (redis://127.0.0.1:6379/0), PRODLANE_BACKENDS ("sdk api"),
# PRODLANE_FRONT_BACKENDS ("api": these run through nginx), PRODLANE_CHAOS_SESSIONS (25; 0 skips
# the chaos run), PRODLANE_FRESH=1 (rebuild the venv even if up to date); PRODLANE_DB,
# PRODLANE_CHAOS_DB, PRODLANE_DIR, PRODLANE_VENV to run beside another lane on one machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T_START=$(date +%s)

PYTHON=${PYTHON:-python3}
VENV=${PRODLANE_VENV:-$ROOT/var/prodlane-venv}
LANE=${PRODLANE_DIR:-$ROOT/var/prodlane}
LOGS=$LANE/logs
PG=${PRODLANE_PG:-postgres://postgres@127.0.0.1:5432}
DB_NAME=${PRODLANE_DB:-copilot_prodlane}
REDIS=${PRODLANE_REDIS:-redis://127.0.0.1:6379/0}
BACKENDS=${PRODLANE_BACKENDS:-sdk api}
FRONT_BACKENDS=${PRODLANE_FRONT_BACKENDS:-api}
CHAOS_SESSIONS=${PRODLANE_CHAOS_SESSIONS:-25}
CHAOS_DB=${PRODLANE_CHAOS_DB:-copilot_frontdoor_chaos}

log() { echo "prod-lane: $*"; }
die() { echo "prod-lane: FAIL: $*" >&2; exit 1; }

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the machine -----------------------------------------------------------------------------
# Agent tools run in a bubblewrap jail under DEBUG=false (AGENT_JAIL=bwrap, CONTRACT §6); the
# jailed Claude Code CLI reaches the model through a socat bridge.
# The front door: Debian's nginx (and openssl for its test certificate).
for need in bwrap:bubblewrap socat:socat nginx:nginx openssl:openssl; do
  if ! command -v "${need%%:*}" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing ${need#*:}"
      # RUNLEVEL=1: nginx's package must not start its own daemon on port 80.
      apt_install() { RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null; }
      apt_install "${need#*:}" || { apt-get update >/dev/null && apt_install "${need#*:}"; }
    else
      log "warning: ${need%%:*} is missing (apt-get install ${need#*:})"
    fi
  fi
done
command -v node >/dev/null || die "node is not installed"
command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx)"
NGINX=$(command -v nginx)
command -v npm >/dev/null || die "npm is not installed"
PG_HOST=$(echo "$PG" | sed -E 's#^[a-z]+://([^@]*@)?([^:/]+).*#\2#')
pg_isready -h "$PG_HOST" -q 2>/dev/null || die "PostgreSQL is not reachable at $PG (.ci/run starts it)"
"$PYTHON" - "$REDIS" <<'PY' || die "Redis is not reachable at $REDIS (.ci/run starts it)"
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2) as s:
    s.sendall(b"PING\r\n")
    assert s.recv(16).startswith(b"+PONG")
PY

# --- the install: exactly what `make run` installs (runtime dependencies only) ---------------
STAMP=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "${PRODLANE_FRESH:-0}" = 1 ] || [ "$(cat "$VENV/.prodlane-stamp" 2>/dev/null)" != "$STAMP" ]; then
  log "building $VENV (runtime dependencies only: pip install -c constraints.txt -e .)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -c constraints.txt -e . 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import django, daphne" || die "the runtime install failed"
  echo "$STAMP" > "$VENV/.prodlane-stamp"
fi
PY="$VENV/bin/python"
# No test-only package may have leaked in: the point of this venv is that they are absent.
if "$PY" -c "import pytest" 2>/dev/null; then die "$VENV has pytest: it must hold runtime dependencies only"; fi

log "installing the e2e client (npm ci, e2e/package-lock.json)"
(cd e2e && npm ci --no-audit --no-fund --loglevel=error 2>&1 | grep -v "EBADENGINE\|required: { node\|current: { node\|^npm warn }" || true)
[ -d e2e/node_modules/ai ] || die "npm ci did not install the ai package"

# --- the deployment --------------------------------------------------------------------------
rm -rf "$LANE"
mkdir -p "$LOGS" "$LANE/workspaces"
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # port pid name: until something accepts connections on 127.0.0.1:port
  for _ in $(seq 1 150); do
    kill -0 "$2" 2>/dev/null || { tail -n 40 "$LOGS/$3.log" >&2; die "$3 exited while starting"; }
    "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=1).close()" "$1" \
      2>/dev/null && return 0
    sleep 0.2
  done
  tail -n 40 "$LOGS/$3.log" >&2; die "$3 does not listen on port $1"
}

# The front door: render deploy/nginx.conf (scripts/front_door.py) for workers on ports $2, $3…
# into directory $1, start Debian's nginx with it (foreground, a child of this script), wait for
# it. Sets FRONT_URL (https), FRONT_HTTP_URL, FRONT_PID; FRONT_DIR/cert.pem is the CA to trust.
front_up() {
  FRONT_DIR=$1; shift
  local https_port http_port workers
  https_port=$(free_port); http_port=$(free_port); workers=$(IFS=,; echo "$*")
  "$PY" scripts/front_door.py render --dir "$FRONT_DIR" --https-port "$https_port" --http-port "$http_port" \
    --workers "$workers" --static-root "$STATIC_ROOT" >/dev/null
  "$NGINX" -t -q -p "$FRONT_DIR" -c "$FRONT_DIR/nginx.conf" || die "nginx -t refused the rendered deploy/nginx.conf"
  "$NGINX" -p "$FRONT_DIR" -c "$FRONT_DIR/nginx.conf" -g 'daemon off;' >"$LOGS/nginx-$(basename "$FRONT_DIR").log" 2>&1 &
  FRONT_PID=$!; PIDS+=("$FRONT_PID")
  wait_port "$https_port" "$FRONT_PID" "nginx-$(basename "$FRONT_DIR")"
  FRONT_URL="https://127.0.0.1:$https_port"; FRONT_HTTP_URL="http://127.0.0.1:$http_port"
  log "nginx (deploy/nginx.conf) on $FRONT_URL in front of workers $workers"
}
front_down() {  # graceful stop (SIGQUIT), then wait
  kill -QUIT "$FRONT_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$FRONT_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$FRONT_PID" 2>/dev/null || true
  wait "$FRONT_PID" 2>/dev/null || true
}

# Common to every process of the deployment: production settings, no .env file.
export ENV_FILE= DEBUG=false PYTHONUNBUFFERED=1 LOG_LEVEL=INFO
export SECRET_KEY="prodlane-$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))')"
export ALLOWED_HOSTS=127.0.0.1,localhost
export DATABASE_URL="$PG/$DB_NAME" REDIS_URL="$REDIS" REDIS_KEY_PREFIX=prodlane
export AGENT_WORKSPACE_ROOT="$LANE/workspaces" VAR_DIR="$LANE/var"
# Two models a chat may choose (the per-chat settings scenario switches between them).
export AGENT_MODELS='[{"id": "claude-sonnet-5-5", "name": "Claude Sonnet 5.5", "prices": [3, 15, 0.3, 3.75]}, {"id": "claude-opus-5", "name": "Claude Opus 5"}]'
unset AGENT_MODEL
# Short enough for the expiry scenario to wait it out, long enough for every other approval
# scenario (they answer within a second or two of the request); the e2e client reads it too.
export TOOL_APPROVAL_TIMEOUT_SECONDS=15
unset AGENT_JAIL AGENT_BACKEND ANTHROPIC_API_KEY ANTHROPIC_BASE_URL DJANGO_ALLOW_ASYNC_UNSAFE
# Behind nginx on this host (deploy/nginx.conf): its X-Forwarded-For names the client.
export TRUSTED_PROXIES=127.0.0.1/32,::1/128 STATIC_ROOT="$LANE/static"
export METRICS_TOKEN="prodlane-metrics-$RANDOM$RANDOM$RANDOM"

# The model: the scripted model as its own process, reached over the network like api.anthropic.com
# (it is the stand-in for the remote API, not part of the deployment: it runs with DEBUG=true).
SM_PORT=$(free_port)
DEBUG=true DATABASE_URL="sqlite:///$LANE/scripted-model.sqlite3" \
  "$PY" manage.py scripted_model --port "$SM_PORT" >"$LOGS/scripted-model.log" 2>&1 &
SM_PID=$!; PIDS+=("$SM_PID")
# A key is set, as in every real deployment (the scripted model takes any): the credential proxy path.
export ANTHROPIC_BASE_URL="http://127.0.0.1:$SM_PORT"
export ANTHROPIC_API_KEY="${PRODLANE_ANTHROPIC_API_KEY:-sk-ant-prodlane-offline-$RANDOM$RANDOM}"
wait_port "$SM_PORT" "$SM_PID" scripted-model

log "database $DB_NAME (fresh), migrate, check --deploy"
PG_ADMIN="$PG/postgres"
"$PY" - "$PG_ADMIN" "$DB_NAME" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
    conn.execute(f'CREATE DATABASE "{sys.argv[2]}"')
PY
"$PY" manage.py migrate --noinput -v 0
"$PY" manage.py check --deploy --fail-level WARNING
"$PY" manage.py collectstatic --noinput -v 0   # STATIC_ROOT, which nginx serves
KEYS=()
for i in 1 2 3; do
  KEYS+=("$("$PY" manage.py create_api_key "prodlane-$i" --create-user --name prod-lane --quiet)")
done
E2E_KEYS=$(IFS=,; echo "${KEYS[*]}")

status=0
for backend in $BACKENDS; do
  log "=== backend $backend: two daphne workers ==="
  WS_LIMITS=(--websocket-max-message-size 34603008 --websocket-max-frame-size 34603008)
  PORTS=(); WPIDS=()
  # prometheus_client's multiprocess mode: one directory for the workers of this deployment,
  # empty when they start (as copilot-runtime.service makes it, deploy/systemd/).
  METRICS_DIR="$LANE/metrics-$backend"; rm -rf "$METRICS_DIR"; mkdir -p "$METRICS_DIR"
  for n in 1 2; do
    port=$(free_port)
    AGENT_BACKEND=$backend PROMETHEUS_MULTIPROC_DIR="$METRICS_DIR" "$VENV/bin/daphne" -b 127.0.0.1 -p "$port" "${WS_LIMITS[@]}" \
      copilot_project.asgi:application >"$LOGS/daphne-$backend-$n.log" 2>&1 &
    pid=$!; PIDS+=("$pid"); PORTS+=("$port"); WPIDS+=("$pid")
  done
  for n in 0 1; do wait_port "${PORTS[$n]}" "${WPIDS[$n]}" "daphne-$backend-$((n + 1))"; done
  DIRECT="http://127.0.0.1:${PORTS[0]},http://127.0.0.1:${PORTS[1]}"
  WORKERS=$DIRECT; FRONT_PID=; CA=
  if [[ " $FRONT_BACKENDS " == *" $backend "* ]]; then
    front_up "$LANE/front-$backend" "${PORTS[@]}"
    WORKERS="$FRONT_URL,$FRONT_URL"; CA="$FRONT_DIR/cert.pem"
    t0=$(date +%s)
    if "$PY" scripts/front_door.py check --url "$FRONT_URL" --http-url "$FRONT_HTTP_URL" --ca "$CA" \
        --key "${KEYS[2]}" --static-root "$STATIC_ROOT"; then
      log "backend $backend: the front door checks passed in $(( $(date +%s) - t0 )) s"
    else
      status=1; log "backend $backend: the front door checks FAILED (logs: $FRONT_DIR/error.log, $LOGS)"
    fi
  fi
  t0=$(date +%s)
  if (cd e2e && E2E_BACKEND=$backend E2E_KEYS="$E2E_KEYS" E2E_WORKERS="$WORKERS" E2E_DIRECT="$DIRECT" \
      E2E_WORKER_PIDS="${WPIDS[0]},${WPIDS[1]}" NODE_EXTRA_CA_CERTS="$CA" \
      E2E_LOGS="$LOGS" node --test --test-reporter=spec scenarios.mjs); then
    log "backend $backend: passed in $(( $(date +%s) - t0 )) s$([ -n "$FRONT_PID" ] && echo " through nginx")"
  else
    status=1
    log "backend $backend: FAILED; the workers' logs:"
    for n in 1 2; do echo "--- daphne-$backend-$n.log (tail)"; tail -n 60 "$LOGS/daphne-$backend-$n.log"; done
  fi
  [ -n "$FRONT_PID" ] && front_down
  for pid in "${WPIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${WPIDS[@]}"; do
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null && { log "worker $pid did not exit within 20 s of SIGTERM"; status=1; } || true
    wait "$pid" 2>/dev/null || true
  done
done

# --- a short chaos run through the front door -------------------------------------------------
# bench/chaos.py starts its own two daphne workers (DEBUG=true, cookie sessions, its own database
# and Redis prefix) on the ports nginx was rendered for, and sends every client through nginx.
if [ "$CHAOS_SESSIONS" -gt 0 ]; then
  [ -x "$ROOT/.venv/bin/python" ] || make -C "$ROOT" install-test >/dev/null
  CHAOS_PORTS=("$(free_port)" "$(free_port)")
  front_up "$LANE/front-chaos" "${CHAOS_PORTS[@]}"
  t0=$(date +%s)
  if env -i PATH="$PATH" HOME="${HOME:-/root}" LANG=C.UTF-8 ENV_FILE= CI=true \
      CHAOS_PG_URL="$PG/postgres" CHAOS_REDIS_URL="$REDIS" \
      "$ROOT/.venv/bin/python" -m bench.chaos --sessions "$CHAOS_SESSIONS" --concurrency 8 --seed 20261201 \
      --database "$CHAOS_DB" --template-database "$DB_NAME" --drop --worker-ports "$(IFS=,; echo "${CHAOS_PORTS[*]}")" \
      --base-url "$FRONT_URL" --ca-file "$FRONT_DIR/cert.pem" >"$LOGS/chaos.log" 2>&1; then
    log "chaos through nginx: $CHAOS_SESSIONS sessions, no invariant violated ($(( $(date +%s) - t0 )) s)"
    grep -E "^chaos: seed|turns fully observed|invariant violations" "$LOGS/chaos.log" | sed 's/^/  /' || true
  else
    status=1; log "chaos through nginx FAILED:"; tail -n 60 "$LOGS/chaos.log"
  fi
  front_down
fi

log "$( [ $status = 0 ] && echo PASSED || echo FAILED ) in $(( $(date +%s) - T_START )) s (logs: $LOGS)"
exit "$status"
