#!/usr/bin/env bash
# bench.sh — measure connected-registry against the reference peers, in one sitting, interleaved.
#
# Builds the release binary, then for each round (ROUNDS, default 3) runs the shared harness
# (../shared/bench/run.sh) against every target in TARGETS, in that order:
#   ours        connected-registry serve, plain HTTP                      127.0.0.1:OURS_PORT
#   a           CNCF distribution (docker-registry), plain HTTP            (anchors.sh, :REG_PORT)
#   ours-proxy  connected-registry proxy (TLS 1.3) in front of ours        127.0.0.1:OURS_PROXY_PORT
#   ours-onemodule  one module: connected-registry serve --proxy-listen, TLS 1.3 only (no plain
#               listener; /v2 served in process, fixtures pushed over TLS) 127.0.0.1:OURS_PROXY_PORT
#               (not in the default TARGETS: TARGETS="ours ours-onemodule c-tls ours-proxy")
#   ours-basic  ours with access control (--auth tokens), every request with Basic credentials
#   ours-bearer ours with access control, every request with a Bearer token from /oauth2/token
#   ours-header ours without access control, every request with a Bearer header of a real token's
#               length that nobody reads: what the bigger request costs the client and the HTTP
#               parse, so ours-bearer/ours-header is what the access check itself costs
#               (all three: WORKLOADS="W1 W2" only, the token grants the fixture's repository; not in
#               the default TARGETS; also prints the token service's latency at TOKEN_RATE
#               requests/s, see bench/token_rate.py)
#   ours-proxy2 the proxy with /v2 balanced over two replicas of ours, each on its own data
#               directory with the same fixture (:OURS_PORT and :OURS_PORT2); read workloads only
#               (W1 W2 W5 of WORKLOADS: independent replicas share no upload sessions); not in the
#               default TARGETS: TARGETS="ours-proxy ours-proxy2" WORKLOADS="W2" compares them
#   nginx-ours  nginx TLS reverse proxy (anchor b's config) in front of ours 127.0.0.1:NGINX_OURS_PORT
#               (not in the default TARGETS: the "same registry" comparison for the proxy goal)
#   b           nginx TLS reverse proxy in front of a                      (anchors.sh, :PROXY_PORT)
#   c-http      nginx serving a's blob and manifest as static files        (anchors.sh, :STATIC_PORT)
#   c-tls       the same over TLS 1.3                                      (anchors.sh, :STATIC_TLS_PORT)
# The anchors are started, measured and stopped by ../shared/bench/anchors.sh (one call per run of
# consecutive anchor labels in TARGETS); our servers are started fresh for each of our targets, on
# a data directory kept for the whole sitting, and stopped by PID. Then prints the Markdown table,
# the within-round ratios (compare.py) and the goal check (bench/goals.py), and keeps every raw
# file in BENCH_OUT. Everything listens on 127.0.0.1; every load run is bounded in time.
#
# Usage: ./bench.sh            (see bench/README.md for every knob)
#   ROUNDS=1 WORKLOADS="W2" W2_DURATION=2 ./bench.sh     a quick smoke run
set -euo pipefail

ROOT="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "bench.sh takes no arguments ('$1'): settings are environment variables," \
    "e.g. ROUNDS=1 TARGETS='ours a' ./bench.sh (see bench/README.md, or ./bench.sh --help)" >&2; exit 2 ;;
esac
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
if [ ! -x "$SHARED_BENCH/run.sh" ] || [ ! -x "$SHARED_BENCH/anchors.sh" ]; then
  echo "bench.sh: the shared harness is not at $SHARED_BENCH (run.sh, anchors.sh);" \
    "check out shared/ beside the repository or set SHARED_BENCH=DIR" >&2
  exit 2
fi
BENCH_DIR="$(cd "$SHARED_BENCH" && pwd)"
# shellcheck source=../shared/bench/lib.sh
. "$BENCH_DIR/lib.sh"

