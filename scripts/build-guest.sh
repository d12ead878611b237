#!/usr/bin/env bash
# Builds Offshoot's embedded default guest from Debian packages: the Debian
# kernel (downloaded with apt-get download and unpacked with dpkg-deb, never
# installed on the host), an initramfs with busybox-static, the real qemu-ga
# with its libraries, the virtio/ext4/ACPI modules and the init scripts in
# src/guest/rootfs, and a 1 GiB ext4 data disk (qcow2) holding /README.
#
# Output: <repo>/.cache/guest/<inputs-hash>/{vmlinuz,initrd.img,data.qcow2,
# manifest.json}, and <repo>/.cache/guest/current -> <inputs-hash>. The hash
# covers every input (package versions, the binaries copied in, the rootfs
# files, this script), so a rerun with unchanged inputs only prints "up to
# date". A build happens in a temporary directory beside the cache and is
# renamed into place whole; the three newest builds are kept, so a VM still
# running on the previous build's files keeps them (copy data.qcow2 into a
# datastore before using it as a long-lived backing file).
#
# Run as root, after apt-get update. Prints one line: built or up to date.
set -euo pipefail
umask 022
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$REPO/scripts/build-guest.sh"
ROOTFS_SRC="$REPO/src/guest/rootfs"
CACHE="$REPO/.cache/guest"

# Kernel command line. console=ttyS0: the init's markers go to the serial
# port; quiet keeps TCG boots fast (serial output is slow); panic=-1 reboots
# at once on panic (QEMU then exits when run with -no-reboot);
# cryptomgr.notests skips the crypto self-tests (about 1 s under TCG).
CMDLINE='console=ttyS0 quiet panic=-1 cryptomgr.notests'

# Modules to load, in this order; the dependencies that modinfo's "depends"
# names are added before each module that needs them. evdev lets busybox
# acpid read the power button; crc32c_generic is what ext4's metadata
# checksums ask the crypto API for.
MODULES=(
  virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  virtio_console virtio_blk failover net_failover virtio_net virtio_rng
  crc16 mbcache jbd2 crc32c_generic ext4 evdev button
)

