#!/usr/bin/env python3
"""Footprint of the binary: its size, the idle memory of `serve` and the time from start to the
first request answered (issue 16, "smaller and leaner"; figures in README.md, Performance > Size).

For each way of running `serve` (MODES: `none` = `--auth none`, `tokens` = the default access
control, `onemodule` = `--auth none --proxy-listen`, TLS only with a development certificate),
RUNS times, on a fresh data directory each time and with the binary out of the page cache: start
the binary, poll `/v2/` every millisecond until it answers (any HTTP status: with `--auth
tokens` the answer is a 401), then read the process's memory (`/proc/PID/status` VmRSS and
VmHWM, `/proc/PID/smaps_rollup` anonymous and file-backed, `/proc/PID/smaps` the binary's
resident code and read-only data) IDLE seconds after the start, and stop it with SIGTERM. Prints
the median, minimum and maximum of each figure.
Everything listens on 127.0.0.1; every wait is bounded.

Usage: footprint.py BINARY[,BINARY...] [RUNS=11] [IDLE=1.0] [MODES=none,tokens,onemodule]
Several binaries (comma-separated) are measured in turn, one run of each after the other, so
that a shared machine's changing load falls on all of them alike.
"""
import http.client
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port, tls):
    """True once GET /v2/ gets any HTTP answer."""
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/v2/")
        status = conn.getresponse().status
        conn.close()
        return status
    except (OSError, http.client.HTTPException):
        return None


def proc_kib(pid, path, keys):
    out = {}
    with open(f"/proc/{pid}/{path}") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in keys:
                out[name] = int(rest.split()[0])
    return out


def binary_resident_kib(pid, binary):
    """Resident KiB of the binary's own mappings (`/proc/PID/smaps`): its code (executable) and
    its read-only data (`.rodata`, `.eh_frame`, ...)."""
    code = readonly = 0
    perms = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
                ours = len(fields) >= 6 and os.path.realpath(fields[5]) == binary
                perms = fields[1] if ours else None
            elif perms and fields[0] == "Rss:":
                if "x" in perms:
                    code += int(fields[1])
                elif "w" not in perms:
                    readonly += int(fields[1])
    return code, readonly


def serve_command(binary, mode, data, port):
    """`serve` on `data` answering on 127.0.0.1:`port` in `mode`: `none` (plain HTTP, no
    access control), `tokens` (the default access control) or `onemodule` (TLS through the
    proxy in the process). image/startup-order.py profiles the same commands."""
    args = [binary, "serve", "--data", data]
    if mode == "none":
        return args + ["--auth", "none", "--listen", f"127.0.0.1:{port}"]
    if mode == "tokens":
        return args + ["--listen", f"127.0.0.1:{port}"]
    return args + ["--auth", "none", "--proxy-listen", f"127.0.0.1:{port}",
                   "--proxy-admin", f"127.0.0.1:{free_port()}"]


def serve_env():
    """This environment without the settings `serve` would read from it (its own and the
    IoT Edge API proxy's), logging warnings only."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONNECTED_REGISTRY") and k not in (
               "NGINX_DEFAULT_PORT", "CONNECTED_ACR_ROUTE_ADDRESS",
               "DOCKER_REQUEST_ROUTE_ADDRESS", "BLOB_UPLOAD_ROUTE_ADDRESS",
               "IOTEDGE_PARENTHOSTNAME")}
    env["RUST_LOG"] = "warn"
    return env


def evict_from_page_cache(path):
    """Drops the file's pages from the page cache, so that each run starts as after a reboot.
    Why: with the file cached, the kernel maps whole cached folios around each page a process
    touches, and their size follows how the file got into the cache (written by `strip` or `cp`,
    read ahead at the device's `read_ahead_kb`), so the resident code of the same binary moved
    by 1-2 MiB between runs of this script. From disk, what is mapped follows the read-ahead
    window only (shown in the output)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_ahead_kib(path):
    """The read-ahead window of the block device holding `path`, or None when not found."""
    dev = os.stat(path).st_dev
    sys_dev = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for candidate in (f"{sys_dev}/queue/read_ahead_kb", f"{sys_dev}/../queue/read_ahead_kb"):
        try:
            with open(candidate) as f:
                return int(f.read())
        except OSError:
            continue
    return None


def one_run(binary, mode, idle):
    evict_from_page_cache(binary)
    data = tempfile.mkdtemp(prefix="footprint-")
    port = free_port()
    args = serve_command(binary, mode, os.path.join(data, "d"), port)
    tls = mode == "onemodule"
    env = serve_env()
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = None
        while status is None and time.monotonic() - started < START_TIMEOUT_S:
            if proc.poll() is not None:
                raise SystemExit(f"{mode}: serve exited with {proc.returncode}: "
                                 + proc.stderr.read().decode(errors="replace")[-2000:])
            status = answers(port, tls)
            if status is None:
                time.sleep(0.001)
        if status is None:
            raise SystemExit(f"{mode}: no answer on 127.0.0.1:{port} in {START_TIMEOUT_S}s")
        first_ms = (time.monotonic() - started) * 1000
        time.sleep(max(0.0, idle - (time.monotonic() - started)))
        st = proc_kib(proc.pid, "status", {"VmRSS", "VmHWM", "Threads"})
        sm = proc_kib(proc.pid, "smaps_rollup", {"Anonymous", "Rss", "Pss_File"})
        code_kib, readonly_kib = binary_resident_kib(proc.pid, binary)
        return {"first_ms": first_ms, "status": status, "rss_kib": st["VmRSS"],
                "hwm_kib": st["VmHWM"], "anon_kib": sm["Anonymous"],
                "file_kib": sm.get("Pss_File", 0), "code_kib": code_kib,
                "rodata_kib": readonly_kib, "threads": st["Threads"]}
    finally:
        stop(proc, STOP_TIMEOUT_S)
        shutil.rmtree(data, ignore_errors=True)


def stop(proc, timeout):
    """Stops `serve` as an orchestrator does: SIGTERM, then SIGKILL after `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binaries = [os.path.abspath(b) for b in sys.argv[1].split(",")]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    idle = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    modes = (sys.argv[4] if len(sys.argv) > 4 else "none,tokens,onemodule").split(",")
    for mode in modes:
        # Run by run, the binaries in turn: the machine's load then falls on each alike.
        results = {binary: [] for binary in binaries}
        for _ in range(runs):
            for binary in binaries:
                results[binary].append(one_run(binary, mode, idle))
        for binary in binaries:
            if mode == modes[0]:
                print(f"binary {binary}: {os.path.getsize(binary)} bytes, "
                      f"read_ahead_kb {read_ahead_kib(binary)}, started with its pages "
                      "out of the page cache")
            print(summary(mode, runs, results[binary]))


def summary(mode, runs, results):
    line = [f"{mode:9} (HTTP {results[0]['status']}, {runs} runs)"]
    for key, unit, scale in (("first_ms", "ms", 1), ("rss_kib", "MiB", 1024),
                             ("anon_kib", "MiB", 1024), ("file_kib", "MiB", 1024),
                             ("code_kib", "MiB", 1024), ("rodata_kib", "MiB", 1024),
                             ("hwm_kib", "MiB", 1024), ("threads", "", 1)):
        vals = [r[key] / scale for r in results]
        line.append(f"{key.split('_')[0]} {statistics.median(vals):.2f} "
                    f"[{min(vals):.2f}-{max(vals):.2f}]{unit}")
    return "  ".join(line)


if __name__ == "__main__":
    main()
