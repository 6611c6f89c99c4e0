#!/usr/bin/env bash
# Installs the system packages dfs needs to build, run and test, from Debian.
# Idempotent and quick when everything is present; `apt-get update` runs only
# when something is missing (or always with DFS_APT_UPDATE=1, as CI does).
set -euo pipefail
# gcc: bundled SQLite and ring (TLS) compile C.
packages=(postgresql postgresql-client fuse3 psmisc rsync attr e2fsprogs git prometheus gcc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "cargo is not installed: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if [ "${DFS_APT_UPDATE:-0}" = 1 ] || [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # Debian's postgresql package starts a system cluster; dfs tests use their own.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# fsx (File System eXerciser, fsx-rs from crates.io) for the mount tests.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v fsx >/dev/null 2>&1 && [ ! -x "$cargo_bin/fsx" ]; then
  echo "installing fsx (cargo install fsx)"
  cargo install --locked --quiet --version 0.3.2 fsx
fi