die() { echo "build-guest: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs missing packages and makes device nodes)"

# --- Tools and packages -----------------------------------------------------
missing=()
dpkg-query -W -f='${Status}\n' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
dpkg-query -W -f='${Status}\n' qemu-guest-agent 2>/dev/null | grep -q 'ok installed' || missing+=(qemu-guest-agent)
command -v mke2fs >/dev/null || missing+=(e2fsprogs)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v cpio >/dev/null || missing+=(cpio)
if [ "${#missing[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "cannot install ${missing[*]} (run apt-get update first)"
fi
BUSYBOX=/bin/busybox
QGA=/usr/sbin/qemu-ga
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (package busybox-static)"
[ -x "$QGA" ] || die "$QGA missing (package qemu-guest-agent)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# --- Which kernel -----------------------------------------------------------
# apt-cache takes about a second here (no binary package cache), so its
# answer is kept in a stamp keyed by the package lists' names, sizes and
# times: it is asked again only after an apt-get update changed them.
lists_key=$( (stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null || true) | sha256sum | cut -c1-32)
stamp="$CACHE/.kernel-candidate"
KPKG='' KVER=''
if [ -r "$stamp" ]; then
  read -r key pkg ver < "$stamp" || true
  if [ "${key:-}" = "$lists_key" ]; then KPKG=$pkg KVER=$ver; fi
fi
if [ -z "$KPKG" ] || [ -z "$KVER" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | grep -o 'linux-image-[0-9][^ ,]*-amd64' | head -n1 || true)
  [ -n "$KPKG" ] || die "cannot find the kernel package behind linux-image-amd64 (run apt-get update first)"
  KVER=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
  [ -n "$KVER" ] || die "no version of $KPKG is available"
  echo "$lists_key $KPKG $KVER" > "$stamp.tmp"
  mv -f "$stamp.tmp" "$stamp"
fi
KREL=${KPKG#linux-image-}

BB_VER=$(dpkg-query -W -f='${Version}' busybox-static)
QGA_VER=$(dpkg-query -W -f='${Version}' qemu-guest-agent)

# qemu-ga's shared libraries and the dynamic loader, as ldd resolves them.
mapfile -t QGA_LIBS < <(ldd "$QGA" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ "${#QGA_LIBS[@]}" -gt 0 ] || die "ldd found no libraries for $QGA"

# --- Inputs hash --------------------------------------------------------------
HASH=$(
  {
    echo "kernel $KPKG $KVER"
    echo "busybox-static $BB_VER"
    echo "qemu-guest-agent $QGA_VER"
    echo "cmdline $CMDLINE"
    echo "modules ${MODULES[*]}"
    sha256sum "$SCRIPT" "$BUSYBOX" "$QGA" "${QGA_LIBS[@]}" | awk '{ print $1 }'
    (cd "$ROOTFS_SRC" && find . \( -type f -o -type l \) -print | sort | while read -r f; do
      if [ -L "$f" ]; then echo "link $f $(readlink "$f")"; else echo "file $f $(sha256sum < "$f" | cut -c1-64)"; fi
    done)
  } | sha256sum | cut -c1-16
)
OUT="$CACHE/$HASH"

point_current() {
  if [ "$(readlink "$CACHE/current" 2>/dev/null || true)" != "$HASH" ]; then
    ln -sfn "$HASH" "$CACHE/.current.tmp"
    mv -fT "$CACHE/.current.tmp" "$CACHE/current"
  fi
}

if [ -f "$OUT/manifest.json" ]; then
  point_current
  echo "guest: up to date ($HASH, kernel $KREL) in $OUT"
  exit 0
fi

# --- Build ----------------------------------------------------------------------
started=$(date +%s.%N)
rm -rf "$CACHE"/.build-*   # left by an interrupted build (we hold the lock)
WORK=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP   # so that the EXIT trap cleans up on signals too
ROOT="$WORK/root"
STAGE="$WORK/out"
mkdir -p "$WORK/dl" "$WORK/kernel" "$ROOT" "$STAGE"

# Kernel package: download and unpack only.
if id _apt >/dev/null 2>&1; then chown _apt "$WORK/dl"; fi
(cd "$WORK/dl" && apt-get download -qq "$KPKG=$KVER" >/dev/null 2>&1) \
  || (cd "$WORK/dl" && apt-get download "$KPKG=$KVER" >&2) \
  || die "apt-get download $KPKG=$KVER failed"
dpkg-deb -x "$WORK/dl/${KPKG}_"*.deb "$WORK/kernel"
MODDIR=''
for d in "$WORK/kernel/lib/modules/$KREL" "$WORK/kernel/usr/lib/modules/$KREL"; do
  [ -d "$d" ] && MODDIR=$d
done
[ -n "$MODDIR" ] || die "$KPKG has no lib/modules/$KREL"
[ -f "$WORK/kernel/boot/vmlinuz-$KREL" ] || die "$KPKG has no boot/vmlinuz-$KREL"
cp "$WORK/kernel/boot/vmlinuz-$KREL" "$STAGE/vmlinuz"

# The uncompressed kernel (ELF vmlinux), unpacked from the bzImage. QEMU boots
# it through its PVH entry point, which skips decompressing the kernel in the
# guest: under TCG that alone took 5-6 s of a 10 s boot. Used when the
# kernel has CONFIG_PVH; otherwise the manifest names vmlinuz.
KERNEL_FILE=vmlinuz
if grep -qx 'CONFIG_PVH=y' "$WORK/kernel/boot/config-$KREL" 2>/dev/null; then
  for fmt in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
    tool=${fmt%%:*} magic=${fmt#*:}
    offset=$(grep -aobP "$magic" "$STAGE/vmlinuz" | head -n1 | cut -d: -f1 || true)
    [ -n "$offset" ] || continue
    case "$tool" in
      xz) tail -c +$((offset + 1)) "$STAGE/vmlinuz" | xz -dcq --single-stream > "$WORK/vmlinux" 2>/dev/null || true ;;
      zstd) tail -c +$((offset + 1)) "$STAGE/vmlinuz" | zstd -dcq > "$WORK/vmlinux" 2>/dev/null || true ;;
      gzip) tail -c +$((offset + 1)) "$STAGE/vmlinuz" | gzip -dcq > "$WORK/vmlinux" 2>/dev/null || true ;;
    esac
    if [ "$(head -c4 "$WORK/vmlinux" 2>/dev/null)" = $'\x7fELF' ]; then
      mv "$WORK/vmlinux" "$STAGE/vmlinux"
      KERNEL_FILE=vmlinux
      break
    fi
  done
fi

# Root file system skeleton.
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,run,data,mnt,root,var/log}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
ln -s ../run "$ROOT/var/run"
ln -s ../tmp "$ROOT/var/tmp"
mknod -m 600 "$ROOT/dev/console" c 5 1
mknod -m 666 "$ROOT/dev/null" c 1 3

