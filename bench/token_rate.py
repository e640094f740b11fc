#!/usr/bin/env python3
"""Token service latency at a fixed request rate (open loop): GET /oauth2/token with Basic
credentials, RATE requests per second for SECONDS, from a few keep-alive connections. Latency is
measured from each request's scheduled time, so a slow answer that delays the next ones counts
against them too (no coordinated omission).

Usage: token_rate.py BASE_URL USER PASSWORD [RATE=200] [SECONDS=10]
Prints figure lines for compare.py: token.rps, token.p50, token.p99, token.max, token.errors.
"""
import base64
import http.client
import queue
import sys
import threading
import time
import urllib.parse


def main():
    base, user, password = sys.argv[1:4]
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 200.0
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    url = urllib.parse.urlsplit(base)
    service = url.netloc
    path = "/oauth2/token?" + urllib.parse.urlencode(
        {"service": service, "scope": "repository:bench/anchor:pull"})
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    total = int(rate * seconds)
    work = queue.Queue()
    latencies, errors = [], [0]
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        while True:
            due = work.get()
            if due is None:
                return
            try:
                conn.request("GET", path, headers={"Authorization": auth})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
                ok = False
            done = time.monotonic()
            with lock:
                if ok:
                    latencies.append(done - due)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    start = time.monotonic() + 0.1
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        work.put(due)
    for _ in threads:
        work.put(None)
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(p):
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    print(f"token.rps {len(latencies) / elapsed:.1f} req/s")
    print(f"token.p50 {pct(50):.3f} ms")
    print(f"token.p99 {pct(99):.3f} ms")
    print(f"token.max {latencies[-1] * 1000 if latencies else float('nan'):.3f} ms")
    print(f"token.errors {errors[0]} count")


if __name__ == "__main__":
    main()
