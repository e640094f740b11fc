#!/usr/bin/env bash
# bundle-bench.sh — offline bundles (issue 15) against skopeo, in one sitting on loopback:
#   COPY:  REPOS repositories holding SIZE_MB MiB of images in all (one image each, two
#          layers): `bundle export` of them to one file then `bundle import` of it into an
#          empty registry, against `skopeo copy` of the same images into an OCI layout then
#          back into an empty registry (both registries running: the bundle commands go
#          through the admin socket, skopeo through /v2);
#   DELTA: one new tag sharing the old layers plus one new DELTA_MB MiB layer: the size of
#          `bundle export --since-state` (the site's `bundle state`) against the changed bytes.
# Usage: bench/bundle-bench.sh [path/to/connected-registry]   (default target/release/...)
# Env: SIZE_MB=1024 REPOS=20 DELTA_MB=16. Needs skopeo, curl, python3.
# Prints "NAME VALUE UNIT" lines. Everything it starts it stops (by PID); scratch in a temp dir
# (TMPDIR picks where: it needs about 6 x SIZE_MB of disk).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/target/release/connected-registry}"
if [ ! -x "$BIN" ]; then
  echo "bundle-bench.sh: no binary at $BIN; build it (cargo build --release) or pass its path" >&2
  exit 2
fi
SIZE_MB="${SIZE_MB:-1024}"
REPOS="${REPOS:-20}"
DELTA_MB="${DELTA_MB:-16}"
WORK="$(mktemp -d -t bundle-bench.XXXXXX)"
. "$ROOT/sync/bench/lib.sh"

start_ours() { # NAME -> PORT (data in $WORK/NAME)
  local dir="$WORK/$1" port; port="$(free_port)"; mkdir -p "$dir"
  RUST_LOG=warn "$BIN" serve --auth none --listen "127.0.0.1:$port" --data "$dir" >"$WORK/$1.log" 2>&1 &
  PIDS+=("$!")
  wait_up "$port"
  PORT="$port"
}

# The fixture: an OCI layout with one image per repository (tag rI) and the delta image (tag
# delta: r0's layers plus a new one); prints the delta's changed bytes.
CHANGED="$(python3 - "$WORK/fixture" "$SIZE_MB" "$REPOS" "$DELTA_MB" <<'PY'
import hashlib, json, os, sys
out, size_mb, repos, delta_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{d}", "wb") as f: f.write(data)
    return {"digest": f"sha256:{d}", "size": len(data)}
def image(name, layers):
    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"name": name}},
                              "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode())
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": config, "layers": layers}).encode()
    m = blob(body); m["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    m["annotations"] = {"org.opencontainers.image.ref.name": name}
    return m, config["size"] + len(body)
layer_size = size_mb * 2**20 // (repos * 2)
index, first = [], None
for i in range(repos):
    layers = []
    for _ in range(2):
        l = blob(os.urandom(layer_size)); l["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
        layers.append(l)
    first = first or layers
    index.append(image(f"r{i}", layers)[0])
new = blob(os.urandom(delta_mb * 2**20)); new["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
m, meta = image("delta", first + [new])
index.append(m)
with open(f"{out}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": index}, f)
with open(f"{out}/oci-layout", "w") as f: f.write('{"imageLayoutVersion":"1.0.0"}')
print(new["size"] + meta)
PY
)"
copy() { skopeo copy -q --src-tls-verify=false --dest-tls-verify=false "$1" "$2" >/dev/null; }

start_ours shore; SHORE="$PORT"
for i in $(seq 0 $((REPOS - 1))); do copy "oci:$WORK/fixture:r$i" "docker://127.0.0.1:$SHORE/bench/r$i:v1"; done
start_ours site; SITE="$PORT"
start_ours back; BACK="$PORT"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true

t="$(now)"
"$BIN" bundle export --data "$WORK/shore" --repository 'bench/*' -o "$WORK/bundle.tar" >/dev/null
EXPORT="$(since "$t")"
t="$(now)"
"$BIN" bundle import "$WORK/bundle.tar" --data "$WORK/site" >/dev/null
IMPORT="$(since "$t")"
curl -sf "http://127.0.0.1:$SITE/v2/bench/r$((REPOS - 1))/manifests/v1" -H 'accept: application/vnd.oci.image.manifest.v1+json' >/dev/null

t="$(now)"
for i in $(seq 0 $((REPOS - 1))); do copy "docker://127.0.0.1:$SHORE/bench/r$i:v1" "oci:$WORK/layout:r$i"; done
SKOPEO_OUT="$(since "$t")"
t="$(now)"
for i in $(seq 0 $((REPOS - 1))); do copy "oci:$WORK/layout:r$i" "docker://127.0.0.1:$BACK/bench/r$i:v1"; done
SKOPEO_BACK="$(since "$t")"

echo "bundle_content $SIZE_MB MiB in $REPOS repositories"
echo "bundle_export $EXPORT s"
echo "bundle_import $IMPORT s"
echo "skopeo_to_layout $SKOPEO_OUT s"
echo "skopeo_from_layout $SKOPEO_BACK s"
awk -v a="$EXPORT" -v b="$IMPORT" -v c="$SKOPEO_OUT" -v d="$SKOPEO_BACK" \
  'BEGIN{printf "bundle_round_trip %.3f s\nskopeo_round_trip %.3f s\nspeedup %.2f x\n", a+b, c+d, (c+d)/(a+b)}'

# The delta: a new tag on the shore, the site's state, a bundle of the difference.
copy "oci:$WORK/fixture:delta" "docker://127.0.0.1:$SHORE/bench/r0:v2"
"$BIN" bundle state --data "$WORK/site" -o "$WORK/have.json" >/dev/null
"$BIN" bundle export --data "$WORK/shore" --repository 'bench/*' --since-state "$WORK/have.json" -o "$WORK/delta.tar" >/dev/null
DELTA_BYTES="$(stat -c %s "$WORK/delta.tar")"
"$BIN" bundle import "$WORK/delta.tar" --data "$WORK/site" >/dev/null
curl -sf "http://127.0.0.1:$SITE/v2/bench/r0/manifests/v2" -H 'accept: application/vnd.oci.image.manifest.v1+json' >/dev/null
echo "state_file $(stat -c %s "$WORK/have.json") bytes"
echo "delta_changed $CHANGED bytes"
echo "delta_file $DELTA_BYTES bytes"
awk -v a="$DELTA_BYTES" -v b="$CHANGED" 'BEGIN{printf "delta_ratio %.4f x\n", a/b}'
