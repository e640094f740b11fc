#!/usr/bin/env bash
# cap-bench.sh — issue 15's cap accuracy: the rate `sync --once --bandwidth-limit R` pulls one
# blob at, measured by a TCP relay between the child and its parent that counts the bytes it
# forwards down in 100 ms buckets, at each rate in RATES (MiB/s). Each blob is sized for about
# CAP_SECONDS of transfer at its cap. Reports per rate the whole transfer's rate / cap and the
# highest and lowest rate over any 10 s of it / cap (the goal: within 5% over any 10 s).
# Plain HTTP, `--auth none`, loopback only.
#
#   sync/bench/cap-bench.sh [BINARY]        RATES="1 10 100" CAP_SECONDS=14 PARENT=ours|distribution
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/connected-registry}"
BENCH="${BENCH:-$ROOT/../shared/bench}"
RATES="${RATES:-1 10 100}"
SECONDS_PER_RATE="${CAP_SECONDS:-14}"
PARENT="${PARENT:-ours}"
WORK="$(mktemp -d -t cap-bench.XXXXXX)"
. "$ROOT/sync/bench/lib.sh"


# A relay on RELAY_PORT to 127.0.0.1:$1 that appends "bucket bytes" lines (bucket = 100 ms since
# its start) of what it forwards down to $2 when it is stopped.
start_relay() { # UPSTREAM_PORT LOG -> RELAY_PORT
  local port; port="$(free_port)"
  python3 - "$port" "$1" "$2" <<'PY' &
import signal, socket, sys, threading, time
listen, upstream, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
start, buckets, lock = time.monotonic(), {}, threading.Lock()
def pump(src, dst, count):
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
            if count:
                b = int((time.monotonic() - start) * 10)
                with lock:
                    buckets[b] = buckets.get(b, 0) + len(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def stop(*_):
    with open(log, "w") as f:
        for b in sorted(buckets):
            f.write(f"{b} {buckets[b]}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
server = socket.create_server(("127.0.0.1", listen))
while True:
    client, _ = server.accept()
    parent = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pump, args=(parent, client, True), daemon=True).start()
    threading.Thread(target=pump, args=(client, parent, False), daemon=True).start()
PY
  RELAY_PID="$!"
  for _ in $(seq 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1]))).close()' "$port" 2>/dev/null && break
    sleep 0.05
  done
  RELAY_PORT="$port"
}

case "$PARENT" in
  distribution) start_dist "$WORK/parent"; parent_port="$PORT" ;;
  ours) start_ours "$WORK/parent"; parent_port="$PORT" ;;
  *) echo "PARENT must be ours or distribution, not $PARENT" >&2; exit 2 ;;
esac
echo "parent.kind $PARENT -"

for rate in $RATES; do
  size="$((rate * SECONDS_PER_RATE))M"
  echo "# ${rate} MiB/s: pushing a $size blob to the parent" >&2
  BENCH_CACHE="$WORK/cache" "$BENCH/seed-registry.sh" --seed "$rate" "http://127.0.0.1:$parent_port" "cap/r$rate" v1 "$size" >/dev/null 2>"$WORK/seed-$rate.log"
  start_relay "$parent_port" "$WORK/relay-$rate.log"
  t0="$(now)"
  "$BIN" sync --once --quiet --json --data "$WORK/child-$rate" --parent "http://127.0.0.1:$RELAY_PORT" \
    --repo "cap/r$rate" --bandwidth-limit "${rate}MiB/s" >"$WORK/sync-$rate.json" 2>"$WORK/sync-$rate.log"
  echo "cap.r${rate}.sync_time $(since "$t0") s"
  stop_pid "$RELAY_PID"
  python3 - "$WORK/relay-$rate.log" "$rate" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
rate, cap = sys.argv[2], int(sys.argv[2]) << 20
# The transfer: from the first bucket of the blob's bytes (the first that moved over 64 KiB)
# to the last bucket with any bytes.
big = [b for b, n in rows if n > 65536]
first, last = big[0], rows[-1][0]
series = dict(rows)
total = sum(series.get(b, 0) for b in range(first, last + 1))
seconds = (last + 1 - first) / 10
print(f"cap.r{rate}.bytes {total} bytes")
print(f"cap.r{rate}.rate_vs_cap {total / seconds / cap:.3f} x")
windows = [sum(series.get(b, 0) for b in range(s, s + 100)) / 10 / cap
           for s in range(first, last + 1 - 100 + 1)]
if windows:
    print(f"cap.r{rate}.max_10s_vs_cap {max(windows):.3f} x")
    print(f"cap.r{rate}.min_10s_vs_cap {min(windows):.3f} x")
else:
    print(f"cap.r{rate}.max_10s_vs_cap n/a (transfer under 10 s)")
PY
done