ALL_TARGETS="ours a ours-proxy ours-proxy2 ours-onemodule nginx-ours ours-basic ours-bearer ours-header b c-http c-tls"
DEFAULT_TARGETS="ours a ours-proxy b c-http c-tls"
ROUNDS="${ROUNDS:-3}"
TARGETS="${TARGETS:-$DEFAULT_TARGETS}"
BENCH_OUT="${BENCH_OUT:-$ROOT/target/bench}"
OURS_PORT="${OURS_PORT:-5110}"
OURS_PORT2="${OURS_PORT2:-5111}"
OURS_PROXY_PORT="${OURS_PROXY_PORT:-8453}"
# Extra flags for our proxy, e.g. OURS_PROXY_ARGS="--alpn http/1.1,h2" (word-split on purpose).
OURS_PROXY_ARGS="${OURS_PROXY_ARGS:-}"
OURS_ADMIN_PORT="${OURS_ADMIN_PORT:-9453}"
NGINX_OURS_PORT="${NGINX_OURS_PORT:-8463}"
RUN_TIMEOUT="${RUN_TIMEOUT:-3600}"
BENCH_RUST_LOG="${BENCH_RUST_LOG:-warn}"
BUILD="${BUILD:-1}"
BIN="${CONNECTED_REGISTRY_BIN:-}"

case "$ROUNDS" in '' | *[!0-9]* | 0) die "ROUNDS must be a whole number >= 1, got '$ROUNDS'" ;; esac
case "$RUN_TIMEOUT" in '' | *[!0-9]* | 0) die "RUN_TIMEOUT must be seconds >= 1, got '$RUN_TIMEOUT'" ;; esac
for t in $TARGETS; do
  case " $ALL_TARGETS " in *" $t "*) ;; *) die "unknown target '$t' in TARGETS; choose from: $ALL_TARGETS" ;; esac
done
[ -n "${TARGETS// /}" ] || die "TARGETS is empty; choose from: $ALL_TARGETS"
want() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# ours-proxy2's replicas share nothing, so a push through the balancing proxy could start an
# upload on one and continue it on the other: it runs the read workloads of WORKLOADS only.
PROXY2_WORKLOADS=""
for w in ${WORKLOADS:-W1 W2 W3 W4 W5 W6}; do
  case "$w" in W1 | W2 | W5) PROXY2_WORKLOADS="${PROXY2_WORKLOADS:+$PROXY2_WORKLOADS }$w" ;; esac
done
if want ours-proxy2 && [ -z "$PROXY2_WORKLOADS" ]; then
  die "target ours-proxy2 runs W1, W2 and W5 only; WORKLOADS='${WORKLOADS:-}' has none of them"
fi
is_anchor() { case "$1" in a | b | c-http | c-tls) return 0 ;; *) return 1 ;; esac; }

need curl python3 awk openssl timeout
ours_wanted() { want ours || want ours-proxy || want ours-proxy2 || want ours-onemodule || want nginx-ours; }
if ours_wanted && [ -z "$BIN" ] && [ "$BUILD" = 1 ]; then need cargo; fi
if want a || want b || want c-http || want c-tls; then need docker-registry nginx; fi
if want nginx-ours; then need nginx; fi

