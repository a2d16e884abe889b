#!/usr/bin/env bash
# Build the guest's initramfs: busybox, the kernel modules the board would have
# (vivid, snd-aloop, gpio-sim, vicodec, virtio net + 9p), the callbox binary with the
# shared libraries it needs, aplay/arecord, and tests/hil/guest/* as /init and
# helpers.
# Usage: tests/hil/initramfs.sh ARCH PREPARED_DIR CALLBOX_BINARY OUT
set -euo pipefail
ARCH=$1 P=$2 BIN=$3 OUT=$4
HERE=$(cd "$(dirname "$0")" && pwd)
case $ARCH in
  x86_64) TRIPLE=x86_64-linux-gnu; LIBDIRS="/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu"
          STRIP=strip; APLAY=$(command -v aplay) ;;
  arm64)  TRIPLE=aarch64-linux-gnu; LIBDIRS="/usr/aarch64-linux-gnu/lib /lib/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu"
          STRIP=aarch64-linux-gnu-strip; APLAY=$P/bin/aplay ;;
  *) echo "initramfs: unknown arch $ARCH" >&2; exit 1 ;;
esac
KROOT=$P/root
KV=$(ls "$KROOT/lib/modules" | head -1)
S=$(mktemp -d "${TMPDIR:-/tmp}/callbox-hil-stage.XXXXXX")
trap 'rm -rf "$S"' EXIT
mkdir -p "$S"/{bin,sbin,usr/bin,usr/share,proc,sys,dev,tmp,run,share,etc/callbox,lib/$TRIPLE,lib/modules/$KV/extra}
cp "$P/busybox" "$S/bin/busybox"

# The board's modules, the out-of-tree ones and their options.
. "$HERE/modules.sh"
board_extras "$S" "$KV"
# shellcheck disable=SC2046
copy_modules "$KROOT" "$KV" "$S" $(board_modules)   # depmod: the guest's modprobe can load vivid again after rmmod

# Programs and the shared libraries they need (DT_NEEDED, transitively).
install -m 0755 "$BIN" "$S/usr/bin/callbox"
$STRIP "$S/usr/bin/callbox"
install -m 0755 "$APLAY" "$S/usr/bin/aplay"
ln -s aplay "$S/usr/bin/arecord"
declare -A have=()
needs() {
  local lib dir
  for lib in $(readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ -n "${have[$lib]:-}" ] && continue
    for dir in $LIBDIRS; do
      if [ -e "$dir/$lib" ]; then
        have[$lib]=1
        cp -L "$dir/$lib" "$S/lib/$TRIPLE/$lib"
        needs "$dir/$lib"
        break
      fi
    done
    [ -n "${have[$lib]:-}" ] || { echo "initramfs: $lib (needed by $1) not found in $LIBDIRS" >&2; exit 1; }
  done
}
needs "$BIN"
needs "$APLAY"
interp=$(readelf -l "$BIN" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
mkdir -p "$S$(dirname "$interp")"
for dir in $LIBDIRS; do
  [ -e "$dir/$(basename "$interp")" ] && { cp -L "$dir/$(basename "$interp")" "$S$interp"; break; }
done
[ -e "$S$interp" ] || { echo "initramfs: no $interp" >&2; exit 1; }
cp -r /usr/share/alsa "$S/usr/share/"   # alsa-lib's configuration (arch independent)

install -m 0755 "$HERE/guest/init" "$S/init"
install -m 0755 "$HERE/guest/hil-agent" "$HERE/guest/hil-device" "$HERE/guest/hil-gpio" "$S/bin/"

( cd "$S" && find . -print0 | cpio --null -o -H newc --quiet ) | gzip -1 > "$OUT"
