# lib-services.sh — what the benchmarks of issue 17's shared services share: the services, started
# on 127.0.0.1 in the scratch directory and stopped at exit: PostgreSQL (Debian's, durable as in
# production: fsync on) and Azurite (the Azure Blob Storage emulator `test.sh` installs;
# AZURITE_BLOB names another); and the fixture they all serve (a MiB-sized layer and an image
# manifest over it, pushed as bench/app:v1). Sourced after sync/bench/lib.sh (PIDS, free_port)
# and after the script sets WORK; the starters run in the calling shell, not in $(...), so the
# PIDs they record are the ones the exit trap stops.
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

make_fixture() { # MIB -> $WORK/{blob,config,manifest}, BLOB_DIGEST, CONFIG_DIGEST
  head -c "$(($1 << 20))" /dev/urandom >"$WORK/blob"
  BLOB_DIGEST="sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)"
  printf '{"architecture":"amd64","os":"linux"}' >"$WORK/config"
  CONFIG_DIGEST="sha256:$(sha256sum "$WORK/config" | cut -d' ' -f1)"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}' \
    "$CONFIG_DIGEST" "$(stat -c%s "$WORK/config")" "$BLOB_DIGEST" "$(stat -c%s "$WORK/blob")" >"$WORK/manifest"
}

push_blob() { # PORT FILE DIGEST: POST then PUT into bench/app
  local loc sep='?'
  loc="$(curl -sS -D - -o /dev/null -X POST "http://127.0.0.1:$1/v2/bench/app/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')"
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$1$loc" ;; esac
  case "$loc" in *\?*) sep='&' ;; esac
  curl -sS -f -o /dev/null -X PUT -H 'content-type: application/octet-stream' --data-binary "@$2" "$loc${sep}digest=$3"
}

push_manifest() { # PORT: the fixture's manifest as bench/app:v1
  curl -sS -f -o /dev/null -X PUT -H 'content-type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$WORK/manifest" "http://127.0.0.1:$1/v2/bench/app/manifests/v1"
}