# ------------------------------------------------------------------ output directory
# Result files of an earlier sitting are moved aside (never deleted), so that compare.py only
# sees this sitting's rounds.
mkdir -p "$BENCH_OUT"
BENCH_OUT="$(cd "$BENCH_OUT" && pwd)"
shopt -s nullglob
old=("$BENCH_OUT"/*.txt "$BENCH_OUT"/*.md "$BENCH_OUT"/*.log)
shopt -u nullglob
if [ -d "$BENCH_OUT/logs" ]; then old+=("$BENCH_OUT/logs"); fi
if [ "${#old[@]}" -gt 0 ]; then
  prev="$(mktemp -d "$BENCH_OUT/previous-$(date -u +%Y%m%dT%H%M%SZ).XXXX")"
  mv "${old[@]}" "$prev/" || die "cannot move the previous sitting's files to $prev"
  log "moved the previous sitting's files to $prev"
fi
mkdir -p "$BENCH_OUT/logs"
exec 2> >(tee -a "$BENCH_OUT/bench.log" >&2)

# ------------------------------------------------------------------ binary
if ours_wanted; then
  if [ -n "$BIN" ]; then
    [ -x "$BIN" ] || die "CONNECTED_REGISTRY_BIN=$BIN is not an executable file"
    log "using CONNECTED_REGISTRY_BIN=$BIN (not building)"
  else
    BIN="$ROOT/target/release/connected-registry"
    if [ "$BUILD" = 1 ]; then
      log "cargo build --release (in $ROOT)"
      (cd "$ROOT" && cargo build --release --bin connected-registry) >&2 ||
        die "cargo build --release failed (see above)"
    fi
    [ -x "$BIN" ] || die "$BIN is missing; run without BUILD=0 to build it"
  fi
  log "binary: $BIN ($("$BIN" --version 2>/dev/null || echo 'version unknown'))"
fi

# `connected-registry proxy` exists only once the proxy part is merged: without its flags,
# the ours-proxy target is dropped with a message instead of failing the whole sitting.
proxy_help="$(if want ours-proxy; then "$BIN" proxy --help 2>&1 || true; fi)"
if want ours-proxy && [[ "$proxy_help" != *--route* ]]; then
  log "SKIPPING target ours-proxy: this build's 'connected-registry proxy' has no --route flag" \
    "(the proxy is not implemented in it yet; merge the proxy branch, or set CONNECTED_REGISTRY_BIN)"
  TARGETS="$(for t in $TARGETS; do [ "$t" = ours-proxy ] || printf '%s ' "$t"; done)"
  TARGETS="${TARGETS% }"
  [ -n "$TARGETS" ] || die "no target left to measure (TARGETS had only ours-proxy)"
fi

ours_ports=()
if ours_wanted; then ours_ports+=("$OURS_PORT" "$OURS_PROXY_PORT" "$OURS_ADMIN_PORT"); fi
if want ours-proxy2; then ours_ports+=("$OURS_PORT2"); fi
if want nginx-ours; then ours_ports+=("$NGINX_OURS_PORT"); fi
for p in "${ours_ports[@]}"; do
  port_free "$p" ||
    die "127.0.0.1:$p is in use; choose other OURS_PORT / OURS_PORT2 / OURS_PROXY_PORT / OURS_ADMIN_PORT / NGINX_OURS_PORT"
done

# ------------------------------------------------------------------ scratch space
OWN_WORK=""
if [ -z "${BENCH_WORK:-}" ]; then
  BENCH_WORK="$(mktemp -d -t bench-sitting.XXXXXX)"
  OWN_WORK="$BENCH_WORK"
fi
WORK="$BENCH_WORK"
unset BENCH_WORK # run.sh gets a private scratch dir per call; anchors.sh gets WORK/anchors
mkdir -p "$WORK"
chmod 755 "$WORK" # nginx workers (user nobody) must reach the anchors' files below it
export BENCH_CACHE="${BENCH_CACHE:-$WORK/cache}" # generated images, shared by every call
mkdir -p "$BENCH_CACHE" "$WORK/ours/data" "$WORK/ours/data2" "$WORK/anchors" "$WORK/anchor-results"

OURS_PID=""
OURS2_PID=""
PROXY_PID=""
CHILD=""
alive() { # PID: running and not a zombie waiting to be reaped
  [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}
# stop_pid PID [GRACE_S] [-GROUP]: SIGTERM, wait up to GRACE_S (10) seconds, then SIGKILL (to
# the process group when -GROUP is given: timeout(1) leads one holding the harness and its
# servers), and reap it. Bounded, so a server that hangs in shutdown cannot hang the sitting.
stop_pid() {
  local pid="$1" grace="${2:-10}" group="${3:-}" i
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "pid $pid still running ${grace}s after SIGTERM; sending SIGKILL"
    if [ -n "$group" ]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  # a harness call still running (interrupted sitting): timeout(1) passes SIGTERM on to it and
  # its process group, and run.sh / anchors.sh stop their own servers on it
  stop_pid "$CHILD" 60 -group
  stop_pid "$PROXY_PID"
  stop_pid "$OURS_PID"
  stop_pid "$OURS2_PID"
  CHILD="" PROXY_PID="" OURS_PID="" OURS2_PID=""
  if [ -n "$OWN_WORK" ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$OWN_WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_child CMD...: run a harness call in the background and wait for it, so that a signal to
# this script is handled at once (cleanup then stops the call by PID); bounded by RUN_TIMEOUT.
run_child() {
  timeout -k 60 "$RUN_TIMEOUT" "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  if [ "$rc" = 124 ]; then log "timed out after RUN_TIMEOUT=${RUN_TIMEOUT}s: $*"; fi
  return "$rc"
}

# ------------------------------------------------------------------ our servers
# await_up PID URL CA LOG WHAT: wait until URL answers with PID still running; else show the end
# of LOG and stop the sitting.
await_up() {
  local pid="$1" url="$2" ca="$3" log_file="$4" what="$5"
  if ! wait_http "$url" "$ca" 30 || ! kill -0 "$pid" 2>/dev/null; then
    tail -20 "$log_file" >&2 || true
    die "$what did not start at $url (log: $log_file)"
  fi
}

# Both run with RUST_LOG=$BENCH_RUST_LOG (warn): the anchors run with warnings only and no
# access log, so ours must not pay for request logging either. The IoT Edge variables the proxy
# reads are cleared so that the flags below are the whole configuration.
start_ours() { # ROUND
  local log_file="$BENCH_OUT/logs/ours-serve.$1.log"
  port_free "$OURS_PORT" || die "127.0.0.1:$OURS_PORT is in use (OURS_PORT)"
  RUST_LOG="$BENCH_RUST_LOG" "$BIN" serve --listen "127.0.0.1:$OURS_PORT" --data "$WORK/ours/data" \
    --auth "${OURS_AUTH:-none}" --token-lifetime 1h \
    >"$log_file" 2>&1 &
  OURS_PID=$!
  await_up "$OURS_PID" "http://127.0.0.1:$OURS_PORT/v2/" "" "$log_file" "connected-registry serve"
  log "ours: connected-registry serve pid $OURS_PID on :$OURS_PORT, data $WORK/ours/data"
}

# The second replica of ours-proxy2: its own data directory, seeded with run.sh's fixture (the
# same seed and sizes give the same digests; a push already there is skipped).
start_ours2() { # ROUND
  local log_file="$BENCH_OUT/logs/ours-serve2.$1.log"
  port_free "$OURS_PORT2" || die "127.0.0.1:$OURS_PORT2 is in use (OURS_PORT2)"
  RUST_LOG="$BENCH_RUST_LOG" "$BIN" serve --listen "127.0.0.1:$OURS_PORT2" --data "$WORK/ours/data2" \
    --auth none >"$log_file" 2>&1 &
  OURS2_PID=$!
  await_up "$OURS2_PID" "http://127.0.0.1:$OURS_PORT2/v2/" "" "$log_file" "connected-registry serve (second replica)"
  "$BENCH_DIR/seed-registry.sh" --seed anchor "http://127.0.0.1:$OURS_PORT2" "${NS:-bench}/anchor" v1 \
    "${W1_SIZE:-512M}" 64K 64K 64K 64K >/dev/null || die "seeding the second replica failed"
  log "ours-proxy2: second replica pid $OURS2_PID on :$OURS_PORT2, data $WORK/ours/data2"
}

# One module: the registry and the TLS proxy in one process, no plain listener; /v2 reaches the
# registry in process. The proxy's settings as ours-proxy's (OURS_PROXY_ARGS as --proxy-NAME).
start_onemodule() { # ROUND
  local log_file="$BENCH_OUT/logs/ours-onemodule.$1.log"
  port_free "$OURS_PROXY_PORT" || die "127.0.0.1:$OURS_PROXY_PORT is in use (OURS_PROXY_PORT)"
  port_free "$OURS_ADMIN_PORT" || die "127.0.0.1:$OURS_ADMIN_PORT is in use (OURS_ADMIN_PORT)"
  env -u NGINX_DEFAULT_PORT -u CONNECTED_ACR_ROUTE_ADDRESS -u DOCKER_REQUEST_ROUTE_ADDRESS \
    -u BLOB_UPLOAD_ROUTE_ADDRESS -u IOTEDGE_PARENTHOSTNAME -u CONNECTED_REGISTRY_LISTEN \
    RUST_LOG="$BENCH_RUST_LOG" "$BIN" serve --data "$WORK/ours/data" --auth none \
    --proxy-listen "127.0.0.1:$OURS_PROXY_PORT" \
    --proxy-cert "$WORK/tls/server.crt" --proxy-key "$WORK/tls/server.key" \
    --proxy-admin "127.0.0.1:$OURS_ADMIN_PORT" ${OURS_ONEMODULE_ARGS:-} >"$log_file" 2>&1 &
  OURS_PID=$!
  await_up "$OURS_PID" "https://127.0.0.1:$OURS_PROXY_PORT/v2/" "$WORK/tls/ca.crt" "$log_file" \
    "connected-registry serve --proxy-listen (one module)"
  log "ours-onemodule: connected-registry serve pid $OURS_PID on :$OURS_PROXY_PORT (TLS only)"
}

start_proxy() { # ROUND [UPSTREAMS]: /v2 routed to UPSTREAMS (default: ours)
  local log_file="$BENCH_OUT/logs/ours-proxy.$1.log" upstreams="${2:-http://127.0.0.1:$OURS_PORT}"
  port_free "$OURS_PROXY_PORT" || die "127.0.0.1:$OURS_PROXY_PORT is in use (OURS_PROXY_PORT)"
  port_free "$OURS_ADMIN_PORT" || die "127.0.0.1:$OURS_ADMIN_PORT is in use (OURS_ADMIN_PORT)"
  env -u NGINX_DEFAULT_PORT -u CONNECTED_ACR_ROUTE_ADDRESS -u DOCKER_REQUEST_ROUTE_ADDRESS \
    -u BLOB_UPLOAD_ROUTE_ADDRESS -u IOTEDGE_PARENTHOSTNAME RUST_LOG="$BENCH_RUST_LOG" \
    "$BIN" proxy --listen "127.0.0.1:$OURS_PROXY_PORT" \
    --cert "$WORK/tls/server.crt" --key "$WORK/tls/server.key" \
    --route "/v2=$upstreams" --admin "127.0.0.1:$OURS_ADMIN_PORT" \
    ${OURS_PROXY_ARGS:-} >"$log_file" 2>&1 &
  PROXY_PID=$!
  await_up "$PROXY_PID" "https://127.0.0.1:$OURS_PROXY_PORT/v2/" "$WORK/tls/ca.crt" "$log_file" \
    "connected-registry proxy"
  log "ours-proxy: connected-registry proxy pid $PROXY_PID on :$OURS_PROXY_PORT (TLS) to $upstreams, admin :$OURS_ADMIN_PORT"
}

# nginx with anchor b's own config, in front of our registry instead of distribution.
start_nginx_ours() { # ROUND
  local run="$WORK/nginx-ours"
  port_free "$NGINX_OURS_PORT" || die "127.0.0.1:$NGINX_OURS_PORT is in use (NGINX_OURS_PORT)"
  mkdir -p "$run"
  sed -e "s|@@LISTEN@@|127.0.0.1:$NGINX_OURS_PORT|g" -e "s|@@UPSTREAM@@|127.0.0.1:$OURS_PORT|g" \
    -e "s|@@CERT@@|$WORK/tls/server.crt|g" -e "s|@@KEY@@|$WORK/tls/server.key|g" \
    -e "s|@@RUN@@|$run|g" "$BENCH_DIR/nginx-proxy.conf.template" >"$run/nginx.conf"
  local log_file="$BENCH_OUT/logs/nginx-ours.$1.log"
  nginx -p "$run" -c "$run/nginx.conf" -e "$run/error.log" -g 'daemon off;' >"$log_file" 2>&1 &
  PROXY_PID=$!
  await_up "$PROXY_PID" "https://127.0.0.1:$NGINX_OURS_PORT/v2/" "$WORK/tls/ca.crt" "$log_file" \
    "nginx in front of ours (config $run/nginx.conf, error log $run/error.log)"
  log "nginx-ours: nginx master pid $PROXY_PID on :$NGINX_OURS_PORT (TLS) in front of ours"
}

stop_ours() {
  stop_pid "$PROXY_PID"
  PROXY_PID=""
  stop_pid "$OURS_PID"
  OURS_PID=""
  stop_pid "$OURS2_PID"
  OURS2_PID=""
}

if want ours-proxy || want ours-proxy2 || want ours-onemodule || want nginx-ours; then
  "$BENCH_DIR/gen-certs.sh" "$WORK/tls" >/dev/null # throw-away CA + 127.0.0.1 cert, like anchor b's
fi

FAILED=()

run_ours_target() { # LABEL ROUND
  local label="$1" round="$2" out="$BENCH_OUT/$1.$2.txt" rc=0
  : >"$out"
  log "=== $label, round $round"
  local auth=none
  case "$label" in ours-basic | ours-bearer) auth=tokens ;; esac
  if [ "$label" = ours-onemodule ]; then
    start_onemodule "$round"
  else
    OURS_AUTH="$auth" start_ours "$round"
  fi
  local password_file="$WORK/ours/data/admin-password" password=""
  [ "$auth" = none ] || password="$(cat "$password_file")"
  case "$label" in
    ours-onemodule)
      REGISTRY_URL="https://127.0.0.1:$OURS_PROXY_PORT" CA_FILE="$WORK/tls/ca.crt" \
        SERVER_PIDS="onemodule:$OURS_PID" RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      ;;
    ours)
      REGISTRY_URL="http://127.0.0.1:$OURS_PORT" SERVER_PIDS="registry:$OURS_PID" \
        RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      ;;
    ours-proxy)
      start_proxy "$round"
      REGISTRY_URL="http://127.0.0.1:$OURS_PORT" PROXY_URL="https://127.0.0.1:$OURS_PROXY_PORT" \
        CA_FILE="$WORK/tls/ca.crt" SERVER_PIDS="registry:$OURS_PID proxy:$PROXY_PID" \
        RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      ;;
    ours-basic)
      AUTH_USER=admin AUTH_PASS="$password" REGISTRY_URL="http://127.0.0.1:$OURS_PORT" \
        SERVER_PIDS="registry:$OURS_PID" RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      python3 "$ROOT/bench/token_rate.py" "http://127.0.0.1:$OURS_PORT" admin "$password" \
        "${TOKEN_RATE:-200}" "${TOKEN_SECONDS:-10}" >>"$out" || rc=$?
      ;;
    ours-header)
      # A real access token for bench/anchor is 400-odd characters; this one is never checked.
      BEARER_TOKEN="$(printf 'x%.0s' $(seq 1 "${HEADER_TOKEN_LENGTH:-440}"))" \
        REGISTRY_URL="http://127.0.0.1:$OURS_PORT" SERVER_PIDS="registry:$OURS_PID" \
        RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      ;;
    ours-bearer)
      local token
      token="$(curl -fsS -u "admin:$password" \
        "http://127.0.0.1:$OURS_PORT/oauth2/token?service=127.0.0.1:$OURS_PORT&scope=repository:${NS:-bench}/anchor:pull,push" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
      log "ours-bearer: the access token is ${#token} characters"
      BEARER_TOKEN="$token" REGISTRY_URL="http://127.0.0.1:$OURS_PORT" \
        SERVER_PIDS="registry:$OURS_PID" RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      ;;
    ours-proxy2)
      start_ours2 "$round"
      start_proxy "$round" "http://127.0.0.1:$OURS_PORT,http://127.0.0.1:$OURS_PORT2"
      WORKLOADS="$PROXY2_WORKLOADS" REGISTRY_URL="http://127.0.0.1:$OURS_PORT" \
        PROXY_URL="https://127.0.0.1:$OURS_PROXY_PORT" CA_FILE="$WORK/tls/ca.crt" \
        SERVER_PIDS="registry:$OURS_PID,$OURS2_PID proxy:$PROXY_PID" \
        RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      ;;
    nginx-ours)
      start_nginx_ours "$round"
      REGISTRY_URL="http://127.0.0.1:$OURS_PORT" PROXY_URL="https://127.0.0.1:$NGINX_OURS_PORT" \
        CA_FILE="$WORK/tls/ca.crt" SERVER_PIDS="registry:$OURS_PID nginx:$PROXY_PID+" \
        RESULT_FILE="$out" run_child "$BENCH_DIR/run.sh" >/dev/null || rc=$?
      ;;
  esac
  stop_ours
  if [ "$rc" != 0 ]; then
    log "target $label round $round FAILED (exit $rc, see above)"
    FAILED+=("$label.$round")
  fi
}

run_anchor_targets() { # ROUND LABEL...
  local round="$1" rdir rc=0 l
  shift
  rdir="$(mktemp -d "$WORK/anchor-results/r$round.XXXXXX")"
  log "=== anchors $*, round $round (anchors.sh)"
  ANCHORS="$*" BENCH_WORK="$WORK/anchors" RESULTS_DIR="$rdir" \
    run_child "$BENCH_DIR/anchors.sh" 1 >"$rdir/anchors-table.md" || rc=$?
  for l in "$@"; do
    if [ "$rc" = 0 ] && [ -s "$rdir/$l.1.txt" ] && grep -q '^[a-z]' "$rdir/$l.1.txt"; then
      mv "$rdir/$l.1.txt" "$BENCH_OUT/$l.$round.txt"
    else
      [ -f "$rdir/$l.1.txt" ] && mv "$rdir/$l.1.txt" "$BENCH_OUT/$l.$round.txt"
      log "target $l round $round FAILED (anchors.sh exit $rc, see above)"
      FAILED+=("$l.$round")
    fi
  done
  # the anchors' own logs (overwritten by the next anchors.sh call), for a failed run
  local tag="${*// /+}"
  for l in registry/log proxy/error.log static/error.log; do
    if [ -s "$WORK/anchors/$l" ]; then
      cp "$WORK/anchors/$l" "$BENCH_OUT/logs/anchors-$tag.$round.${l//\//-}"
    fi
  done
}

