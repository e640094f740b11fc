#!/usr/bin/env bash
# hierarchy-bench.sh — issue 14's propagation and incremental cost through three layers, in one
# run on loopback: cloud (`serve`) <- top (`serve --parent cloud`) <- lower (`serve --parent top`),
# both children continuous (always-open window, `--sync-poll-interval PT1S`). Plain HTTP and
# `--auth none` everywhere: this measures sync, not TLS or tokens.
#   1. seed the cloud with REPOS x TAGS small images sharing their blobs; time until the lower
#      layer has them all (first propagation through both layers);
#   2. move one tag at the cloud, wait until the top has it, stop the lower layer, and measure
#      ONE lower-layer pass against the top on copies of the lower's data: (a) ours through the
#      change feed, (b) the generic tag walk (`--sync-feed off`), then each again with nothing
#      new; (c) `skopeo sync --src yaml` of the same repositories from the top into a scratch
#      distribution filled beforehand (its requests counted in the top's access log);
#   3. restart the lower layer and push a new image to the cloud LATENCY_RUNS times: time until
#      the lower layer serves it (manifest GET 200).
# Usage: sync/bench/hierarchy-bench.sh [path/to/connected-registry]   (default target/release/...)
# Env: REPOS=200 TAGS=5 LATENCY_RUNS=5 SKOPEO=1 (0 skips (c)) PROPAGATION_TIMEOUT=600 (seconds).
# Needs python3, curl; skopeo and docker-registry for (c).
# Prints "NAME VALUE UNIT" lines. Everything it starts it stops (by PID); scratch in a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/connected-registry}"
if [ ! -x "$BIN" ]; then
  echo "hierarchy-bench.sh: no connected-registry binary at $BIN; build it (cargo build --release) or pass its path" >&2
  exit 2
fi
REPOS="${REPOS:-200}"
TAGS="${TAGS:-5}"
LATENCY_RUNS="${LATENCY_RUNS:-5}"
SKOPEO="${SKOPEO:-1}"
PROPAGATION_TIMEOUT="${PROPAGATION_TIMEOUT:-600}"
WORK="$(mktemp -d -t hierarchy-bench.XXXXXX)"
. "$ROOT/sync/bench/lib.sh"
# The children's sync: continuous (an hourly one-hour window is always open), a pass a second.
CONTINUOUS=(--sync-schedule '0 * * * *' --sync-window PT1H --sync-poll-interval PT1S --repo '*')
# Sets PORT and PID (see lib.sh). The access log (target `access`) counts requests served.
start_ours() { # NAME PORT [serve flags...]
  local name="$1" port="$2"; shift 2
  RUST_LOG="warn,access=info" "$BIN" serve --auth none --listen "127.0.0.1:$port" \
    --data "$WORK/$name" "$@" >>"$WORK/$name.log" 2>&1 &
  PID="$!"
  PIDS+=("$PID")
  wait_up "$port"
  PORT="$port"
}
access_lines() { grep -c 'access' "$WORK/$1.log" || true; }

# The registry client: pushes and waits, python3 standard library only.
cat >"$WORK/tool.py" <<'PY'
"""Pushes small images and waits for them, for hierarchy-bench.sh (standard library only)."""
import hashlib, http.client, json, sys, threading, time, urllib.parse
from concurrent.futures import ThreadPoolExecutor

MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER = hashlib.shake_128(b"hierarchy-bench layer").digest(4096)
local = threading.local()

def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()

def conn(host):
    c = getattr(local, host, None)
    if c is None:
        c = http.client.HTTPConnection(host, timeout=30)
        setattr(local, host, c)
    return c

def req(host, method, path, body=None, headers=None):
    for attempt in range(3):
        c = conn(host)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, r.headers, data
        except (http.client.HTTPException, OSError):
            c.close()
            setattr(local, host, None)
            if attempt == 2:
                raise

