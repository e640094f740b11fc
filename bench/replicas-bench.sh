#!/usr/bin/env bash
# bench/replicas-bench.sh — what the shared services of issue 17 cost and what a second replica
# buys: manifest GET and a BLOB_MIB MiB blob GET, all through our TLS proxy, in one sitting,
# interleaved round by round, against three set-ups that run side by side (only one is loaded
# at a time):
#   local1   one `serve` on the local disk (redb + files), its own proxy
#   shared1  one `serve` replica on PostgreSQL + Azure Blob Storage (Azurite), its own proxy
#   shared2  two replicas on the same PostgreSQL + container, one proxy balancing over both
# Manifest GET: wrk (the shared harness's wrk-report.lua) with CONNS connections for DURATION s
# (throughput), then one connection (the cost of one request: p50 shared1 - p50 local1).
# Blob GET: curl of the whole blob (MB/s), with the CPU seconds each process used meanwhile
# (from /proc/PID/stat: serve, proxy, Azurite, PostgreSQL and its backends), to say whether the
# object store or we limit the rate. The goal of issue 17: shared2 >= 1.5 x shared1 on manifest
# GET. Starts PostgreSQL (Debian's, fsync on) and Azurite (`test.sh` installs it) itself
# (bench/lib-services.sh); everything on 127.0.0.1; stops what it started by PID; scratch in a
# temp dir.
# Usage: bench/replicas-bench.sh [path/to/connected-registry]   (default target/release/...)
# Env: ROUNDS=3 DURATION=10 CONNS=64 BLOB_MIB=512; SERVE_ARGS: more `serve` flags for every
# replica (e.g. "--manifest-cache-size 0"). Needs wrk, curl, openssl, python3, postgresql, and
# ../shared/bench (wrk-report.lua, gen-certs.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/target/release/connected-registry}"
SHARED="$ROOT/../shared/bench"
[ -x "$BIN" ] || { echo "replicas-bench.sh: no binary at $BIN; build it (cargo build --release) or pass its path" >&2; exit 2; }
[ -f "$SHARED/wrk-report.lua" ] || { echo "replicas-bench.sh: no shared harness at $SHARED" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
BLOB_MIB="${BLOB_MIB:-512}"
command -v wrk >/dev/null || { echo "replicas-bench.sh: wrk is needed (apt-get install wrk)" >&2; exit 2; }
WORK="$(mktemp -d -t replicas-bench.XXXXXX)"
# PIDS, stop_pid, cleanup, now, since, free_port, wait_up, start_ours
. "$ROOT/sync/bench/lib.sh"
# start_postgres (PG_URL, PG_PID), start_azurite (AZ_PID, AZURE_STORAGE_CONNECTION_STRING),
# make_fixture, push_blob, push_manifest
. "$ROOT/bench/lib-services.sh"
chmod 755 "$WORK"
CLK="$(getconf CLK_TCK)"
# CPU seconds (user + system) PIDs have used so far, with their reaped children's.
cpu() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; awk -v t="$t" -v c="$CLK" 'BEGIN{printf "%.2f", t / c}'; }
# PID and its children (PostgreSQL's postmaster and its backends).
family() { local p="$1"; echo "$p"; awk -v p="$p" '$4 == p {print $1}' /proc/[0-9]*/stat 2>/dev/null || true; }

start_postgres
start_azurite

