#!/usr/bin/env bash
# Prepare what the hardware-in-the-loop test boots, cached in $CACHE/<kernel ABI>/<arch>:
#   vmlinux (x86_64: the bzImage's xz payload, for a fast PVH boot) or Image (arm64),
#   the Debian kernel's module tree (extracted, depmod'ed; never installed on this machine),
#   gpio-sim.ko built out of tree (Debian's kernels leave GPIO_SIM and IRQ_SIM unset),
#   vicodec.ko, the virtual stateful FWHT codec (and on amd64 v4l2-mem2mem.ko, which
#   Debian builds only for arm64), out of tree too,
#   a static busybox and, for arm64, alsa-utils' aplay (also arecord).
# Usage: tests/hil/prepare.sh CACHE ARCH...   (ARCH: x86_64 | arm64)
# Prints "KABI=<abi>" last. Needs the packages scripts/deps.sh installs.
set -euo pipefail
mkdir -p "$1"; CACHE=$(cd "$1" && pwd); shift
export DEBIAN_FRONTEND=noninteractive
# The current Debian 6.1 kernel ABI (e.g. 6.1.0-56), as the archive has it now.
KABI=${HIL_KABI:-$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)-amd64$/\1/p' | head -1)}
[ -n "$KABI" ] || { echo "hil: cannot find the Debian kernel ABI (apt-cache depends linux-image-amd64)" >&2; exit 1; }
C=$CACHE/$KABI
mkdir -p "$C/debs"

fetch() {  # apt-get download into $C/debs unless already there
  local missing=()
  for p in "$@"; do
    local base=${p%%:*}
    compgen -G "$C/debs/${base}_*.deb" >/dev/null || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] || (cd "$C/debs" && apt-get download -qq "${missing[@]}" 2>&1 | grep -v "unsandboxed as root" >&2 || true)
}

sources() {  # gpio-sim.c, gpiolib.h and irq_sim.c from the matching linux-source
  [ -f "$C/src/gpio-sim.c" ] && return
  fetch linux-source-6.1
  mkdir -p "$C/src.tmp"
  dpkg-deb --fsys-tarfile "$C"/debs/linux-source-6.1_*.deb | tar -xO ./usr/src/linux-source-6.1.tar.xz |
    tar -xJ -C "$C/src.tmp" --strip-components=1 linux-source-6.1/drivers/gpio/gpio-sim.c \
      linux-source-6.1/drivers/gpio/gpiolib.h linux-source-6.1/kernel/irq/irq_sim.c
  mkdir -p "$C/src"
  cp "$C/src.tmp/drivers/gpio/gpio-sim.c" "$C/src.tmp/drivers/gpio/gpiolib.h" "$C/src.tmp/kernel/irq/irq_sim.c" "$C/src/"
  rm -rf "$C/src.tmp"
  # irq_to_desc() is not exported to modules; the exported equivalent does the same job.
  perl -0pi -e 's/\t\tirqnum = irq_find_mapping\(work_ctx->domain, offset\);\n\t\thandle_simple_irq\(irq_to_desc\(irqnum\)\);\n/\t\tgeneric_handle_domain_irq(work_ctx->domain, offset);\n/ or die "irq_sim.c changed: re-check the patch\n"; s/\tint irqnum;\n//' "$C/src/irq_sim.c"
}

