#!/usr/bin/env bash
# Build the Debian packages for one architecture: the release binary (once;
# cross-compiled with cross/config.toml for arm64 and armhf), then
# callbox_*.deb (the device) and callbox-room_*.deb (the room service) from
# it with cargo-deb, then lintian on both when it is installed.
# Usage: scripts/package.sh amd64|arm64|armhf [--deb-version V]
# Output: the two .deb paths, one per line, last. Honours CARGO_TARGET_DIR;
# the binary is left at $CARGO_TARGET_DIR/<triple>/release/callbox.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: scripts/package.sh amd64|arm64|armhf [--deb-version V]}; shift
case $arch in
  amd64) triple=x86_64-unknown-linux-gnu ;;
  arm64) triple=aarch64-unknown-linux-gnu ;;
  armhf) triple=armv7-unknown-linux-gnueabihf ;;
  *) echo "package: unknown architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
esac
command -v cargo-deb >/dev/null || { echo "package: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }
out=${CARGO_TARGET_DIR:-target}/debian/$arch
mkdir -p "$out"
cargo build --release --bin callbox --target "$triple" --config cross/config.toml >&2
debs=()
for variant in "" room; do
  deb=$(cargo deb --no-build --strip --target "$triple" ${variant:+--variant "$variant"} --output "$out" "$@")
  debs+=("$deb")
done
if command -v lintian >/dev/null; then
  # Errors fail the build; warnings are printed.
  lintian --fail-on error --tag-display-limit 0 "${debs[@]}" >&2 2> >(grep -v "root privileges" >&2)
fi
printf '%s\n' "${debs[@]}"
