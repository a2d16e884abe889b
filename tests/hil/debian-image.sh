#!/usr/bin/env bash
# Build the Debian 12 guest that runs callbox under a real systemd: a root
# filesystem made by mmdebstrap from Debian's archive (cached, keyed by its
# package list), the board's kernel modules, the test's agent and board
# units from tests/hil/debian/, as an ext4 disk image; and the small
# initramfs that loads the disk's drivers and switches to it.
# Usage: tests/hil/debian-image.sh ARCH PREPARED_DIR ROOTFS_CACHE OUT_IMAGE OUT_INITRD
set -euo pipefail
ARCH=$1 P=$2 CACHE=$3 IMG=$4 INITRD=$5
HERE=$(cd "$(dirname "$0")" && pwd)
case $ARCH in
  x86_64) DEB=amd64 ;;
  arm64) DEB=arm64 ;;
  *) echo "debian-image: unknown arch $ARCH" >&2; exit 1 ;;
esac
# What a board's Debian has, and what the test uses (ip, ps, journalctl come
# with these). callbox's own dependencies are here too: the guest installs
# the .deb with apt but has no network.
PACKAGES="systemd,systemd-sysv,udev,dbus,kmod,iproute2,procps,libasound2,libstdc++6"
key=$(printf '%s %s bookworm minbase' "$DEB" "$PACKAGES" | sha256sum | cut -c1-16)
mkdir -p "$CACHE"
TAR=$CACHE/debian-$DEB-$key.tar
if [ ! -f "$TAR" ]; then
  t=$(date +%s)
  partial=$CACHE/partial-$DEB-$key.tar   # mmdebstrap picks the format by the .tar suffix
  mmdebstrap --quiet --arch="$DEB" --variant=minbase --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale}/*' bookworm "$partial" >&2
  mv "$partial" "$TAR"
  echo "debian-image: $DEB root filesystem built in $(( $(date +%s) - t )) s, cached as $TAR" >&2
fi

KROOT=$P/root
KV=$(ls "$KROOT/lib/modules" | head -1)
S=$(mktemp -d "${TMPDIR:-/tmp}/callbox-debian.XXXXXX")
trap 'rm -rf "$S"' EXIT
R=$S/root
mkdir -p "$R"
tar -xf "$TAR" -C "$R"
. "$HERE/modules.sh"
board_extras "$R" "$KV"
# shellcheck disable=SC2046
copy_modules "$KROOT" "$KV" "$R" $(board_modules) virtio_blk crc32c_generic ext4
printf '%s\n' configfs vivid snd-aloop virtio_net 9pnet_virtio 9p bochs gpio-sim vicodec \
  > "$R/etc/modules-load.d/hil.conf"
install -m 0755 "$P/busybox" "$R/usr/local/bin/busybox"
install -m 0755 "$HERE/guest/hil-agent" "$HERE/guest/hil-gpio" "$R/usr/local/bin/"
install -m 0644 "$HERE"/debian/*.service "$R/etc/systemd/system/"
mkdir -p "$R/etc/systemd/system/multi-user.target.wants" "$R/share"
for u in "$HERE"/debian/*.service; do
  ln -sf "/etc/systemd/system/$(basename "$u")" "$R/etc/systemd/system/multi-user.target.wants/"
done
echo callbox-board > "$R/etc/hostname"
# The serial console is the test's log, not a login.
ln -sf /dev/null "$R/etc/systemd/system/serial-getty@.service"
rm -f "$R/etc/machine-id"; : > "$R/etc/machine-id"
mkfs.ext4 -q -F -L root -d "$R" "$IMG" 1200M

# The initramfs: busybox, the disk's drivers, switch_root to the disk.
I=$S/initrd
mkdir -p "$I"/{bin,dev,proc,sys,newroot}
install -m 0755 "$P/busybox" "$I/bin/busybox"
# ext4's checksums need crc32c, a soft dependency modprobe does not list.
copy_modules "$KROOT" "$KV" "$I" virtio_pci virtio_blk crc32c_generic ext4
cat > "$I/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $m; done
i=0; until [ -b /dev/vda ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done
mount -o rw /dev/vda /newroot || { echo "HIL: cannot mount /dev/vda"; exec sh; }
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$I/init"
( cd "$I" && find . -print0 | cpio --null -o -H newc --quiet ) | gzip -1 > "$INITRD"