# Build modules out of tree against the Debian kernel's headers.
# $1 debian arch, $2 the Kbuild text, $3 a directory of sources, then extra make arguments;
# the .ko files are left in $C/oot-build-$1.
kbuild() {
  local a=$1 kb=$2 srcdir=$3; shift 3
  fetch linux-headers-$KABI-common linux-kbuild-6.1 linux-headers-$KABI-$a:$a
  local hd=$C/hdr-$a m=$C/oot-build-$a
  rm -rf "$hd" "$m"; mkdir -p "$hd" "$m"
  for d in "$C"/debs/linux-headers-$KABI-common_*.deb "$C"/debs/linux-kbuild-6.1_*_amd64.deb "$C"/debs/linux-headers-$KABI-${a}_*.deb; do
    dpkg-deb -x "$d" "$hd"
  done
  local H=$hd/usr/src/linux-headers-$KABI-$a
  sed -i "s#^include /usr/src/#include $hd/usr/src/#" "$H/Makefile"
  cp "$srcdir"/* "$m/"
  printf '%b' "$kb" > "$m/Makefile"
  make -s -C "$H" M="$m" "$@" modules >&2
  rm -rf "$hd"
}

gpiosim() {  # $1 debian arch, $2 output dir, then extra make arguments
  local a=$1 out=$2; shift 2
  [ -f "$out/gpio-sim.ko" ] && return
  sources
  local s=$C/gpiosim-src; rm -rf "$s"; mkdir -p "$s"
  cp "$C/src/gpio-sim.c" "$s/gpio-sim-main.c"; cp "$C/src/gpiolib.h" "$C/src/irq_sim.c" "$s/"
  kbuild "$a" 'obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-main.o irq_sim.o\n' "$s" "$@"
  cp "$C/oot-build-$a/gpio-sim.ko" "$out/"
  rm -rf "$s" "$C/oot-build-$a"
}

vicodec() {  # $1 debian arch, $2 output dir, then extra make arguments
  local a=$1 out=$2; shift 2
  [ -f "$out/vicodec.ko" ] && return
  local s=$C/vicodec-src
  if [ ! -f "$s/vicodec-core.c" ]; then
    fetch linux-source-6.1
    rm -rf "$s.tmp"; mkdir -p "$s.tmp" "$s"
    dpkg-deb --fsys-tarfile "$C"/debs/linux-source-6.1_*.deb | tar -xO ./usr/src/linux-source-6.1.tar.xz |
      tar -xJ -C "$s.tmp" --strip-components=1 --wildcards 'linux-source-6.1/drivers/media/test-drivers/vicodec/*.[ch]' \
        linux-source-6.1/drivers/media/v4l2-core/v4l2-mem2mem.c
    cp "$s.tmp"/drivers/media/test-drivers/vicodec/*.[ch] "$s/"
    cp "$s.tmp/drivers/media/v4l2-core/v4l2-mem2mem.c" "$C/v4l2-mem2mem.c"
    rm -rf "$s.tmp"
  fi
  local kb='obj-m := vicodec.o\nvicodec-y := vicodec-core.o codec-fwht.o codec-v4l2-fwht.o\n'
  local src=$C/vicodec-src-$a; rm -rf "$src"; mkdir -p "$src"; cp "$s"/* "$src/"
  # Debian's amd64 kernel has no v4l2-mem2mem: build it beside vicodec.
  if [ "$a" = amd64 ]; then
    cp "$C/v4l2-mem2mem.c" "$src/"
    kb='obj-m := vicodec.o v4l2-mem2mem.o\nvicodec-y := vicodec-core.o codec-fwht.o codec-v4l2-fwht.o\n'
  fi
  kbuild "$a" "$kb" "$src" "$@"
  cp "$C/oot-build-$a"/*.ko "$out/"
  rm -rf "$src" "$C/oot-build-$a"
}

# The kernel, its modules, gpio-sim, busybox (and arm64's aplay) for one arch.
prepare_arch() {  # $1 arch, $2 debian arch, $3 output dir
  local A=$1 da=$2 D=$3
  rm -rf "$D"; mkdir -p "$D"
  fetch linux-image-$KABI-$da:$da
  dpkg-deb -x "$C"/debs/linux-image-$KABI-${da}_*.deb "$D/root"
  depmod -b "$D/root" "$KABI-$da"
  if [ "$A" = x86_64 ]; then
    # The bzImage's payload is xz: unpacked, qemu boots the ELF through PVH, skipping
    # the decompressor and the BIOS (5-6 s of emulated time).
    perl -e 'local $/; my $d = <STDIN>; my $o = index($d, "\xfd7zXZ\x00"); die "no xz payload\n" if $o < 0; print substr($d, $o)' \
      < "$D/root/boot/vmlinuz-$KABI-amd64" > "$D/payload.xz"
    xz -dc --single-stream "$D/payload.xz" > "$D/vmlinux"
    rm "$D/payload.xz"
    gpiosim amd64 "$D"
    cp /bin/busybox "$D/busybox"
  else
    cp "$D/root/boot/vmlinuz-$KABI-arm64" "$D/vmlinux"   # arm64's Image is not compressed
    gpiosim arm64 "$D" DEB_BUILD_ARCH=amd64 DEB_HOST_ARCH=arm64 DEB_HOST_GNU_TYPE=aarch64-linux-gnu
    fetch busybox-static:arm64 alsa-utils:arm64
    mkdir -p "$D/pkg"
    dpkg-deb -x "$C"/debs/busybox-static_*_arm64.deb "$D/pkg"
    dpkg-deb -x "$C"/debs/alsa-utils_*_arm64.deb "$D/pkg"
    cp "$D/pkg/bin/busybox" "$D/busybox"
    mkdir -p "$D/bin"; cp "$D/pkg/usr/bin/aplay" "$D/bin/aplay"   # arecord is aplay under another name
    rm -rf "$D/pkg"
  fi
  rm -rf "$D/root/usr/share" "$D/root/boot"
  touch "$D/.done"
}

for A in "$@"; do
  case $A in
    x86_64) da=amd64 ;;
    arm64) da=arm64 ;;
    *) echo "hil: unknown arch $A" >&2; exit 1 ;;
  esac
  D=$C/$A
  [ -f "$D/.done" ] || prepare_arch "$A" "$da" "$D"
  if [ "$A" = x86_64 ]; then vicodec amd64 "$D"; else
    vicodec arm64 "$D" DEB_BUILD_ARCH=amd64 DEB_HOST_ARCH=arm64 DEB_HOST_GNU_TYPE=aarch64-linux-gnu; fi
done
echo "KABI=$KABI"
