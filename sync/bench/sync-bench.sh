#!/usr/bin/env bash
# sync-bench.sh — the issue's speed claims, in one sitting on loopback:
#   W6: 20 repos x 3 tags of small images from a CNCF distribution parent:
#       `skopeo sync --src yaml` into a scratch distribution vs `connected-registry sync --once`
#       (first sync, then a second one with nothing new: requests and time);
#   BLOB: one image with a single large blob (default 512M): `curl` vs `sync --once`.
# Usage: sync/bench/sync-bench.sh [path/to/connected-registry]   (default target/release/...)
# Env: W6_REPOS=20 W6_TAGS=3 BLOB_SIZE=512M (BLOB_SIZE=0 skips), BENCH=../shared/bench,
#      PARENT=distribution|ours (ours: the parent is `connected-registry serve`, whose change
#      feed makes the second sync one request).
# Prints "NAME VALUE UNIT" lines. Everything it starts it stops (by PID); scratch in a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/connected-registry}"
# The shared harness lives beside the repository (../shared/bench), as bench.sh finds it.
BENCH="${BENCH:-$ROOT/../shared/bench}"
if [ ! -d "$BENCH" ]; then
  echo "sync-bench.sh: the shared harness is not at $BENCH; set BENCH=/path/to/shared/bench" >&2
  exit 2
fi
W6_REPOS="${W6_REPOS:-20}"
W6_TAGS="${W6_TAGS:-3}"
BLOB_SIZE="${BLOB_SIZE:-512M}"
PARENT="${PARENT:-distribution}"
WORK="$(mktemp -d -t sync-bench.XXXXXX)"
. "$ROOT/sync/bench/lib.sh"


case "$PARENT" in
  distribution) start_dist "$WORK/src"; src_port="$PORT" ;;
  ours) start_ours "$WORK/src"; src_port="$PORT" ;;
  *) echo "PARENT must be distribution or ours, not $PARENT" >&2; exit 2 ;;
esac
echo "parent.kind $PARENT -"
src="127.0.0.1:$src_port"
echo "# parent $src; seeding $W6_REPOS x $W6_TAGS" >&2
BENCH_CACHE="$WORK/cache" "$BENCH/seed-registry.sh" --many "$W6_REPOS" "$W6_TAGS" "http://$src" bench >/dev/null

# skopeo sync --src yaml into a scratch distribution
start_dist "$WORK/dst"; dst_port="$PORT"
{
  echo "$src:"
  echo "  tls-verify: false"
  echo "  images:"
  for ((r = 0; r < W6_REPOS; r++)); do printf '    bench/sync-r%02d: []\n' "$r"; done
} >"$WORK/sync.yaml"
t0="$(now)"
skopeo sync --src yaml --dest docker --dest-tls-verify=false "$WORK/sync.yaml" "127.0.0.1:$dst_port/copy" >"$WORK/skopeo.log" 2>&1
echo "w6.skopeo_sync_yaml_time $(since "$t0") s"

# connected-registry sync --once, first and second
t0="$(now)"
"$BIN" sync --once --quiet --json --data "$WORK/child" --parent "http://$src" --repo 'bench/*' >"$WORK/first.json" 2>"$WORK/first.log"
first_time="$(since "$t0")"
echo "w6.sync_once_first_time $first_time s"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("w6.sync_once_first_tags", s["tagsUpdated"], "count"); print("w6.sync_once_first_requests", s["requests"], "count"); print("w6.sync_once_first_inner_time", round(s["seconds"],3), "s")' "$WORK/first.json"
t0="$(now)"
"$BIN" sync --once --quiet --json --data "$WORK/child" --parent "http://$src" --repo 'bench/*' >"$WORK/second.json" 2>"$WORK/second.log"
second_time="$(since "$t0")"
echo "w6.sync_once_second_time $second_time s"
awk -v a="$first_time" -v b="$second_time" 'BEGIN{printf "w6.second_vs_first_speedup %.1f x\n", a/b}'
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("w6.sync_once_second_requests", s["requests"], "count"); print("w6.sync_once_second_inner_time", round(s["seconds"],3), "s"); print("w6.sync_once_second_pull", s.get("pull", "full"), "-")' "$WORK/second.json"

if [ "$BLOB_SIZE" != 0 ]; then
  echo "# pushing a $BLOB_SIZE blob" >&2
  out="$(BENCH_CACHE="$WORK/cache" "$BENCH/seed-registry.sh" "http://$src" big/blob v1 "$BLOB_SIZE")"
  layer="$(awk '$1=="layer"{print $2; exit}' <<<"$out")"
  size="$(awk '$1=="layer"{print $3; exit}' <<<"$out")"
  t0="$(now)"
  curl -sf -o /dev/null "http://$src/v2/big/blob/blobs/$layer"
  tc="$(since "$t0")"
  echo "blob.curl_time $tc s"
  # curl to a file on the same disk (page cache only: neither durable nor verified)
  t0="$(now)"
  curl -sf -o "$WORK/blob.out" "http://$src/v2/big/blob/blobs/$layer"
  tf="$(since "$t0")"
  echo "blob.curl_to_file_time $tf s"
  rm -f "$WORK/blob.out"
  # curl to a file, fsynced, then verified: what a durable, verified copy costs with curl
  t0="$(now)"
  curl -sf -o "$WORK/blob.out" "http://$src/v2/big/blob/blobs/$layer"
  python3 -c 'import os,sys; f=os.open(sys.argv[1], os.O_RDONLY); os.fsync(f)' "$WORK/blob.out"
  sha256sum "$WORK/blob.out" >/dev/null
  echo "blob.curl_fsync_sha256sum_time $(since "$t0") s"
  rm -f "$WORK/blob.out"
  t0="$(now)"
  ${SYNC_WRAP:-} "$BIN" sync --once --quiet --json --data "$WORK/child2" --parent "http://$src" --repo big/blob >"$WORK/blob.json" 2>"$WORK/blob.log"
  ts="$(since "$t0")"
  echo "blob.sync_once_time $ts s"
  awk -v s="$size" -v tc="$tc" -v tf="$tf" -v ts="$ts" 'BEGIN{printf "blob.curl_mib_s %.1f MiB/s\nblob.sync_mib_s %.1f MiB/s\nblob.sync_vs_curl %.2f x\nblob.sync_vs_curl_to_file %.2f x\n", s/1048576/tc, s/1048576/ts, tc/ts, tf/ts}'
fi
