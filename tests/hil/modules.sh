# Sourced by the guest image builders. copy_modules KROOT KV DEST MODULE...:
# the Debian kernel's modules (from its extracted tree KROOT) and what they
# depend on, decompressed (busybox modprobe reads plain .ko), into
# DEST/lib/modules/KV, then the out-of-tree ones from $P (gpio-sim, vicodec,
# and v4l2-mem2mem where Debian does not build it), and a module database.
copy_modules() {
  local kroot=$1 kv=$2 dest=$3; shift 3
  local moddir=$kroot/lib/modules/$kv cmd path rel out
  declare -A seen=()
  for name in "$@"; do
    while read -r cmd path _; do
      [ "$cmd" = insmod ] || continue
      rel=${path#"$moddir/"}
      case $rel in *.ko.xz) out=${rel%.xz} ;; *.ko.zst) out=${rel%.zst} ;; *) out=$rel ;; esac
      [ -n "${seen[$out]:-}" ] && continue
      seen[$out]=1
      mkdir -p "$dest/lib/modules/$kv/$(dirname "$out")"
      case $rel in
        *.ko.xz) xz -dc "$path" > "$dest/lib/modules/$kv/$out" ;;
        *.ko.zst) zstd -qdc "$path" > "$dest/lib/modules/$kv/$out" ;;
        *) cp "$path" "$dest/lib/modules/$kv/$out" ;;
      esac
    done < <(modprobe -d "$kroot" -S "$kv" --show-depends "$name")
  done
  cp "$moddir"/modules.{order,builtin,builtin.modinfo} "$dest/lib/modules/$kv/" 2>/dev/null || true
  depmod -b "$dest" "$kv"
}

# The board's modules: the camera, sound card, GPIO simulator, codec, screen,
# network and the 9p share (v4l2-mem2mem: from Debian's tree where it has it).
board_modules() {
  local mods="configfs vivid snd-aloop virtio_pci virtio_net 9pnet_virtio 9p bochs"
  [ -f "$P/v4l2-mem2mem.ko" ] || mods="$mods v4l2-mem2mem"
  echo "$mods"
}

# The out-of-tree modules and the board's module options.
board_extras() {
  local dest=$1 kv=$2
  mkdir -p "$dest/lib/modules/$kv/extra" "$dest/etc/modprobe.d"
  cp "$P/gpio-sim.ko" "$P/vicodec.ko" "$dest/lib/modules/$kv/extra/"
  [ -f "$P/v4l2-mem2mem.ko" ] && cp "$P/v4l2-mem2mem.ko" "$dest/lib/modules/$kv/extra/"
  cat > "$dest/etc/modprobe.d/hil.conf" <<'CONF'
options vivid n_devs=1 node_types=0x1
options snd-aloop index=0 id=Loopback pcm_substreams=2
options vicodec multiplanar=1
CONF
}
