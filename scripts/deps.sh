#!/usr/bin/env bash
# Install what callbox needs to build and test, if missing: Debian packages
# (build deps, Chromium for the browser tests, Node.js if absent) and the
# browser tests' npm packages. Needs root (or sudo). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# systemd: systemd-analyze checks the unit files.
# espeak-ng: the echo canceller's tests speak their far and near ends.
# coturn: the TURN server the network tests relay calls through; iptables:
# those tests block UDP inside network namespaces they make.
# janus: the SFU engine the device's Janus backend is tested against.
# ffmpeg: stands in for a board's capture program (video.source = "command").
# qemu ... make: the hardware-in-the-loop test (tests/hil/) boots a Debian
# kernel with vivid, snd-aloop and an out-of-tree gpio-sim under qemu.
# mmdebstrap ... lintian: the Debian packages, checked by lintian and installed
# in a Debian 12 guest under systemd, whose root filesystem mmdebstrap builds
# (arm64 through qemu-user-static).
pkgs=(libasound2-dev cmake libclang-dev nasm pkg-config chromium iproute2 systemd
      qemu-system-x86 qemu-system-arm busybox-static cpio xz-utils kmod alsa-utils gcc make binutils
      espeak-ng coturn iptables janus ffmpeg
      mmdebstrap arch-test qemu-user-static binfmt-support e2fsprogs lintian)
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all Debian packages present"
else
  echo "deps: installing ${missing[*]}"
  # A mirror mid-sync can fail one index; the install below says if it matters.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || echo "deps: WARNING: apt-get update reported errors"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The arm64 leg of the hardware-in-the-loop test cross-builds callbox
# (cross/config.toml). Optional: if any of it cannot be installed, that leg
# is skipped with a message saying why.
arm_pkgs=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross libasound2-dev:arm64)
arm_missing=()
for p in "${arm_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || arm_missing+=("$p")
done
if [ ${#arm_missing[@]} -gt 0 ]; then
  echo "deps: installing (optional, for the arm64 build) ${arm_missing[*]}"
  $sudo dpkg --add-architecture arm64
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || echo "deps: WARNING: apt-get update reported errors"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${arm_missing[@]}"; then
    echo "deps: WARNING: the arm64 cross toolchain could not be installed; the arm64 HIL leg will be skipped"
  fi
fi
if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu ||
    echo "deps: WARNING: rustup could not add aarch64-unknown-linux-gnu; the arm64 HIL leg will be skipped"
fi
# qemu-user-static registers its binfmt handlers only where binfmt_misc is
# mounted: mount it (a container may refuse; the arm64 package scenarios are
# then skipped with a message).
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || $sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  $sudo update-binfmts --enable qemu-aarch64 2>/dev/null ||
    echo "deps: WARNING: no qemu-aarch64 binfmt handler; the arm64 Debian package scenarios will be skipped"
fi
# cargo-deb makes the Debian packages (scripts/package.sh).
if ! command -v cargo-deb >/dev/null || [ "$(cargo-deb --version 2>/dev/null)" != "cargo-deb 3.8.0" ]; then
  echo "deps: cargo install cargo-deb 3.8.0"
  cargo install cargo-deb --version 3.8.0 --locked --quiet
fi
# The browser tests drive Debian's Chromium with playwright-core (never a downloaded browser);
# tls-sig-api-v2 is Tencent's own signing library: tests check callbox
# accepts the privateMapKeys it makes.
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/tls-sig-api-v2 ]; then
  echo "deps: npm ci in tests/browser"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
command -v cargo >/dev/null || { echo "deps: cargo not found: install Rust (rustup) first" >&2; exit 1; }
