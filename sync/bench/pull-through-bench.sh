#!/usr/bin/env bash
# pull-through-bench.sh — pull-through (serve --on-demand) under load, on loopback:
#   CLIENTS concurrent pulls of one image of SIZE (LAYERS layers) through a child with an empty
#   store (cold: everything comes from the parent on demand), then the same pulls again from
#   the same child, which now holds the image (warm). Each client GETs the manifest and every
#   blob with curl and checks each blob's sha256 (then drops the bytes).
#   Reports both times, their ratio (goal: cold within 1.3x of warm), and the bytes the parent
#   sent during each run (goal: 1.0x the image size for the cold run, 0 for the warm one),
#   read from the parent's access log (`out=`).
# Usage: sync/bench/pull-through-bench.sh [path/to/connected-registry]  (default target/release/...)
# Env: CLIENTS=50 SIZE_MIB=256 LAYERS=4.
# Prints "NAME VALUE UNIT" lines. Everything it starts it stops (by PID); scratch in a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/connected-registry}"
if [ ! -x "$BIN" ]; then
  echo "pull-through-bench.sh: no binary at $BIN; build it (cargo build --release) or pass its path" >&2
  exit 2
fi
CLIENTS="${CLIENTS:-50}"
SIZE_MIB="${SIZE_MIB:-256}"
LAYERS="${LAYERS:-4}"
WORK="$(mktemp -d -t pull-through-bench.XXXXXX)"
. "$ROOT/sync/bench/lib.sh"


# The parent logs every request with the bytes it sent (`out=`).
OURS_LOG="warn,access=info" start_ours "$WORK/parent"; parent="127.0.0.1:$PORT"

# Seed: a config and LAYERS random layers, pushed with curl (monolithic uploads).
push_blob() { # FILE -> digest
  local file="$1" digest location
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  location="$(curl -sf -X POST -D - -o /dev/null "http://$parent/v2/bench/app/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')"
  case "$location" in http*) ;; *) location="http://$parent$location" ;; esac
  curl -sf -X PUT -H 'content-type: application/octet-stream' --data-binary "@$file" \
    "$location$([[ "$location" == *\?* ]] && echo '&' || echo '?')digest=$digest" >/dev/null
  echo "$digest"
}
layer_mib=$((SIZE_MIB / LAYERS))
echo '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$WORK/config.json"
config_digest="$(push_blob "$WORK/config.json")"
config_size="$(stat -c %s "$WORK/config.json")"
layers_json=""
image_bytes="$config_size"
for ((i = 0; i < LAYERS; i++)); do
  head -c "$((layer_mib << 20))" /dev/urandom >"$WORK/layer$i"
  d="$(push_blob "$WORK/layer$i")"
  layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$d\",\"size\":$((layer_mib << 20))}"
  image_bytes=$((image_bytes + (layer_mib << 20)))
  rm -f "$WORK/layer$i"
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
  "$config_digest" "$config_size" "$layers_json" >"$WORK/manifest.json"
curl -sf -X PUT -H 'content-type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary "@$WORK/manifest.json" "http://$parent/v2/bench/app/manifests/v1" >/dev/null
image_bytes=$((image_bytes + $(stat -c %s "$WORK/manifest.json")))
echo "image.bytes $image_bytes B"
echo "clients $CLIENTS -"

# The child: syncs nothing by itself (its scope matches nothing at the parent), pulls bench/*
# through on demand.
start_ours "$WORK/child" --parent "http://$parent" --repo none/nothing --on-demand 'bench/*' \
  --sync-poll-interval P1D; child="127.0.0.1:$PORT"

pull() { # one client: the manifest, then every blob, each checked against its digest
  local base="http://$child/v2/bench/app" manifest d got
  manifest="$(curl -sf -H 'accept: application/vnd.oci.image.manifest.v1+json' "$base/manifests/v1")" || return 1
  for d in $(grep -o 'sha256:[0-9a-f]\{64\}' <<<"$manifest"); do
    got="sha256:$(curl -sf "$base/blobs/$d" | sha256sum | cut -d' ' -f1)"
    [ "$got" = "$d" ] || { echo "client: blob $d came as $got" >&2; return 1; }
  done
}

parent_bytes() { awk '{for(i=1;i<=NF;i++) if($i ~ /^out=/){sub(/^out=/,"",$i); s+=$i}} END{printf "%d", s}' "$WORK/parent/log"; }

run() { # NAME: CLIENTS concurrent pulls; prints time and the parent's bytes meanwhile
  local name="$1" before t0 pids=() failed=0
  before="$(parent_bytes)"
  t0="$(now)"
  for ((c = 0; c < CLIENTS; c++)); do pull & pids+=("$!"); done
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  local took; took="$(since "$t0")"
  sleep 0.5 # the parent logs a request once its answer is sent
  echo "$name.time $took s"
  echo "$name.failed_clients $failed -"
  local sent=$(( $(parent_bytes) - before ))
  echo "$name.parent_bytes $sent B"
  awk -v s="$sent" -v i="$image_bytes" 'BEGIN{printf "'"$name"'.parent_traffic %.3f x_image\n", s/i}'
  eval "${name}_time=$took"
}

run cold
run warm
awk -v c="$cold_time" -v w="$warm_time" 'BEGIN{printf "cold_over_warm %.2f x\n", c/w}'
