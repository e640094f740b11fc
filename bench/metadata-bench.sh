#!/usr/bin/env bash
# metadata-bench.sh — what keeping the metadata in PostgreSQL costs (`serve --metadata
# postgres://...`) against redb in the data directory, in one sitting on loopback, interleaved
# round by round:
#   GET:   manifest GET by tag with wrk (the shared harness's wrk-report.lua), CONNS connections
#          for DURATION seconds (throughput), then 1 connection (the cost of one request);
#   PUSH:  `skopeo copy` of a small image (PUSH_LAYERS layers of PUSH_SIZE) into a new repository.
# PostgreSQL is started by the script (Debian's postgresql: initdb in the scratch directory, run
# as the `postgres` user under root, default durability: fsync on), on a free loopback port.
# Usage: bench/metadata-bench.sh [path/to/connected-registry]   (default target/release/...)
# Env: ROUNDS=3 DURATION=10 CONNS=64 PUSH_LAYERS=2 PUSH_SIZE=1M PUSH_RUNS=3; PG_SERVE_ARGS: more
# `serve` flags for the PostgreSQL target (e.g. "--metadata-connections 8").
# Needs wrk, skopeo, curl, python3, postgresql, and ../shared/bench (make-image.py,
# wrk-report.lua). Prints one "ROUND TARGET NAME VALUE UNIT" line per figure, then the medians
# and the per-request cost. Everything it starts it stops (by PID); scratch in a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/target/release/connected-registry}"
SHARED="$ROOT/../shared/bench"
if [ ! -x "$BIN" ]; then
  echo "metadata-bench.sh: no binary at $BIN; build it (cargo build --release) or pass its path" >&2
  exit 2
fi
[ -f "$SHARED/make-image.py" ] || { echo "metadata-bench.sh: no shared harness at $SHARED" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
PUSH_LAYERS="${PUSH_LAYERS:-2}"
PUSH_SIZE="${PUSH_SIZE:-1M}"
PUSH_RUNS="${PUSH_RUNS:-3}"
WORK="$(mktemp -d -t metadata-bench.XXXXXX)"
. "$ROOT/sync/bench/lib.sh"
# start_postgres (PG_URL: PostgreSQL durable as in production, only the network is loopback)
. "$ROOT/bench/lib-services.sh"
chmod 755 "$WORK"
start_postgres

start_ours "$WORK/redb"; REDB_PORT="$PORT"
# shellcheck disable=SC2086 # PG_SERVE_ARGS is a list of flags
start_ours "$WORK/postgres" --metadata "$PG_URL" ${PG_SERVE_ARGS:-}; PG_REG_PORT="$PORT"
port_of() { case "$1" in redb) echo "$REDB_PORT" ;; postgres) echo "$PG_REG_PORT" ;; esac; }

# The fixture: one small image, tag v1, in each.
python3 "$SHARED/make-image.py" image "$WORK/fixture" --tag v1 --seed fixture 64K 64K >/dev/null
for target in redb postgres; do
  skopeo copy -q --dest-tls-verify=false "oci:$WORK/fixture:v1" \
    "docker://127.0.0.1:$(port_of "$target")/bench/app:v1" >/dev/null
done
ACCEPT="application/vnd.oci.image.manifest.v1+json"

figure() { echo "$1 $2 $3 $4 $5" | tee -a "$WORK/figures"; }
wrk_get() { # ROUND TARGET CONNS LABEL
  local url="http://127.0.0.1:$(port_of "$2")/v2/bench/app/manifests/v1"
  local threads=2; [ "$3" -lt 2 ] && threads=1
  BENCH_ACCEPT="$ACCEPT" timeout $((DURATION + 60)) wrk -t"$threads" -c"$3" -d"${DURATION}s" --timeout 5s \
    -s "$SHARED/wrk-report.lua" "$url" >"$WORK/wrk.out" 2>&1 || { cat "$WORK/wrk.out" >&2; exit 1; }
  w() { awk -v k="wrk.$1" '$1==k{print $2}' "$WORK/wrk.out"; }
  [ "$(w non2xx3xx)" = 0 ] || { cat "$WORK/wrk.out" >&2; echo "non-2xx answers" >&2; exit 1; }
  figure "$1" "$2" "$4.rps" "$(w rps)" req/s
  figure "$1" "$2" "$4.p50" "$(w p50)" ms
  figure "$1" "$2" "$4.p99" "$(w p99)" ms
}
push() { # ROUND TARGET
  local times="$WORK/push.times" sizes=()
  for ((i = 0; i < PUSH_LAYERS; i++)); do sizes+=("$PUSH_SIZE"); done
  : >"$times"
  for ((k = 1; k <= PUSH_RUNS; k++)); do
    local img="$WORK/push-$1-$2-$k"
    python3 "$SHARED/make-image.py" image "$img" --tag v1 --seed "$img" "${sizes[@]}" >/dev/null
    local t0; t0="$(now)"
    timeout 120 skopeo copy -q --dest-tls-verify=false "oci:$img:v1" \
      "docker://127.0.0.1:$(port_of "$2")/bench/push-$1-$k:v1" >/dev/null
    since "$t0" >>"$times"; echo >>"$times"
    rm -rf "$img"
  done
  figure "$1" "$2" push.median "$(sort -g "$times" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')" s
}

for ((round = 1; round <= ROUNDS; round++)); do
  # Alternate which target goes first, so drift in the machine's load is shared.
  order=(redb postgres); ((round % 2 == 0)) && order=(postgres redb)
  for target in "${order[@]}"; do
    wrk_get "$round" "$target" "$CONNS" "get_c$CONNS"
    wrk_get "$round" "$target" 1 get_c1
    push "$round" "$target"
  done
done

echo
echo "medians over $ROUNDS rounds (manifest GET by tag: wrk -c$CONNS and -c1, ${DURATION}s each):"
python3 - "$WORK/figures" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
fig = {}
for r, target, name, value, unit in rows:
    fig.setdefault((target, name, unit), []).append(float(value))
med = {k[:2]: (statistics.median(v), k[2]) for k, v in fig.items()}
names = sorted({k[1] for k in med})
print(f"{'figure':<16}{'redb':>12}{'postgres':>12}  unit  postgres/redb")
for n in names:
    a, unit = med[("redb", n)]
    b, _ = med[("postgres", n)]
    print(f"{n:<16}{a:>12.3f}{b:>12.3f}  {unit:<5} {b / a if a else float('nan'):.2f}")
c1 = [k for k in names if k.startswith("get_c1.p50")]
if c1:
    a, b = med[("redb", c1[0])][0], med[("postgres", c1[0])][0]
    print(f"cost PostgreSQL adds to one manifest GET (p50 at one connection): {b - a:.3f} ms")
PY
