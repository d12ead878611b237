#!/usr/bin/env bash
# Test-only set-up: installs PostgreSQL's server binaries from Debian when they
# are missing, for the tests and the fleet bench (which start their own
# temporary cluster with initdb/pg_ctl; see tests/pg-cluster.ts). The system's
# default cluster is neither created nor started: postgresql-common is told
# not to create "main" before the package is installed. Idempotent; a rerun
# with PostgreSQL present does nothing.
set -euo pipefail

log() { printf 'setup-postgres: %s\n' "$*"; }

if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  log "PostgreSQL present ($(ls -d /usr/lib/postgresql/*/bin/initdb | head -1))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# No default cluster: postgresql-common reads this before it would create one
# (also when postgresql-common itself is already installed).
conf=/etc/postgresql-common/createcluster.conf
if ! grep -qsE '^[[:space:]]*create_main_cluster[[:space:]]*=[[:space:]]*false' "$conf"; then
  $SUDO mkdir -p /etc/postgresql-common
  printf '# added by offshoot scripts/setup-postgres.sh: tests use their own temporary clusters\ncreate_main_cluster = false\n' | $SUDO tee -a "$conf" >/dev/null
fi

install() {
  # postgresql-common manages createcluster.conf with ucf: UCF_FORCE_CONFFOLD keeps the line added above.
  $SUDO env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >/dev/null
}
log "installing postgresql (Debian)"
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then $SUDO apt-get update -q >/dev/null; fi
install || { $SUDO apt-get update -q >/dev/null && install; }
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { log "initdb still missing after installing postgresql"; exit 1; }