def put_blob(host, repo, blob):
    d = digest(blob)
    s, _, _ = req(host, "HEAD", f"/v2/{repo}/blobs/{d}")
    if s == 200:
        return
    s, h, body = req(host, "POST", f"/v2/{repo}/blobs/uploads/", b"")
    if s != 202:
        sys.exit(f"POST upload in {repo}: {s} {body[:200]!r}")
    loc = h["Location"]
    u = urllib.parse.urlsplit(loc)
    path = u.path + ("?" + u.query + "&" if u.query else "?") + "digest=" + d
    s, _, body = req(host, "PUT", path, blob, {"Content-Type": "application/octet-stream"})
    if s != 201:
        sys.exit(f"PUT blob in {repo}: {s} {body[:200]!r}")

def manifest(repo, tag, gen):
    m = {"schemaVersion": 2, "mediaType": MT,
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest(CONFIG), "size": len(CONFIG)},
         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                     "digest": digest(LAYER), "size": len(LAYER)}],
         "annotations": {"bench.image": f"{repo}:{tag}:{gen}"}}
    return json.dumps(m, sort_keys=True).encode()

def push(host, repo, tag, gen, blobs=True):
    if blobs:
        put_blob(host, repo, CONFIG)
        put_blob(host, repo, LAYER)
    m = manifest(repo, tag, gen)
    s, _, body = req(host, "PUT", f"/v2/{repo}/manifests/{tag}", m, {"Content-Type": MT})
    if s != 201:
        sys.exit(f"PUT manifest {repo}:{tag}: {s} {body[:200]!r}")
    return digest(m)

def repo_name(i):
    return f"bench/r{i:03d}"

def seed(host, repos, tags):
    def one(i):
        for t in range(tags):
            push(host, repo_name(i), f"t{t}", 0, blobs=(t == 0))
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(one, range(repos)))

def digest_at(host, repo, tag):
    s, h, _ = req(host, "HEAD", f"/v2/{repo}/manifests/{tag}", None, {"Accept": MT})
    return h.get("Docker-Content-Digest") if s == 200 else None

def wait_all(host, repos, tags, timeout):
    """Until every repository holds every tag at generation 0 (each checked until it does)."""
    want = {(repo_name(i), f"t{t}"): digest(manifest(repo_name(i), f"t{t}", 0))
            for i in range(repos) for t in range(tags)}
    end = time.monotonic() + timeout
    while want and time.monotonic() < end:
        for key in list(want):
            if digest_at(host, *key) == want[key]:
                del want[key]
            else:
                break
        if want:
            time.sleep(0.05)
    if want:
        sys.exit(f"{len(want)} tags still missing at {host} after {timeout} s")

