# lib-services.sh — what the benchmarks of issue 17's shared services share: Azurite started on a
# free loopback port, and the fixture they all serve (a BLOB_MIB MiB layer and an image manifest
# over it, pushed as bench/app:v1). Sourced after sync/bench/lib.sh (PIDS, free_port) and after
# the script sets WORK.

# The published key of Azurite's development account (not a secret).
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

start_azurite() { # -> AZ_PORT, AZ_PID, AZURE_STORAGE_CONNECTION_STRING exported; needs AZURITE_BLOB
  AZ_PORT="$(free_port)"; mkdir -p "$WORK/azurite"
  "$AZURITE_BLOB" --loose --skipApiVersionCheck --silent --disableTelemetry --location "$WORK/azurite" \
    --blobHost 127.0.0.1 --blobPort "$AZ_PORT" >"$WORK/azurite.log" 2>&1 &
  AZ_PID=$!; PIDS+=("$AZ_PID")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$AZ_PORT") 2>/dev/null && break; sleep 0.1; done
  export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$AZURITE_KEY;BlobEndpoint=http://127.0.0.1:$AZ_PORT/devstoreaccount1;"
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
