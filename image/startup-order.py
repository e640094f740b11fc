#!/usr/bin/env python3
"""Regenerates image/startup-order.txt: the functions `serve` runs from its start through its
first requests, in an order the linker follows (`-Wl,--symbol-ordering-file`, image/build.sh).

Why: the kernel maps 64 KiB around each code page a process touches (`fault_around_bytes`), and
start-up touches code all over the binary's 14 MB of `.text`, so an idle `serve` kept most of
its code resident. Laid out together, the code start-up and the first requests run is a few
contiguous MiB and the rest of `.text` is never read from disk (README, "Size, idle memory,
start").

How: runs an unstripped build of the shipped binary under valgrind's callgrind (`--demangle=no`:
the names as the linker sees them), once per way of running `serve` (`--auth none`, the default
access control on a first start, and one module with TLS), each through a start, a push and a pull
of a small image and the other requests a client makes first, then a SIGTERM, then once more
through a restart on the data that run left (a device starts fresh once and restarts many
times; a restart reads the certificate and the database instead of making them). Every function of
the binary that ran is written out in groups: what the start-up of `--auth none` ran, what the
other start-ups add, what the requests add; within a group the most instructions first, so that
the hottest code also shares pages and cache lines.

A stale list is harmless: lld skips the names it does not find (image/build.sh silences that
warning), so after code changes the functions that kept their names stay together and only the
new ones land elsewhere; regenerate it now and then, and after large changes.

The binary profiled must be the shipped build with its symbols (the same flags, so the same
symbol names: image/build.sh says why), which `KEEP_SYMBOLS=1 image/build.sh` makes.

Usage (needs valgrind, the Debian package):
  KEEP_SYMBOLS=1 image/build.sh
  image/startup-order.py target/x86_64-unknown-linux-gnu/dist/connected-registry [OUT]
  image/build.sh     # the stripped build, in the new order
OUT defaults to image/startup-order.txt. Everything listens on 127.0.0.1; every wait is bounded.
"""
import base64
import collections
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

# The modes' `serve` commands and environment, free ports and the stop: the footprint's.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from footprint import free_port, serve_command, serve_env, stop  # noqa: E402

# valgrind runs the binary 20-50 times slower; argon2id on a first `--auth tokens` start is the
# slowest part.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 300.0
MODES = ("none", "tokens", "onemodule")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


class Client:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, port, tls):
        self.port, self.tls, self.conn, self.headers = port, tls, None, {}

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            if self.conn is None:
                if self.tls:
                    ctx = ssl._create_unverified_context()
                    self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=120,
                                                            context=ctx)
                else:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
                response = self.conn.getresponse()
                return response.status, response.headers, response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise


def expect(what, status, wanted):
    if status not in wanted:
        raise SystemExit(f"startup-order: {what} answered HTTP {status}, expected {wanted}")


def first_requests(client, data_dir, mode):
    """What a client does first: the API check, a login where there is access control, a push
    (a monolithic and a chunked upload, the manifest) and a pull (manifest by tag and by digest,
    blobs), the listings, and a miss."""
    expect("GET /v2/", client.request("GET", "/v2/")[0], (200, 401))
    if mode == "tokens":
        with open(os.path.join(data_dir, "admin-password")) as f:
            password = f.read().strip()
        basic = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
        scope = "repository:startup:pull,push,metadata_read"
        status, _, body = client.request(
            "GET", f"/oauth2/token?service=127.0.0.1:{client.port}&scope={scope}",
            headers={"Authorization": basic})
        expect("token", status, (200,))
        token = json.loads(body)
        client.headers = {"Authorization": "Bearer " + (token.get("access_token") or token["token"])}
        expect("GET /v2/ with a token", client.request("GET", "/v2/")[0], (200,))

    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(64 * 1024)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    status, _, _ = client.request("POST", f"/v2/startup/blobs/uploads/?digest={config_digest}",
                                  body=config,
                                  headers={"Content-Type": "application/octet-stream"})
    expect("monolithic upload", status, (201,))
    status, headers, _ = client.request("POST", "/v2/startup/blobs/uploads/", body=b"")
    expect("upload start", status, (202,))
    location = headers["Location"]
    status, headers, _ = client.request("PATCH", location, body=layer,
                                        headers={"Content-Type": "application/octet-stream"})
    expect("upload chunk", status, (202,))
    location = headers["Location"]
    separator = "&" if "?" in location else "?"
    status, _, _ = client.request("PUT", f"{location}{separator}digest={layer_digest}", body=b"")
    expect("upload end", status, (201,))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}]}).encode()
    status, headers, _ = client.request("PUT", "/v2/startup/manifests/v1", body=manifest,
                                        headers={"Content-Type": MANIFEST_TYPE})
    expect("manifest put", status, (201,))
    manifest_digest = headers.get("Docker-Content-Digest", "sha256:" + hashlib.sha256(manifest).hexdigest())
    accept = {"Accept": MANIFEST_TYPE}
    for _ in range(3):
        expect("manifest head", client.request("HEAD", "/v2/startup/manifests/v1", headers=accept)[0], (200,))
        expect("manifest get", client.request("GET", "/v2/startup/manifests/v1", headers=accept)[0], (200,))
        expect("manifest by digest",
               client.request("GET", f"/v2/startup/manifests/{manifest_digest}", headers=accept)[0], (200,))
        expect("blob head", client.request("HEAD", f"/v2/startup/blobs/{layer_digest}")[0], (200,))
        expect("blob get", client.request("GET", f"/v2/startup/blobs/{layer_digest}")[0], (200, 307))
        expect("config get", client.request("GET", f"/v2/startup/blobs/{config_digest}")[0], (200, 307))
    expect("tags", client.request("GET", "/v2/startup/tags/list")[0], (200, 401))
    expect("catalog", client.request("GET", "/v2/_catalog")[0], (200, 401, 403))
    expect("missing manifest", client.request("GET", "/v2/startup/manifests/nope", headers=accept)[0], (404,))