# The registries, each with --access-log false (the anchors log nothing either).
declare -A SERVE_PID PROXY_PORT PROXY_PID
# shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
start_ours "$WORK/local" --access-log false --gc-interval 0s ${SERVE_ARGS:-}
LOCAL_PORT="$PORT"; SERVE_PID[local1]="${PIDS[-1]}"
SHARED_FLAGS=(--metadata "$PG_URL" --storage azblob://bench --access-log false --gc-interval 0s)
# shellcheck disable=SC2086
start_ours "$WORK/r1" "${SHARED_FLAGS[@]}" ${SERVE_ARGS:-}; R1_PORT="$PORT"; R1_PID="${PIDS[-1]}"
# shellcheck disable=SC2086
start_ours "$WORK/r2" "${SHARED_FLAGS[@]}" ${SERVE_ARGS:-}; R2_PORT="$PORT"; R2_PID="${PIDS[-1]}"
SERVE_PID[shared1]="$R1_PID"; SERVE_PID[shared2]="$R1_PID $R2_PID"

"$SHARED/gen-certs.sh" "$WORK/tls" >/dev/null
start_proxy() { # NAME UPSTREAMS
  local port; port="$(free_port)"
  RUST_LOG=warn "$BIN" proxy --listen "127.0.0.1:$port" --cert "$WORK/tls/server.crt" \
    --key "$WORK/tls/server.key" --route "/v2=$2" >"$WORK/proxy-$1.log" 2>&1 &
  PROXY_PID[$1]=$!; PIDS+=("$!"); PROXY_PORT[$1]="$port"
  for _ in $(seq 100); do curl -fsS -o /dev/null --cacert "$WORK/tls/ca.crt" "https://127.0.0.1:$port/v2/" && return 0; sleep 0.1; done
  echo "replicas-bench.sh: proxy $1 did not start (log $WORK/proxy-$1.log)" >&2; exit 1
}
start_proxy local1 "http://127.0.0.1:$LOCAL_PORT"
start_proxy shared1 "http://127.0.0.1:$R1_PORT"
start_proxy shared2 "http://127.0.0.1:$R1_PORT,http://127.0.0.1:$R2_PORT"

# The fixture: a BLOB_MIB MiB layer and an image manifest over it, pushed to the local replica
# and (once, through r1) to the shared services.
make_fixture "$BLOB_MIB"
for port in "$LOCAL_PORT" "$R1_PORT"; do
  push_blob "$port" "$WORK/blob" "$BLOB_DIGEST"
  push_blob "$port" "$WORK/config" "$CONFIG_DIGEST"
  push_manifest "$port"
done
rm -f "$WORK/blob"
ACCEPT="application/vnd.oci.image.manifest.v1+json"

figure() { echo "$1 $2 $3 $4 $5" | tee -a "$WORK/figures"; }
wrk_get() { # ROUND TARGET CONNS LABEL
  local url="https://127.0.0.1:${PROXY_PORT[$2]}/v2/bench/app/manifests/v1" threads=2
  [ "$3" -lt 2 ] && threads=1
  BENCH_ACCEPT="$ACCEPT" timeout $((DURATION + 60)) wrk -t"$threads" -c"$3" -d"${DURATION}s" --timeout 5s \
    -s "$SHARED/wrk-report.lua" "$url" >"$WORK/wrk.out" 2>&1 || { cat "$WORK/wrk.out" >&2; exit 1; }
  w() { awk -v k="wrk.$1" '$1==k{print $2}' "$WORK/wrk.out"; }
  [ "$(w non2xx3xx)" = 0 ] || { cat "$WORK/wrk.out" >&2; echo "non-2xx answers from $2" >&2; exit 1; }
  figure "$1" "$2" "$4.rps" "$(w rps)" req/s
  figure "$1" "$2" "$4.p50" "$(w p50)" ms
}
blob_get() { # ROUND TARGET
  # shellcheck disable=SC2086 # a list of PIDs
  local serve="${SERVE_PID[$2]}" pg; pg="$(family "$PG_PID" | tr '\n' ' ')"
  local s0 p0 a0 g0 t0 speed
  s0="$(cpu $serve)"; p0="$(cpu "${PROXY_PID[$2]}")"; a0="$(cpu "$AZ_PID")"; g0="$(cpu $pg)"; t0="$(now)"
  speed="$(curl -sS -f --max-time 600 --cacert "$WORK/tls/ca.crt" -o /dev/null -w '%{speed_download}' \
    "https://127.0.0.1:${PROXY_PORT[$2]}/v2/bench/app/blobs/$BLOB_DIGEST")"
  local wall; wall="$(since "$t0")"
  figure "$1" "$2" blob.MBps "$(awk -v s="$speed" 'BEGIN{printf "%.1f", s / 1e6}')" MB/s
  # shellcheck disable=SC2086
  figure "$1" "$2" blob.cpu_serve "$(awk -v a="$s0" -v b="$(cpu $serve)" -v w="$wall" 'BEGIN{printf "%.0f", 100 * (b - a) / w}')" %
  figure "$1" "$2" blob.cpu_proxy "$(awk -v a="$p0" -v b="$(cpu "${PROXY_PID[$2]}")" -v w="$wall" 'BEGIN{printf "%.0f", 100 * (b - a) / w}')" %
  figure "$1" "$2" blob.cpu_azurite "$(awk -v a="$a0" -v b="$(cpu "$AZ_PID")" -v w="$wall" 'BEGIN{printf "%.0f", 100 * (b - a) / w}')" %
  # shellcheck disable=SC2086
  figure "$1" "$2" blob.cpu_postgres "$(awk -v a="$g0" -v b="$(cpu $pg)" -v w="$wall" 'BEGIN{printf "%.0f", 100 * (b - a) / w}')" %
}

echo "# $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg); binary $("$BIN" --version 2>/dev/null || echo '?'); SERVE_ARGS='${SERVE_ARGS:-}'"
for ((round = 1; round <= ROUNDS; round++)); do
  # Rotate which target goes first, so drift in the machine's load is shared.
  order=(local1 shared1 shared2)
  for ((k = 0; k < (round - 1) % 3; k++)); do order=("${order[@]:1}" "${order[0]}"); done
  for target in "${order[@]}"; do
    wrk_get "$round" "$target" "$CONNS" "manifest_c$CONNS"
    wrk_get "$round" "$target" 1 manifest_c1
    blob_get "$round" "$target"
  done
done

echo
echo "medians over $ROUNDS rounds (through the proxy; manifest GET by tag: wrk -c$CONNS and -c1, ${DURATION}s each; blob GET ${BLOB_MIB} MiB; CPU in % of one core during the blob GET):"
python3 - "$WORK/figures" "$CONNS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
conns = sys.argv[2]
fig = {}
for _, target, name, value, unit in rows:
    fig.setdefault((target, name, unit), []).append(float(value))
med = {k[:2]: (statistics.median(v), k[2]) for k, v in fig.items()}
targets = ["local1", "shared1", "shared2"]
names = sorted({k[1] for k in med})
print(f"{'figure':<22}" + "".join(f"{t:>10}" for t in targets) + "  unit")
for n in names:
    unit = med[(targets[0], n)][1]
    print(f"{n:<22}" + "".join(f"{med[(t, n)][0]:>10.2f}" for t in targets) + f"  {unit}")
m = lambda t, n: med[(t, n)][0]
rate = f"manifest_c{conns}.rps"
print(f"manifest GET, two replicas / one on the shared services: {m('shared2', rate) / m('shared1', rate):.2f}x (goal >= 1.5x)")
print(f"manifest GET, one replica on the shared services / on the local disk: {m('shared1', rate) / m('local1', rate):.2f}x")
print(f"cost the shared services add to one manifest GET (p50 at one connection): {m('shared1', 'manifest_c1.p50') - m('local1', 'manifest_c1.p50'):.3f} ms")
print(f"blob GET, shared1 / local1: {m('shared1', 'blob.MBps') / m('local1', 'blob.MBps'):.2f}x")
PY