log "sitting: ROUNDS=$ROUNDS TARGETS='$TARGETS' WORKLOADS='${WORKLOADS:-W1 W2 W3 W4 W5 W6}' out=$BENCH_OUT"
for ((round = 1; round <= ROUNDS; round++)); do
  batch=() # consecutive anchor labels go to one anchors.sh call
  for t in $TARGETS; do
    if is_anchor "$t"; then
      batch+=("$t")
      continue
    fi
    if [ "${#batch[@]}" -gt 0 ]; then
      run_anchor_targets "$round" "${batch[@]}"
      batch=()
    fi
    run_ours_target "$t" "$round"
  done
  if [ "${#batch[@]}" -gt 0 ]; then run_anchor_targets "$round" "${batch[@]}"; fi
done

# ------------------------------------------------------------------ report
files=()
for t in $TARGETS; do
  for ((round = 1; round <= ROUNDS; round++)); do
    if [ -s "$BENCH_OUT/$t.$round.txt" ]; then files+=("$BENCH_OUT/$t.$round.txt"); fi
  done
done
[ "${#files[@]}" -gt 0 ] || die "no results (every target failed; see $BENCH_OUT/bench.log)"
ratios=()
for r in ours-proxy2/ours-proxy ours-onemodule/ours ours-onemodule/c-tls ours-onemodule/ours-proxy ours-basic/ours ours-bearer/ours ours-bearer/ours-header ours-header/ours ours/a ours-proxy/b ours-proxy/nginx-ours ours-proxy/c-tls ours/c-http ours-proxy/ours nginx-ours/ours; do
  if want "${r%/*}" && want "${r#*/}"; then ratios+=(--ratio "$r"); fi
done
{
  echo "## connected-registry benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Rounds: $ROUNDS, targets: $TARGETS, workloads: ${WORKLOADS:-W1 W2 W3 W4 W5 W6}; host $(uname -n), $(nproc) CPUs."
  echo "Cells: round 1 / 2 / ... (spread). Compare the ratios within a round, not absolute numbers."
  echo
  python3 "$BENCH_DIR/compare.py" "${ratios[@]}" "${files[@]}"
  echo
  python3 "$ROOT/bench/goals.py" "$BENCH_OUT"
} | tee "$BENCH_OUT/table.md"
log "raw results, logs and table.md in $BENCH_OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  log "FAILED runs: ${FAILED[*]}"
  exit 1
fi
