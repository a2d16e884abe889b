#!/usr/bin/env bash
# Install what callbox needs to build and test, if missing: Debian packages
# (build deps, Chromium for the browser tests, Node.js if absent) and the
# browser tests' npm packages. Needs root (or sudo). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# systemd: systemd-analyze checks the unit files.
pkgs=(libasound2-dev cmake libclang-dev nasm pkg-config chromium iproute2 systemd)
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all Debian packages present"
else
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "deps: installing ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The browser tests drive Debian's Chromium with playwright-core (never a downloaded browser).
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "deps: npm ci in tests/browser"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
command -v cargo >/dev/null || { echo "deps: cargo not found: install Rust (rustup) first" >&2; exit 1; }
