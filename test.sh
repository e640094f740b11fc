#!/usr/bin/env bash
# The README's test command: installs the real peers the tests drive (Debian packages),
# then runs every test in the workspace. Safe to run again; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

packages=(skopeo docker-registry docker.io podman openssl iproute2 curl ca-certificates bsdutils prometheus postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Azurite, Microsoft's Azure Storage emulator, for the Azure Blob Storage backend's tests
# (`serve --storage azblob://`): an npm package, kept out of the repository.
azurite_prefix="$HOME/.cache/connected-registry-azurite"
if [ ! -x "$azurite_prefix/node_modules/.bin/azurite-blob" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "installing: nodejs npm (for Azurite)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  echo "installing: azurite (npm) into $azurite_prefix" >&2
  npm install --silent --no-audit --no-fund --prefix "$azurite_prefix" azurite@3
fi

# Debian installs docker-registry as a service on :5000; the tests start their own instances.
if command -v systemctl >/dev/null 2>&1; then systemctl stop docker-registry 2>/dev/null || true; fi

cargo test --workspace --locked "$@"
