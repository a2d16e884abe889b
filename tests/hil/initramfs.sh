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
MODDIR=$KROOT/lib/modules/$KV
S=$(mktemp -d "${TMPDIR:-/tmp}/callbox-hil-stage.XXXXXX")
trap 'rm -rf "$S"' EXIT
mkdir -p "$S"/{bin,sbin,usr/bin,usr/share,proc,sys,dev,tmp,run,share,etc/callbox,lib/$TRIPLE,lib/modules/$KV/extra}
cp "$P/busybox" "$S/bin/busybox"

# The modules and what they depend on, decompressed (busybox modprobe reads
# plain .ko), with a module database for the guest's modprobe.
declare -A seen=()
mods="configfs vivid snd-aloop virtio_pci virtio_net 9pnet_virtio 9p bochs"
# vicodec's v4l2-mem2mem: in Debian's arm64 tree, built beside vicodec for amd64.
[ -f "$P/v4l2-mem2mem.ko" ] || mods="$mods v4l2-mem2mem"
for name in $mods; do
  while read -r cmd path _; do
    [ "$cmd" = insmod ] || continue
    rel=${path#"$MODDIR/"}
    case $rel in *.ko.xz) out=${rel%.xz} ;; *.ko.zst) out=${rel%.zst} ;; *) out=$rel ;; esac
    [ -n "${seen[$out]:-}" ] && continue
    seen[$out]=1
    mkdir -p "$S/lib/modules/$KV/$(dirname "$out")"
    case $rel in
      *.ko.xz) xz -dc "$path" > "$S/lib/modules/$KV/$out" ;;
      *.ko.zst) zstd -qdc "$path" > "$S/lib/modules/$KV/$out" ;;
      *) cp "$path" "$S/lib/modules/$KV/$out" ;;
    esac
  done < <(modprobe -d "$KROOT" -S "$KV" --show-depends "$name")
done
cp "$P/gpio-sim.ko" "$P/vicodec.ko" "$S/lib/modules/$KV/extra/"
[ -f "$P/v4l2-mem2mem.ko" ] && cp "$P/v4l2-mem2mem.ko" "$S/lib/modules/$KV/extra/"
mkdir -p "$S/etc/modprobe.d"
cat > "$S/etc/modprobe.d/hil.conf" <<'CONF'
options vivid n_devs=1 node_types=0x1
options snd-aloop index=0 id=Loopback pcm_substreams=2
options vicodec multiplanar=1
CONF
cp "$MODDIR"/modules.{order,builtin,builtin.modinfo} "$S/lib/modules/$KV/" 2>/dev/null || true
depmod -b "$S" "$KV"   # so the guest's modprobe can load vivid again after rmmod

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
install -m 0755 "$HERE/guest/hil-agent" "$HERE/guest/hil-device" "$S/bin/"

( cd "$S" && find . -print0 | cpio --null -o -H newc --quiet ) | gzip -1 > "$OUT"
