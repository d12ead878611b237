#!/usr/bin/env bash
# Builds the web console (web/, Preact + TypeScript, with Vite) into
# dist/console, which `offshoot serve` serves at /. Cached: the build is
# skipped when a hash of its inputs (web/, the browser half of the client and
# common layers it bundles, package-lock.json and this script) matches the
# hash recorded with the last build. The new build is made beside the old one
# and swapped in, so a running daemon never serves half a build.
#
# Prints one line: built or up to date.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

OUT=dist/console
STAMP="$OUT/.inputs-sha256"
hash=$(
  { find web src/client src/common -type f \( -name '*.ts' -o -name '*.tsx' -o -name '*.css' -o -name '*.html' -o -name '*.json' \) ! -name '*.test.ts' -print0 | sort -z | xargs -0 sha256sum
    sha256sum package-lock.json scripts/build-console.sh; } | sha256sum | cut -c1-32
)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ] && [ -f "$OUT/index.html" ]; then
  echo "console: up to date ($OUT)"
  exit 0
fi

mkdir -p dist
tmp=$(mktemp -d "dist/.console-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
OFFSHOOT_CONSOLE_OUT="$PWD/$tmp/console" npx --no-install vite build --config web/vite.config.ts
echo "$hash" > "$tmp/console/.inputs-sha256"
rm -rf "$OUT.old"
if [ -d "$OUT" ]; then mv "$OUT" "$OUT.old"; fi
mv "$tmp/console" "$OUT"
rm -rf "$OUT.old"
echo "console: built ($OUT)"