def wait_digest(host, repo, tag, want, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if digest_at(host, repo, tag) == want:
            return
        time.sleep(0.01)
    sys.exit(f"{repo}:{tag} not {want} at {host} after {timeout} s")

def latency(cloud, lower, runs, timeout):
    """Pushes a new image to the cloud `runs` times; the time from the push's last byte
    acknowledged until the lower layer answers its manifest GET with 200."""
    out = []
    for k in range(runs):
        repo = f"bench/new{k}"
        put_blob(cloud, repo, CONFIG)
        put_blob(cloud, repo, LAYER)
        d = push(cloud, repo, "v1", k, blobs=False)
        t0 = time.monotonic()
        end = t0 + timeout
        while time.monotonic() < end:
            s, h, _ = req(lower, "GET", f"/v2/{repo}/manifests/v1", None, {"Accept": MT})
            if s == 200 and h.get("Docker-Content-Digest") == d:
                break
            time.sleep(0.005)
        else:
            sys.exit(f"{repo}:v1 not at the lower layer after {timeout} s")
        out.append(time.monotonic() - t0)
        time.sleep(0.3 + 0.37 * k)  # spread the pushes over the poll cycle
    out.sort()
    print(" ".join(f"{x:.3f}" for x in out))

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "seed":
    seed(args[0], int(args[1]), int(args[2]))
elif cmd == "wait-all":
    wait_all(args[0], int(args[1]), int(args[2]), float(args[3]))
elif cmd == "push":
    print(push(args[0], args[1], args[2], int(args[3])))
elif cmd == "wait-digest":
    wait_digest(args[0], args[1], args[2], args[3], float(args[4]))
elif cmd == "latency":
    latency(args[0], args[1], int(args[2]), float(args[3]))
else:
    sys.exit(f"unknown command {cmd}")
PY
tool() { python3 "$WORK/tool.py" "$@"; }
# The last pass of a running `serve`, from its sync status: what one pass of the continuous
# schedule costs (no process start, and the one-time audit of recorded tags is behind it).
steady_pass() { # PREFIX HOST
  curl -sf "http://$2/acr/v1/_sync/status" | python3 -c 'import json,sys; p=sys.argv[1]
r=json.load(sys.stdin).get("lastResult") or {}
json.dump(r, open(sys.argv[2], "w"))
print(p+"_requests", r.get("requests"), "count"); print(p+"_pass_time", round(r.get("seconds",0),4), "s")
print(p+"_pull", r.get("pull"), "-")' "$1" "$WORK/$1.json"
}
summary() { # PREFIX FILE: requests, pass time and pull kind from a `sync --once --json` summary
  python3 -c 'import json,sys; s=json.load(open(sys.argv[2])); p=sys.argv[1]
print(p+"_requests", s["requests"], "count"); print(p+"_pass_time", round(s["seconds"],4), "s")
print(p+"_tags_updated", s["tagsUpdated"], "count"); print(p+"_pull", s.get("pull","full"), "-")' "$1" "$2"
}

echo "bench.sizes ${REPOS}x${TAGS} repos_x_tags"
start_ours cloud "$(free_port)"; cloud="127.0.0.1:$PORT"
start_ours top "$(free_port)" --parent "http://$cloud" "${CONTINUOUS[@]}"; top="127.0.0.1:$PORT"; top_pid="$PID"
lower_port="$(free_port)"
start_ours lower "$lower_port" --parent "http://$top" "${CONTINUOUS[@]}"; lower="127.0.0.1:$PORT"; lower_pid="$PID"

echo "# seeding the cloud ($cloud) with $REPOS x $TAGS" >&2
t0="$(now)"
tool seed "$cloud" "$REPOS" "$TAGS"
echo "seed.push_time $(since "$t0") s"
tool wait-all "$top" "$REPOS" "$TAGS" "$PROPAGATION_TIMEOUT"
echo "propagation.first_top_time $(since "$t0") s"
tool wait-all "$lower" "$REPOS" "$TAGS" "$PROPAGATION_TIMEOUT"
echo "propagation.first_lower_time $(since "$t0") s"

# Nothing new for a while: what each layer's polls cost its parent (the access log counts).
c0="$(access_lines cloud)"; p0="$(access_lines top)"
sleep 5
echo "idle.cloud_requests_per_5s $(($(access_lines cloud) - c0)) count"
echo "idle.top_requests_per_5s $(($(access_lines top) - p0)) count"
steady_pass steady.nothing_new.feed "$lower"

# skopeo's destination is filled before the change, so (c) is its incremental pass too.
if [ "$SKOPEO" = 1 ]; then
  start_dist "$WORK/dst"; dst="127.0.0.1:$PORT"
  {
    echo "$top:"
    echo "  tls-verify: false"
    echo "  images:"
    for ((r = 0; r < REPOS; r++)); do printf '    bench/r%03d: []\n' "$r"; done
  } >"$WORK/sync.yaml"
  echo "# skopeo sync: filling the scratch distribution from the top" >&2
  t0="$(now)"
  skopeo sync --src yaml --dest docker --dest-tls-verify=false "$WORK/sync.yaml" "$dst/copy" >"$WORK/skopeo-fill.log" 2>&1
  echo "skopeo.first_time $(since "$t0") s"
fi

# One changed tag: moved at the cloud, then at the top; the lower layer stopped before it.
stop_pid "$lower_pid"
d="$(tool push "$cloud" bench/r000 t0 1)"
t0="$(now)"
tool wait-digest "$top" bench/r000 t0 "$d" 60
echo "propagation.one_tag_to_top_time $(since "$t0") s"
sleep 1.5 # the top's pass that brought it in is over: its access log is quiet again

one_pass() { # NAME DATA [sync flags...]: one `sync --once` against the top, whole-process time
  local name="$1" data="$2"; shift 2
  local t0; t0="$(now)"
  "$BIN" sync --once --quiet --json --data "$data" --parent "http://$top" --repo '*' "$@" \
    >"$WORK/$name.json" 2>"$WORK/$name.log"
  since "$t0" >"$WORK/$name.time"
  echo "$name.process_time $(cat "$WORK/$name.time") s"
  summary "$name" "$WORK/$name.json"
}
cp -a "$WORK/lower" "$WORK/copy-feed"
cp -a "$WORK/lower" "$WORK/copy-walk"
cp -a "$WORK/lower" "$WORK/steady-walk"
one_pass incremental.feed "$WORK/copy-feed"
one_pass incremental.walk "$WORK/copy-walk" --sync-feed off
one_pass nothing_new.feed "$WORK/copy-feed"
one_pass nothing_new.walk "$WORK/copy-walk" --sync-feed off
if [ "$SKOPEO" = 1 ]; then
  p0="$(access_lines top)"
  t0="$(now)"
  skopeo sync --src yaml --dest docker --dest-tls-verify=false "$WORK/sync.yaml" "$dst/copy" >"$WORK/skopeo.log" 2>&1
  since "$t0" >"$WORK/incremental.skopeo.time"
  echo "incremental.skopeo.process_time $(cat "$WORK/incremental.skopeo.time") s"
  echo "incremental.skopeo_requests $(($(access_lines top) - p0)) count"
fi
# A continuous child with the feed off: its passes after the first (which takes the changed
# tag and audits the recorded tags once) are the steady tag walk with nothing new.
start_ours steady-walk "$(free_port)" --parent "http://$top" "${CONTINUOUS[@]}" --sync-feed off
steady_walk="127.0.0.1:$PORT"; steady_walk_pid="$PID"
sleep 3.5
steady_pass steady.nothing_new.walk "$steady_walk"
stop_pid "$steady_walk_pid"
python3 - "$WORK" "$SKOPEO" <<'PY'
import json, re, sys
work, skopeo = sys.argv[1], sys.argv[2] == "1"
def j(n): return json.load(open(f"{work}/{n}.json"))
def t(n): return float(open(f"{work}/{n}.time").read())
for kind in ("incremental", "nothing_new"):
    f, w = j(f"{kind}.feed"), j(f"{kind}.walk")
    # The pass itself (the summary's seconds), and the whole `sync --once` process.
    print(f"{kind}.walk_vs_feed_pass_time {w['seconds'] / max(f['seconds'], 1e-6):.1f} x")
    print(f"{kind}.walk_vs_feed_process_time {t(kind + '.walk') / t(kind + '.feed'):.1f} x")
    print(f"{kind}.walk_vs_feed_requests {w['requests'] / max(f['requests'], 1):.1f} x")
f, w = j("steady.nothing_new.feed"), j("steady.nothing_new.walk")
if f.get("seconds") and w.get("seconds"):
    print(f"steady.nothing_new.walk_vs_feed_pass_time {w['seconds'] / f['seconds']:.1f} x")
if skopeo:
    s = t("incremental.skopeo")
    print(f"incremental.skopeo_vs_feed_process_time {s / t('incremental.feed'):.1f} x")
    print(f"incremental.skopeo_vs_walk_process_time {s / t('incremental.walk'):.1f} x")
PY

# Propagation latency, both layers continuous again.
start_ours lower "$lower_port" --parent "http://$top" "${CONTINUOUS[@]}"; lower_pid="$PID"
tool wait-digest "$lower" bench/r000 t0 "$d" 60
lat="$(tool latency "$cloud" "$lower" "$LATENCY_RUNS" 60)"
python3 - "$lat" <<'PY'
import statistics, sys
xs = [float(x) for x in sys.argv[1].split()]
print("latency.cloud_to_lower_all", ",".join(f"{x:.3f}" for x in xs), "s")
print(f"latency.cloud_to_lower_median {statistics.median(xs):.3f} s")
print(f"latency.cloud_to_lower_max {max(xs):.3f} s")
PY