# busybox and its applet links.
cp "$BUSYBOX" "$ROOT/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
  [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done

# qemu-ga with every library ldd lists, at the same paths.
cp "$QGA" "$ROOT/usr/sbin/qemu-ga"
for lib in "${QGA_LIBS[@]}"; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done

# Modules: resolve dependencies from each module's .modinfo "depends=" (the
# package ships no modules.dep), in load order.
declare -A MODPATH=() LOADED=()
while IFS= read -r -d '' ko; do
  name=$(basename "$ko"); name=${name%%.ko*}; name=${name//-/_}
  MODPATH[$name]=${ko#"$MODDIR"/}
done < <(find "$MODDIR/kernel" -name '*.ko*' -print0)
BUILTIN=$(sed -e 's|.*/||' -e 's|\.ko.*||' -e 's|-|_|g' "$MODDIR/modules.builtin" 2>/dev/null || true)
LOAD_ORDER=()
BUILTIN_USED=()
mod_depends() {
  local ko="$MODDIR/${MODPATH[$1]}"
  case "$ko" in
    *.ko) tr '\0' '\n' < "$ko" ;;
    *.ko.xz) xz -dc "$ko" | tr '\0' '\n' ;;
    *.ko.zst) zstd -qdc "$ko" | tr '\0' '\n' ;;
    *.ko.gz) gzip -dc "$ko" | tr '\0' '\n' ;;
  esac | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}
add_module() {
  local name=${1//-/_} dep
  [ -n "${LOADED[$name]:-}" ] && return 0
  LOADED[$name]=1
  if [ -z "${MODPATH[$name]:-}" ]; then
    if grep -qx "$name" <<< "$BUILTIN"; then BUILTIN_USED+=("$name"); return 0; fi
    die "module $name is neither in $KPKG nor built in"
  fi
  for dep in $(mod_depends "$name"); do add_module "$dep"; done
  LOAD_ORDER+=("$name")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
GUEST_MODDIR="$ROOT/lib/modules/$KREL"
mkdir -p "$GUEST_MODDIR"
: > "$GUEST_MODDIR/offshoot.load"
for name in "${LOAD_ORDER[@]}"; do
  src="$MODDIR/${MODPATH[$name]}"
  rel=${MODPATH[$name]%%.ko*}.ko   # busybox insmod wants plain .ko
  mkdir -p "$(dirname "$GUEST_MODDIR/$rel")"
  case "$src" in
    *.ko) cp "$src" "$GUEST_MODDIR/$rel" ;;
    *.ko.xz) xz -dc "$src" > "$GUEST_MODDIR/$rel" ;;
    *.ko.zst) zstd -qdc "$src" > "$GUEST_MODDIR/$rel" ;;
    *.ko.gz) gzip -dc "$src" > "$GUEST_MODDIR/$rel" ;;
  esac
  echo "$rel" >> "$GUEST_MODDIR/offshoot.load"
