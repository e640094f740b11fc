#!/usr/bin/env python3
"""Check a bench.sh sitting against the project's performance goals.

usage: goals.py BENCH_OUT

BENCH_OUT holds run.sh result files named LABEL.ROUND.txt ("NAME VALUE UNIT"
lines, "#" lines ignored), as bench.sh writes them. Every goal is checked
within each round (our figure against the anchor's figure of the same round),
because absolute numbers on a shared machine drift between rounds while the
ratios move much less. Prints a Markdown table: the goal, the value in each
round, and how many rounds met it. A goal whose target or workload was not
run shows "n/a". Standard library only.
"""
import os
import re
import sys

# (goal, (label, figure), (label, figure) or UNIT, operator, threshold)
# A second (label, figure) makes the value a ratio num/den; a unit string makes it absolute.
GOALS = [
    ("registry: manifest GET rps >= 10x distribution",
     ("ours", "w2.manifest_rps"), ("a", "w2.manifest_rps"), ">=", 10.0),
    ("registry: manifest GET rps >= 0.5x static nginx",
     ("ours", "w2.manifest_rps"), ("c-http", "w2.manifest_rps"), ">=", 0.5),
    ("registry: manifest GET p99 < 10 ms",
     ("ours", "w2.manifest_p99"), "ms", "<", 10.0),
    ("registry: big-blob pull >= distribution (sequential)",
     ("ours", "w1.blob_seq_median"), ("a", "w1.blob_seq_median"), ">=", 1.0),
    ("registry: big-blob pull >= distribution (concurrent)",
     ("ours", "w1.blob_conc*"), ("a", "w1.blob_conc*"), ">=", 1.0),
    ("registry: skopeo push of 10 layers no slower than distribution (time ratio)",
     ("ours", "w3.push_time"), ("a", "w3.push_time"), "<=", 1.0),
    ("registry: skopeo pull of 10 layers no slower than distribution (time ratio)",
     ("ours", "w4.pull_time"), ("a", "w4.pull_time"), "<=", 1.0),
    ("registry: peak RSS <= 1/3 of distribution's",
     ("ours", "w5.rss_peak.registry"), ("a", "w5.rss_peak.registry"), "<=", 1.0 / 3.0),
    ("proxy: big-blob pull >= 2x nginx-as-proxy (sequential)",
     ("ours-proxy", "w1.blob_seq_median"), ("b", "w1.blob_seq_median"), ">=", 2.0),
    ("proxy: big-blob pull >= 2x nginx-as-proxy (concurrent)",
     ("ours-proxy", "w1.blob_conc*"), ("b", "w1.blob_conc*"), ">=", 2.0),
    ("proxy: big-blob pull >= 2x nginx-as-proxy in front of the same registry, ours (sequential)",
     ("ours-proxy", "w1.blob_seq_median"), ("nginx-ours", "w1.blob_seq_median"), ">=", 2.0),
    ("proxy: big-blob pull >= 2x nginx-as-proxy in front of the same registry, ours (concurrent)",
     ("ours-proxy", "w1.blob_conc*"), ("nginx-ours", "w1.blob_conc*"), ">=", 2.0),
    ("proxy: big-blob pull >= 0.7x static TLS nginx (sequential)",
     ("ours-proxy", "w1.blob_seq_median"), ("c-tls", "w1.blob_seq_median"), ">=", 0.7),
    ("proxy: big-blob pull >= 0.7x static TLS nginx (concurrent)",
     ("ours-proxy", "w1.blob_conc*"), ("c-tls", "w1.blob_conc*"), ">=", 0.7),
    ("proxy: manifest rps through the proxy >= 0.7x the registry's own",
     ("ours-proxy", "w2.manifest_rps"), ("ours", "w2.manifest_rps"), ">=", 0.7),
    ("proxy: manifest GET p99 through the proxy < 10 ms",
     ("ours-proxy", "w2.manifest_p99"), "ms", "<", 10.0),
    ("proxy: peak RSS of the proxy below nginx-as-proxy's",
     ("ours-proxy", "w5.rss_peak.proxy"), ("b", "w5.rss_peak.nginx"), "<", 1.0),
    ("one module: manifest rps over TLS >= 0.85x the registry's own over plain HTTP",
     ("ours-onemodule", "w2.manifest_rps"), ("ours", "w2.manifest_rps"), ">=", 0.85),
    ("one module: manifest GET p99 over TLS < 5 ms",
     ("ours-onemodule", "w2.manifest_p99"), "ms", "<", 5.0),
    ("one module: big-blob pull >= 0.9x static TLS nginx (sequential)",
     ("ours-onemodule", "w1.blob_seq_median"), ("c-tls", "w1.blob_seq_median"), ">=", 0.9),
    ("one module: big-blob pull >= 0.9x static TLS nginx (concurrent)",
     ("ours-onemodule", "w1.blob_conc*"), ("c-tls", "w1.blob_conc*"), ">=", 0.9),
    ("one module: peak RSS below the registry and the proxy as two processes",
     ("ours-onemodule", "w5.rss_peak.total"), ("ours-proxy", "w5.rss_peak.total"), "<", 1.0),
]

OPS = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
}


def load(path):
    figs = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) >= 3:
                try:
                    figs[parts[0]] = float(parts[1])
                except ValueError:
                    pass
    return figs


def lookup(figs, name):
    """The figure NAME; a trailing '*' matches by prefix (w1.blob_conc4_aggregate depends on W1_CONC)."""
    if name.endswith("*"):
        for n, v in figs.items():
            if n.startswith(name[:-1]):
                return v
        return None
    return figs.get(name)


def fmt(v):
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    if v >= 1:
        return "%.2f" % v
    return "%.3f" % v  # so that a ratio just under a threshold does not print as equal to it


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = argv[1]
    if not os.path.isdir(out):
        print("goals.py: %s is not a directory (give bench.sh's BENCH_OUT)" % out, file=sys.stderr)
        return 2
    data = {}  # label -> round -> figs
    for name in os.listdir(out):
        m = re.match(r"^(.*)\.(\d+)\.txt$", name)
        if m:
            data.setdefault(m.group(1), {})[int(m.group(2))] = load(os.path.join(out, name))
    rounds = sorted({r for per in data.values() for r in per})

    print("Goals, checked within each round (value = ours / anchor of the same round, or absolute):")
    print()
    print("| goal | wants | value per round | met |")
    print("|---|---|---|---|")
    for goal, num, den, op, threshold in GOALS:
        values = []
        for r in rounds:
            a = lookup(data.get(num[0], {}).get(r, {}), num[1])
            if a is None:
                continue
            if isinstance(den, str):
                values.append(a)
                continue
            b = lookup(data.get(den[0], {}).get(r, {}), den[1])
            if b:
                values.append(a / b)
        absolute = isinstance(den, str)
        wants = "%s %s%s" % (op, fmt(threshold), " " + den if absolute else "x")
        if not values:
            print("| %s | %s | n/a | n/a |" % (goal, wants))
            continue
        met = sum(1 for v in values if OPS[op](v, threshold))
        verdict = "yes" if met == len(values) else ("no" if met == 0 else "partly")
        print("| %s | %s | %s | %s (%d/%d rounds) |"
              % (goal, wants, " / ".join(fmt(v) for v in values), verdict, met, len(values)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
