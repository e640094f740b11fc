# lib.sh — what the sync benchmarks share: scratch and cleanup, timing, free ports, and starting
# CNCF distribution or ours (`$BIN`, `--auth none`, log filter `$OURS_LOG`) on loopback. Sourced
# after the script sets WORK (its scratch directory) and BIN.
# Every process a starter records in PIDS is stopped at exit; the starters run in the calling
# shell (not in $(...)), so the PIDs they record are the ones the exit trap stops; each sets PORT.
PIDS=()
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() { for p in "${PIDS[@]}"; do stop_pid "$p"; done; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { # PORT: until /v2/ answers 200 there, at most 10 s
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.05; done
  echo "$(basename "$0"): nothing answers on 127.0.0.1:$1 after 10 s" >&2
  return 1
}
start_ours() { # DIR [serve flags...] -> PORT: $BIN serve, data in DIR/data, log DIR/log
  local dir="$1" port; shift; port="$(free_port)"; mkdir -p "$dir"
  RUST_LOG="${OURS_LOG:-warn}" "$BIN" serve --auth none --listen "127.0.0.1:$port" --data "$dir/data" "$@" >"$dir/log" 2>&1 &
  PIDS+=("$!")
  wait_up "$port"
  PORT="$port"
}
start_dist() { # DIR -> PORT
  local dir="$1" port; port="$(free_port)"; mkdir -p "$dir/storage"
  sed -e "s|@ROOT@|$dir/storage|" -e "s|@PORT@|$port|" >"$dir/config.yml" <<'YML'
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: @ROOT@
http:
  addr: 127.0.0.1:@PORT@
YML
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  PIDS+=("$!")
  wait_up "$port"
  PORT="$port"
}
