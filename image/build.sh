#!/usr/bin/env bash
# Builds the module image from this checkout: a static `dist` binary (glibc, +crt-static;
# no .cargo/config needed), then `connected-registry image export` packages it. No Docker
# daemon and no base image are involved.
#
#   image/build.sh                          # writes target/image/connected-registry-VERSION-ARCH.{docker,oci}.tar
#   image/build.sh --push REGISTRY[/REPO]   # also pushes REGISTRY/connected-registry:VERSION and :latest
#
# Environment: TARGET (default x86_64-unknown-linux-gnu; CI sets aarch64-/armv7- triples with
# a cross linker), PLATFORM (default: from TARGET), CARGO_TARGET_DIR (default ./target).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${TARGET:-x86_64-unknown-linux-gnu}
case "$target" in
  x86_64-*) platform=${PLATFORM:-linux/amd64} ;;
  aarch64-*) platform=${PLATFORM:-linux/arm64/v8} ;;
  armv7-*) platform=${PLATFORM:-linux/arm/v7} ;;
  *) echo "unknown TARGET $target: set PLATFORM too" >&2; platform=${PLATFORM:?} ;;
esac
target_dir=${CARGO_TARGET_DIR:-target}
version=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="connected-registry"))')

# Static: the image has no libc. The `dist` profile (Cargo.toml): whole-program optimized; the
# image is what devices download (sizes: README, Performance > Size).
#
# The functions start-up and the first requests run are laid out together, so that an idle
# `serve` keeps a few MiB of its code resident instead of most of it (README, "Size, idle memory,
# start"): image/startup-order.txt, made by image/startup-order.py from this very build with
# its symbols (KEEP_SYMBOLS=1). The list names symbols, and cargo hashes RUSTFLAGS and the
# profile's `strip` into every symbol name, so both stay the same whether or not symbols are
# kept: the symbols are stripped by the linker instead, and these linker arguments reach it
# through the binary's build script (build.rs, CONNECTED_REGISTRY_LINK_ARGS), not RUSTFLAGS.
# rust-lld, this target's default linker, skips the names it does not find, so a stale list
# costs its benefit, never the build; the cross builds link with their GNU toolchains (no such
# option) and go without. STARTUP_ORDER= (empty) builds without the list.
order=${STARTUP_ORDER-$PWD/image/startup-order.txt}
link_args=()
if [ -n "$order" ] && [ "$target" = x86_64-unknown-linux-gnu ]; then
  [ -f "$order" ] || { echo "image/build.sh: STARTUP_ORDER=$order: no such file (image/startup-order.py makes it; STARTUP_ORDER= builds without)" >&2; exit 2; }
  link_args+=("-Wl,--symbol-ordering-file=$order" -Wl,--no-warn-symbol-ordering)
fi
[ "${KEEP_SYMBOLS:-0}" = 1 ] || link_args+=(-Wl,--strip-all)
CARGO_PROFILE_DIST_STRIP=false CONNECTED_REGISTRY_LINK_ARGS="${link_args[*]}" \
  RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile dist --locked --target "$target" --bin connected-registry
binary="$target_dir/$target/dist/connected-registry"

# The packaging tool is the binary of this machine (a cross-built one cannot run here).
case "$target" in
  "$(uname -m)"-*) packager=$binary ;;
  *) cargo build --release --locked --bin connected-registry; packager="$target_dir/release/connected-registry" ;;
esac

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
out="$target_dir/image"
mkdir -p "$out"
arch=${platform#linux/}; arch=${arch//\//-}
common=(--binary "$binary" --platform "$platform" --revision "$revision")
[ -n "${SOURCE_URL:-}" ] && common+=(--source "$SOURCE_URL")
"$packager" image export "${common[@]}" --format docker-archive -o "$out/connected-registry-$version-$arch.docker.tar"
"$packager" image export "${common[@]}" --format oci -o "$out/connected-registry-$version-$arch.oci.tar"
ls -l "$binary" "$out"/connected-registry-"$version"-"$arch".*.tar

if [ "${1:-}" = "--push" ]; then
  dest=${2:?usage: image/build.sh --push REGISTRY[/REPOSITORY]}
  case "$dest" in */*) ;; *) dest="$dest/connected-registry" ;; esac
  "$packager" image push "${common[@]}" "$dest:$version-$arch"
fi
