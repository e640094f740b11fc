#!/usr/bin/env python3
"""Where the bytes of the binary's code are: `.text` by crate, `cargo bloat --crates` style, for
the shipped build (issue 16; figures in README.md, Performance > Size).

Why not `cargo bloat`: it builds the binary itself, and the shipped build is a fat-LTO static
`dist` build whose symbols are named after flags `image/build.sh` sets; this reads the build
`KEEP_SYMBOLS=1 image/build.sh` leaves instead. Fat LTO merges the crates into one object, so a
function is attributed by its (demangled) name: the first path segment, and for
`<T as Trait>::f` the crate of `T`. Generic code of `core`, `alloc` and `std` instantiated for
another crate's types (drop glue, iterators) counts under `core`/`alloc`/`std`, as in
cargo bloat. C and assembly (aws-lc, glibc) have no Rust path: aws-lc's exported functions carry
its `aws_lc_` prefix; the rest is `[C]`.

Usage: text-by-crate.py BINARY_WITH_SYMBOLS [TOP=30]
"""
import collections
import re
import subprocess
import sys

PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def crate_of(name):
    if "::" not in name:
        return "aws_lc (C)" if name.startswith("aws_lc") else "[C]"
    inner = re.sub(r"^[<&*( ]+|^(dyn|impl|mut|const) ", "", name)
    match = PATH.match(inner)
    return match.group(1) if match else "[other Rust]"


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    out = subprocess.run(["nm", "-S", "-C", "--size-sort", binary],
                         capture_output=True, text=True, check=True).stdout
    if not out.strip():
        raise SystemExit(f"text-by-crate: {binary} has no symbols (KEEP_SYMBOLS=1 image/build.sh)")
    sizes = collections.Counter()
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tTwW":
            sizes[crate_of(parts[3])] += int(parts[1], 16)
    total = sum(sizes.values())
    print(f"{binary}: {total / 2**20:.1f} MiB of functions")
    for crate, size in sizes.most_common(top):
        print(f"{size / 1024:8.0f} KiB  {100 * size / total:4.1f} %  {crate}")
    rest = sizes.most_common()[top:]
    if rest:
        print(f"{sum(s for _, s in rest) / 1024:8.0f} KiB  in {len(rest)} more")


if __name__ == "__main__":
    main()
