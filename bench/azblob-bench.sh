#!/usr/bin/env bash
# bench/azblob-bench.sh — blob and manifest GET from `serve` with blobs in Azure Blob Storage
# (Azurite on this machine) against `serve` on the local disk, in one sitting, interleaved.
#
# Starts Azurite (`test.sh` installs it; AZURITE_BLOB names another), one `serve` on the local
# disk and one with --storage azblob://bench, each with a fresh data directory; pushes a blob of
# BLOB_MIB MiB (default 512) and an image manifest referencing it into both; then for ROUNDS
# rounds (default 3): GET the blob whole with curl (MB/s), and GET the manifest with wrk
# (-t2 -c16, MAN_SECONDS s; cached, and from a third `serve` on the container with
# --manifest-cache-size 0, which reads every manifest from the store). For each run it reads
# the CPU time of `serve` and of Azurite (a Node.js process on the same cores) from /proc, so
# the table says whether we or the store are the limit. Everything on 127.0.0.1; stops what it
# started by PID.
#
# Usage: BIN=target/dist/connected-registry bench/azblob-bench.sh
#   BIN       the binary (default: target/release/connected-registry, built if missing)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/connected-registry}"
BLOB_MIB="${BLOB_MIB:-512}"
ROUNDS="${ROUNDS:-3}"
MAN_SECONDS="${MAN_SECONDS:-10}"

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
if [ ! -x "$BIN" ]; then (cd "$ROOT" && cargo build --release --locked); fi

WORK="$(mktemp -d)"
# PIDS, cleanup (at exit), free_port, start_ours
. "$ROOT/sync/bench/lib.sh"
# start_azurite, make_fixture, push_blob, push_manifest
. "$ROOT/bench/lib-services.sh"
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }

start_azurite
declare -A PORTS SERVE_PID
start() { # name, extra args...
  local name=$1; shift
  start_ours "$WORK/$name" --access-log false --gc-interval 0s "$@"
  PORTS[$name]="$PORT"; SERVE_PID[$name]="${PIDS[-1]}"
}
start local
start azblob --storage azblob://bench
start azblob-nocache --storage azblob://bench --manifest-cache-size 0

make_fixture "$BLOB_MIB"
for name in local azblob; do
  t0=$(date +%s.%N)
  push_blob "${PORTS[$name]}" "$WORK/blob" "$BLOB_DIGEST"
  t1=$(date +%s.%N)
  push_blob "${PORTS[$name]}" "$WORK/config" "$CONFIG_DIGEST"
  push_manifest "${PORTS[$name]}"
  echo "push $name: ${BLOB_MIB} MiB in $(echo "$t1 - $t0" | bc) s"
done
# The no-cache replica shares the container; its own metadata needs the image linked.
curl -sS -f -o /dev/null -X POST "http://127.0.0.1:${PORTS[azblob-nocache]}/v2/bench/app/blobs/uploads/?mount=$BLOB_DIGEST"
curl -sS -f -o /dev/null -X POST "http://127.0.0.1:${PORTS[azblob-nocache]}/v2/bench/app/blobs/uploads/?mount=$CONFIG_DIGEST"
push_manifest "${PORTS[azblob-nocache]}"

printf '\n| round | target | what | result | serve CPU s | Azurite CPU s | wall s |\n| --- | --- | --- | --- | --- | --- | --- |\n'
for round in $(seq 1 "$ROUNDS"); do
  for name in local azblob; do
    s0=$(cpu "${SERVE_PID[$name]}"); a0=$(cpu "$AZ_PID"); t0=$(date +%s.%N)
    speed=$(curl -sS -f -o /dev/null -w '%{speed_download}' "http://127.0.0.1:${PORTS[$name]}/v2/bench/app/blobs/$BLOB_DIGEST")
    t1=$(date +%s.%N); s1=$(cpu "${SERVE_PID[$name]}"); a1=$(cpu "$AZ_PID")
    printf '| %s | %s | blob GET %s MiB | %.0f MB/s | %.2f | %.2f | %.2f |\n' "$round" "$name" "$BLOB_MIB" \
      "$(echo "$speed / 1000000" | bc -l)" "$(echo "$s1 - $s0" | bc)" "$(echo "$a1 - $a0" | bc)" "$(echo "$t1 - $t0" | bc)"
  done
  for name in local azblob azblob-nocache; do
    s0=$(cpu "${SERVE_PID[$name]}"); a0=$(cpu "$AZ_PID"); t0=$(date +%s.%N)
    rate=$(wrk -t2 -c16 -d"${MAN_SECONDS}s" --timeout 5s \
      -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://127.0.0.1:${PORTS[$name]}/v2/bench/app/manifests/v1" | awk '/Requests\/sec/{print $2}')
    t1=$(date +%s.%N); s1=$(cpu "${SERVE_PID[$name]}"); a1=$(cpu "$AZ_PID")
    printf '| %s | %s | manifest GET (wrk -t2 -c16) | %s req/s | %.2f | %.2f | %.2f |\n' "$round" "$name" "$rate" \
      "$(echo "$s1 - $s0" | bc)" "$(echo "$a1 - $a0" | bc)" "$(echo "$t1 - $t0" | bc)"
  done
done