done
cp "$MODDIR/modules.builtin" "$GUEST_MODDIR/" 2>/dev/null || true
"$BUSYBOX" depmod -b "$ROOT" "$KREL"   # so that modprobe finds the shipped ones

# The init scripts and configuration, over the busybox links.
cp -a --remove-destination "$ROOTFS_SRC/." "$ROOT/"
chown -R 0:0 "$ROOT"
find "$ROOT/etc" "$ROOT/sbin" "$ROOT/usr/share" "$ROOT/init" -type f -print0 | while IFS= read -r -d '' f; do
  if [ "$(head -c2 "$f")" = '#!' ]; then chmod 0755 "$f"; else chmod 0644 "$f"; fi
done
for verb in poweroff reboot halt; do ln -sfn offshoot-halt "$ROOT/sbin/$verb"; done
cat > "$ROOT/etc/os-release" <<EOF
NAME="Offshoot default guest"
ID=offshoot
VERSION_ID=$HASH
PRETTY_NAME="Offshoot default guest ($HASH, Debian kernel $KREL)"
OFFSHOOT_KERNEL_PACKAGE="$KPKG $KVER"
OFFSHOOT_BUSYBOX="$BB_VER"
OFFSHOOT_QEMU_GUEST_AGENT="$QGA_VER"
EOF

# initramfs: newc cpio, gzip (the kernel accepts gzip, xz, zstd and more).
(cd "$ROOT" && find . -mindepth 1 -print0 | sort -z \
  | cpio --null -o -H newc --owner 0:0 --reproducible --quiet) | gzip -n -6 > "$STAGE/initrd.img"

# Data disk: ext4 with /README, 1 GiB virtual, sparse qcow2. Inode tables and
# journal are zeroed here so the guest kernel never starts lazy init writes.
mkdir -p "$WORK/data"
cat > "$WORK/data/README" <<'EOF'
Offshoot default guest data disk.
The default guest mounts this ext4 file system at /data.
EOF
chmod 0644 "$WORK/data/README"
truncate -s 1G "$WORK/data.raw"
mke2fs -q -F -t ext4 -L offshoot-data -m 0 \
  -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
  -d "$WORK/data" "$WORK/data.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/data.raw" "$STAGE/data.qcow2"
rm -f "$WORK/data.raw"

# Manifest (paths relative to this directory).
json_list() { local first=1 x; printf '['; for x in "$@"; do [ $first = 1 ] || printf ', '; first=0; printf '"%s"' "$x"; done; printf ']'; }
cat > "$STAGE/manifest.json" <<EOF
{
  "kernelRelease": "$KREL",
  "kernelPackage": "$KPKG",
  "kernelPackageVersion": "$KVER",
  "busyboxVersion": "$BB_VER",
  "qemuGuestAgentVersion": "$QGA_VER",
  "kernel": "$KERNEL_FILE",
  "kernelCompressed": "vmlinuz",
  "initrd": "initrd.img",
  "dataDisk": "data.qcow2",
  "cmdline": "$CMDLINE",
  "modules": $(json_list "${LOAD_ORDER[@]}"),
  "builtinModules": $(json_list "${BUILTIN_USED[@]}"),
  "inputsHash": "$HASH",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
chmod 0444 "$STAGE"/*
chmod 0755 "$STAGE"

# Into place: one rename of the whole directory, then the current link.
mv -T "$STAGE" "$OUT"
point_current

# Keep the three newest builds (about 80 MiB each); older ones go.
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' -printf '%T@ %f\n' \
  | sort -rn | tail -n +4 | while read -r _ old; do
    [ "$old" = "$HASH" ] || rm -rf "${CACHE:?}/$old"
  done
elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
echo "guest: built $HASH (kernel $KREL, initrd $(du -k "$OUT/initrd.img" | cut -f1) KiB) in ${elapsed}s in $OUT"
