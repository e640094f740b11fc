# lib-services.sh — the shared services of issue 17's benchmarks, started on 127.0.0.1 in the
# scratch directory and stopped at exit: PostgreSQL (Debian's, durable as in production: fsync
# on) and Azurite (the Azure Blob Storage emulator `test.sh` installs; AZURITE_BLOB names
# another). Sourced after sync/bench/lib.sh (WORK, PIDS, free_port); the starters run in the
# calling shell, not in $(...), so the PIDs they record are the ones the exit trap stops.
AZURITE_BLOB="${AZURITE_BLOB:-$HOME/.cache/connected-registry-azurite/node_modules/.bin/azurite-blob}"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() { # -> PG_URL (user registry, database postgres), PG_PID (the postmaster)
  local bin dir="$WORK/pg" port
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -x "$bin/postgres" ] || { echo "$(basename "$0"): install postgresql (apt-get install postgresql)" >&2; exit 2; }
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  echo bench-secret >"$dir/pw"
  as_pg "$bin/initdb" -D "$dir/data" -U registry -E UTF8 --auth-local=trust \
    --auth-host=scram-sha-256 --pwfile="$dir/pw" >/dev/null
  port="$(free_port)"
  as_pg "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
    >"$dir/log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 200); do "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.05; done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" || { echo "$(basename "$0"): PostgreSQL did not start (log $dir/log)" >&2; exit 1; }
  PG_PID="$(head -1 "$dir/data/postmaster.pid")"
  PG_URL="postgres://registry:bench-secret@127.0.0.1:$port/postgres"
}

start_azurite() { # -> AZ_PID; exports AZURE_STORAGE_CONNECTION_STRING (Azurite's well-known key)
  local port key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
  [ -x "$AZURITE_BLOB" ] || { echo "$(basename "$0"): no Azurite at $AZURITE_BLOB: ./test.sh installs it" >&2; exit 2; }
  port="$(free_port)"; mkdir -p "$WORK/azurite"
  "$AZURITE_BLOB" --loose --skipApiVersionCheck --silent --disableTelemetry --location "$WORK/azurite" \
    --blobHost 127.0.0.1 --blobPort "$port" >"$WORK/azurite.log" 2>&1 &
  AZ_PID=$!; PIDS+=("$AZ_PID")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$(basename "$0"): Azurite did not start (log $WORK/azurite.log)" >&2; exit 1; }
  export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$key;BlobEndpoint=http://127.0.0.1:$port/devstoreaccount1;"
}
