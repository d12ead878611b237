#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine, shared by `npm start` and
# `npm test`: installs the Debian packages Offshoot needs, the npm packages,
# creates the unprivileged user QEMU runs as, and builds the native addon, the
# embedded default guest and the web console (all cached; rebuilt only when
# their inputs change). With --test (as `npm test` runs it) it also installs
# Debian's chromium, which the console's end-to-end test drives. Safe to
# rerun; a rerun with nothing to do takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-system-x86 qemu-utils busybox-static qemu-guest-agent e2fsprogs cpio gzip zstd xz-utils kmod python3 make gcc g++ acl libxxhash-dev)
if [ "${1:-}" = "--test" ]; then APT_PACKAGES+=(chromium); fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf 'setup: %s\n' "$*"; }

# 1. Debian packages.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  log "apt-get update (no package lists yet)"
  $SUDO apt-get update -q >/dev/null
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
else
  log "Debian packages present"
fi

# 2. The unprivileged user QEMU runs as (see src/agent/confinement.ts): a
#    system user and group with no login and no home. The daemon starts QEMU
#    as this user with its seccomp sandbox; without it QEMU runs as root and
#    `offshoot host show` says so.
QEMU_USER="${OFFSHOOT_QEMU_USER:-offshoot-qemu}"
if [ "$QEMU_USER" != none ] && ! getent passwd "$QEMU_USER" >/dev/null; then
  log "creating the system user $QEMU_USER (QEMU runs as it)"
  $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --comment "Offshoot QEMU processes" "$QEMU_USER"
else
  log "QEMU user ${QEMU_USER} present"
fi
# QEMU must pass through the folders above the home (it opens its VMs' files
# there). The default home of root is under /root (mode 0700): give the QEMU
# user search permission (x, not read) on each folder that stops it, with an
# ACL, as libvirt's documentation advises for images under a home folder.
if [ "$QEMU_USER" != none ] && [ "$(id -u)" -eq 0 ]; then
  home_dir="${OFFSHOOT_HOME:-$HOME/.offshoot}"
  parent="$(dirname "$home_dir")"
  path=""
  IFS=/ read -ra parts <<< "${parent#/}"
  for part in "${parts[@]}"; do
    path="$path/$part"
    [ -d "$path" ] || break
    if ! setpriv --reuid="$QEMU_USER" --regid="$QEMU_USER" --clear-groups test -x "$path" 2>/dev/null; then
      log "letting $QEMU_USER pass through $path (setfacl -m u:$QEMU_USER:x)"
      setfacl -m "u:$QEMU_USER:x" "$path"
    fi
  done
fi

# 3. npm packages (reinstalled when package-lock.json changes).
lock_hash="$(sha256sum package-lock.json | cut -c1-16)"
stamp="node_modules/.offshoot-lock-$lock_hash"
if [ ! -f "$stamp" ]; then
  # `npm install`, not `npm ci`: npm 11 leaves other platforms' optional
  # packages out of the lockfile, and `npm ci` then refuses it.
  log "npm install"
  npm install --no-audit --no-fund --loglevel=error
  touch "$stamp"
else
  log "npm packages up to date"
fi

# 4. The native addon (dist/native/mmap.node, from native/mmap.c with Debian's
#    gcc): the checkpoint writer maps guest RAM read-only through it instead of
#    copying it out with pread. Without it checkpoints still work, slower.
bash scripts/build-native.sh

# 5. The embedded default guest.
bash scripts/build-guest.sh

# 6. The web console (dist/console, served by the daemon at /).
bash scripts/build-console.sh
