#!/usr/bin/env bash
# metadata-cache.sh — manifest GET by tag with the metadata in PostgreSQL, with the per-replica
# cache of resolutions (--metadata-cache-ttl 1s, the default) and without it (0s): one replica
# over plain HTTP, and two replicas behind `connected-registry proxy` (TLS, /v2 balanced over
# both), in one sitting, interleaved.
#
# Starts a throw-away PostgreSQL (Debian's postgresql: initdb + postgres from
# /usr/lib/postgresql/*/bin, as the postgres user under root) on a free loopback port, two
# `serve` replicas on it whose data directories share blobs/ (a link, standing in for the
# shared blob store), seeds one small image (../shared/bench/seed-registry.sh), and runs wrk
# (../shared/bench/wrk-report.lua) against `GET /v2/bench/app/manifests/v1` for each of the
# four cases, ROUNDS times. Prints one line per run, then the medians: req/s, p50, p99.
# Everything listens on 127.0.0.1; every server is stopped by PID at exit.
#
# Knobs (environment): ROUNDS=3 DURATION=10 (s) THREADS=2 CONNS=64
#   BIN (default: cargo build --release, target/release/connected-registry)
#   SHARED_BENCH (default ../shared/bench) BENCH_RUST_LOG=warn
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
[ -x "$SHARED_BENCH/seed-registry.sh" ] || {
  echo "metadata-cache.sh: the shared harness is not at $SHARED_BENCH; set SHARED_BENCH=DIR" >&2
  exit 2
}
BENCH_DIR="$(cd "$SHARED_BENCH" && pwd)"
# shellcheck source=../../shared/bench/lib.sh
. "$BENCH_DIR/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-2}"
CONNS="${CONNS:-64}"
BENCH_RUST_LOG="${BENCH_RUST_LOG:-warn}"
need wrk curl openssl skopeo python3
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$PG_BIN/postgres" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: apt-get install postgresql"

if [ -z "${BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -q) || die "cargo build --release failed"
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/connected-registry"
fi
[ -x "$BIN" ] || die "no binary at $BIN"

WORK="$(mktemp -d /tmp/metadata-cache.XXXXXX)"
chmod 755 "$WORK" # the postgres user reads its directory inside
PIDS=()
PG_PID=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$PG_PID" ]; then kill -INT "$PG_PID" 2>/dev/null || true; wait "$PG_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# PostgreSQL, tuned as the tests' server (no fsync: reads are what is measured).
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$WORK/pg"
printf 'bench-secret' >"$WORK/pg/pw"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$WORK/pg/pw"
as_pg "$PG_BIN/initdb" -D "$WORK/pg/data" -U registry -E UTF8 --no-sync --no-instructions \
  --auth-local=trust --auth-host=scram-sha-256 --pwfile="$WORK/pg/pw" >/dev/null
PG_PORT="$(free_port)"
as_pg "$PG_BIN/postgres" -D "$WORK/pg/data" -p "$PG_PORT" -k "$WORK/pg" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c max_connections=100 >"$WORK/pg/log" 2>&1 &
PG_PID=$!
for _ in $(seq 100); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.1; done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL did not start: $(cat "$WORK/pg/log")"
METADATA="postgres://registry:bench-secret@127.0.0.1:$PG_PORT/postgres"
log "PostgreSQL on :$PG_PORT"

"$BENCH_DIR/gen-certs.sh" "$WORK/tls" >/dev/null
mkdir -p "$WORK/a/blobs" "$WORK/b"
ln -s "$WORK/a/blobs" "$WORK/b/blobs"

SERVE_PIDS=()
start_replicas() { # TTL
  SERVE_PIDS=()
  A_PORT="$(free_port)"
  B_PORT="$(free_port)"
  for r in "a:$A_PORT" "b:$B_PORT"; do
    RUST_LOG="$BENCH_RUST_LOG" "$BIN" serve --listen "127.0.0.1:${r#*:}" --data "$WORK/${r%%:*}" \
      --metadata "$METADATA" --metadata-cache-ttl "$1" --auth none --access-log false \
      --gc-interval 0s >"$WORK/serve-${r%%:*}.log" 2>&1 &
    SERVE_PIDS+=($!)
    PIDS+=($!)
    wait_http "http://127.0.0.1:${r#*:}/v2/" "" 30 || die "serve ${r%%:*} did not start: $(tail -5 "$WORK/serve-${r%%:*}.log")"
  done
  PROXY_PORT="$(free_port)"
  env -u NGINX_DEFAULT_PORT -u CONNECTED_ACR_ROUTE_ADDRESS -u DOCKER_REQUEST_ROUTE_ADDRESS \
    -u BLOB_UPLOAD_ROUTE_ADDRESS -u IOTEDGE_PARENTHOSTNAME RUST_LOG="$BENCH_RUST_LOG" \
    "$BIN" proxy --listen "127.0.0.1:$PROXY_PORT" --cert "$WORK/tls/server.crt" --key "$WORK/tls/server.key" \
    --route "/v2=http://127.0.0.1:$A_PORT,http://127.0.0.1:$B_PORT" >"$WORK/proxy.log" 2>&1 &
  SERVE_PIDS+=($!)
  PIDS+=($!)
  wait_http "https://127.0.0.1:$PROXY_PORT/v2/" "$WORK/tls/ca.crt" 30 || die "the proxy did not start: $(tail -5 "$WORK/proxy.log")"
}
stop_replicas() {
  for pid in "${SERVE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

ACCEPT="application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json"
measure() { # LABEL URL
  local out="$WORK/wrk.out"
  BENCH_ACCEPT="$ACCEPT" timeout $((DURATION + 60)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" \
    --timeout 5s -s "$BENCH_DIR/wrk-report.lua" "$2" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed"; }
  w() { awk -v k="wrk.$1" '$1==k{print $2}' "$out"; }
  local errors=$(($(w non2xx3xx) + $(w socket_errors)))
  printf '%-22s %10s req/s  p50 %8s ms  p99 %8s ms  errors %s\n' "$1" "$(w rps)" "$(w p50)" "$(w p99)" "$errors"
  echo "$1 $(w rps) $(w p50) $(w p99)" >>"$WORK/results"
}

start_replicas 1s
"$BENCH_DIR/seed-registry.sh" "http://127.0.0.1:$A_PORT" bench/app v1 4K 4K >/dev/null || die "seeding failed"
stop_replicas
: >"$WORK/results"
for round in $(seq "$ROUNDS"); do
  for ttl in 1s 0s; do
    start_replicas "$ttl"
    case "$ttl" in 0s) cache=off ;; *) cache="on($ttl)" ;; esac
    log "round $round: cache $cache"
    measure "one-replica,cache-$cache" "http://127.0.0.1:$A_PORT/v2/bench/app/manifests/v1"
    measure "two-proxied,cache-$cache" "https://127.0.0.1:$PROXY_PORT/v2/bench/app/manifests/v1"
    stop_replicas
  done
done
echo
echo "medians over $ROUNDS rounds ($THREADS threads, $CONNS connections, ${DURATION}s each; $(nproc) cores):"
python3 - "$WORK/results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rps, p50, p99 = line.split()
    rows.setdefault(label, []).append((float(rps), float(p50), float(p99)))
for label, runs in rows.items():
    med = [statistics.median(r[i] for r in runs) for i in range(3)]
    print(f"{label:22} {med[0]:10.0f} req/s  p50 {med[1]:7.2f} ms  p99 {med[2]:7.2f} ms")
EOF