def profile(binary, mode, work, restart=False):
    """Runs one mode under callgrind; returns the path of its start-up's profile and those of
    the rest. A `restart` starts on the data directory a first run left (an existing database,
    the development certificate kept) and makes no requests."""
    data = os.path.join(work, f"data-{mode}")
    run = f"{mode}-restart" if restart else mode
    out = os.path.join(work, f"callgrind-{run}.out")
    port = free_port()
    args = serve_command(binary, mode, data, port)
    env = serve_env()
    log = open(os.path.join(work, f"log-{run}"), "w")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no", "--dump-line=no",
         f"--callgrind-out-file={out}", *args],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Client(port, mode == "onemodule")
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"startup-order: {mode}: serve exited with {proc.returncode}, "
                                 f"see {log.name}")
            try:
                client.request("GET", "/v2/")
                break
            except (OSError, http.client.HTTPException):
                if time.monotonic() - started > START_TIMEOUT_S:
                    raise SystemExit(f"startup-order: {mode}: no answer in {START_TIMEOUT_S}s")
                time.sleep(0.2)
        # What start-up ran, apart from what the requests run (`OUT.1`; the rest goes to OUT at
        # the exit).
        subprocess.run(["callgrind_control", "--dump=started", str(proc.pid)], check=True,
                       capture_output=True, timeout=STOP_TIMEOUT_S)
        if not restart:
            first_requests(client, data, mode)
    finally:
        stop(proc, STOP_TIMEOUT_S)
        log.close()
    dumps = sorted(name for name in os.listdir(work) if name.startswith(os.path.basename(out)))
    if len(dumps) < 2:
        raise SystemExit(f"startup-order: {mode}: callgrind wrote {dumps}, not a start-up and "
                         f"an exit profile, see {log.name}")
    start_up = out + ".1"
    return start_up, [os.path.join(work, name) for name in dumps if name != os.path.basename(start_up)]


DEFINITION = re.compile(r"^(c?(?:ob|fn))=\((\d+)\)(?: (.*))?$")


def functions_run(profile_path, binary, cost):
    """Adds the instructions each function of `binary` ran (callgrind's self cost) to `cost`;
    callgrind's own names (`0x...` without a symbol, `(below main)`) are left out."""
    names = {"ob": {}, "fn": {}}
    current_object = current_function = None
    after_calls = False
    with open(profile_path) as f:
        for line in f:
            line = line.rstrip("\n")
            match = DEFINITION.match(line)
            if match:
                kind, number, name = match.groups()
                table = names[kind.lstrip("c")]
                if name is not None:
                    # callgrind names a recursive call's frames FUNCTION'2, FUNCTION'3, ...
                    table[number] = re.sub(r"'\d+$", "", name)
                if kind == "ob":
                    current_object = table.get(number)
                elif kind == "fn":
                    current_function = table.get(number)
                after_calls = False
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                fields = line.split()
                if (len(fields) >= 2 and current_function and current_object
                        and os.path.realpath(current_object) == binary
                        and not current_function.startswith(("0x", "("))):
                    cost[current_function] += int(fields[1])


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    if shutil.which("valgrind") is None:
        raise SystemExit("startup-order: needs valgrind (apt-get install valgrind)")
    binary = os.path.realpath(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__),
                                                            "startup-order.txt")
    symbols = subprocess.run(["nm", binary], capture_output=True, text=True).stdout
    if not symbols.strip():
        raise SystemExit(f"startup-order: {binary} has no symbols: build it with "
                         "CARGO_PROFILE_DIST_STRIP=false (see --help)")
    # Groups, each after the one before: the start-up of `--auth none`, what the other modes'
    # start-ups add, then what the requests of all three add. An idle `serve` then touches the
    # first group and as little else as can be. Each mode's restart (its usual start: a device
    # restarts many times and starts fresh once) comes before its first start, which adds
    # making the database, the first token and the development certificate.
    start_ups, requests = [], collections.Counter()
    with tempfile.TemporaryDirectory(prefix="startup-order-") as work:
        for mode in MODES:
            first, rest = profile(binary, mode, work)
            again, _ = profile(binary, mode, work, restart=True)
            for start_up in (again, first):
                start_ups.append(collections.Counter())
                functions_run(start_up, binary, start_ups[-1])
            for dump in rest:
                functions_run(dump, binary, requests)
    ordered, placed = [], set()
    for group in [*start_ups, requests]:
        for name, _ in sorted(group.items(), key=lambda item: (-item[1], item[0])):
            if name not in placed:
                placed.add(name)
                ordered.append(name)
    with open(out, "w") as f:
        f.write("".join(name + "\n" for name in ordered))
    runs = [f"{mode} {run}" for mode in MODES for run in ("restart", "first start")]
    sizes = ", ".join(f"{run} {len(group)}" for run, group in zip(runs, start_ups))
    print(f"startup-order: {len(ordered)} functions ({sizes}, requests {len(requests)}) -> {out}")


if __name__ == "__main__":
    main()
