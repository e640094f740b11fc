#!/usr/bin/env python3
"""Instructions per manifest GET under callgrind, free of a shared machine's noise.

usage: bench/callgrind_manifest.py BIN MODE N OUTDIR
  MODE  none   plain HTTP, --auth none
        tls    one module (serve --proxy-listen, the development certificate), --auth none
        bearer plain HTTP, --auth tokens, a Bearer token
        basic  plain HTTP, --auth tokens, Basic credentials
Starts BIN serve under valgrind --tool=callgrind with a fresh data directory in OUTDIR, pushes
one small image, warms up with 50 GETs, zeroes the counters, runs N keep-alive GETs and dumps:
OUTDIR/cg-MODE.out.1 holds the N requests. Per request:
  callgrind_annotate OUTDIR/cg-MODE.out.1 | grep 'PROGRAM TOTALS'   (divide by N)
Needs valgrind (Debian package). Used for README, Performance (one module, access control)."""
import ssl, base64, hashlib, http.client, json, os, signal, socket, subprocess, sys, time
BIN, MODE, N, OUT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
os.makedirs(OUT, exist_ok=True)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
data = os.path.join(OUT, f"data-{MODE}")
subprocess.run(["rm", "-rf", data])
auth = "none" if MODE in ("none", "tls") else "tokens"
LISTEN = "--proxy-listen" if MODE == "tls" else "--listen"
cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={OUT}/cg-{MODE}.out",  
       BIN, "serve", LISTEN, f"127.0.0.1:{port}", "--data", data, "--auth", auth]
env = dict(os.environ, RUST_LOG="warn")
p = subprocess.Popen(cmd, stdout=open(f"{OUT}/log-{MODE}", "w"), stderr=subprocess.STDOUT, env=env)
for _ in range(600):
    try:
        c = (http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=ssl._create_unverified_context()) if MODE == "tls" else http.client.HTTPConnection("127.0.0.1", port, timeout=60)); c.request("GET", "/v2/"); c.getresponse().read(); break
    except Exception:
        time.sleep(0.2)
hdr = {}
CTX = ssl._create_unverified_context()
def conn():
    if MODE == "tls":
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=CTX)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)
if MODE not in ("none", "tls"):
    pw = open(os.path.join(data, "admin-password")).read().strip()
    basic = "Basic " + base64.b64encode(f"admin:{pw}".encode()).decode()
    if MODE == "basic":
        hdr = {"Authorization": basic}
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", f"/oauth2/token?service=127.0.0.1:{port}&scope=repository:bench:pull,push", headers={"Authorization": basic})
        r = c.getresponse(); tok = json.loads(r.read())
        hdr = {"Authorization": "Bearer " + (tok.get("access_token") or tok["token"])}
c = conn()
def push_blob(b):
    d = "sha256:" + hashlib.sha256(b).hexdigest()
    c.request("POST", f"/v2/bench/blobs/uploads/?digest={d}", body=b, headers={**hdr, "Content-Type": "application/octet-stream"})
    r = c.getresponse(); r.read(); assert r.status == 201, (r.status, r.headers)
    return d
cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
layer = os.urandom(1000)
dc, dl = push_blob(cfg), push_blob(layer)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": len(cfg)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dl, "size": len(layer)}]}).encode()
c.request("PUT", "/v2/bench/manifests/v1", body=m, headers={**hdr, "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
r = c.getresponse(); r.read(); assert r.status == 201, r.status
get_hdr = {**hdr, "Accept": "application/vnd.oci.image.manifest.v1+json"}
for _ in range(50):
    c.request("GET", "/v2/bench/manifests/v1", headers=get_hdr); r = c.getresponse(); r.read()
subprocess.run(["callgrind_control", "-z", str(p.pid)], stdout=subprocess.DEVNULL)
for _ in range(N):
    c.request("GET", "/v2/bench/manifests/v1", headers=get_hdr); r = c.getresponse(); r.read(); assert r.status == 200

subprocess.run(["callgrind_control", "-d", str(p.pid)], stdout=subprocess.DEVNULL)
p.send_signal(signal.SIGTERM); p.wait(timeout=120)
