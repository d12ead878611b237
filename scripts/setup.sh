#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine, shared by `npm start` and
# `npm test`: installs the Debian packages Offshoot needs, the npm packages,
# builds the embedded default guest and the web console (both cached; rebuilt
# only when their inputs change). With --test (as `npm test` runs it) it also
# installs Debian's chromium, which the console's end-to-end test drives.
# Safe to rerun; a rerun with nothing to do takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-system-x86 qemu-utils busybox-static qemu-guest-agent e2fsprogs cpio gzip zstd xz-utils kmod python3 make g++)
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

# 2. npm packages (reinstalled when package-lock.json changes).
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

# 3. The embedded default guest.
bash scripts/build-guest.sh

# 4. The web console (dist/console, served by the daemon at /).
bash scripts/build-console.sh
