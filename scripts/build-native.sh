#!/usr/bin/env bash
# Builds Offshoot's native addon (native/mmap.c: the checkpoint writer's
# block reader, which reads, scans, packs and hashes guest RAM in libuv's
# thread pool, and a read-only mmap of a file region as a Buffer) into
# dist/native/mmap.node with Debian's C compiler, the Node-API headers of the
# installed Node (Debian's nodejs ships them in /usr/include/node) and
# Debian's xxhash.h (libxxhash-dev, used header-only). Node-API is ABI-stable, so one build serves every Node
# version. Cached: skipped when a hash of the source and this script matches
# the last build's. A failed build is a warning, not an error: the writer then
# falls back to reading guest RAM with pread (slower) and logs why.
#
# Prints one line: built, up to date, or the warning.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

SRC=native/mmap.c
OUT=dist/native/mmap.node
STAMP="$OUT.inputs-sha256"
hash=$(sha256sum "$SRC" scripts/build-native.sh | sha256sum | cut -c1-32)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ] && [ -f "$OUT" ]; then
  echo "native addon: up to date ($OUT)"
  exit 0
fi

include=""
for dir in "$(dirname "$(readlink -f "$(command -v node)")")/../include/node" /usr/include/node; do
  if [ -f "$dir/node_api.h" ]; then include="$dir"; break; fi
done
if [ ! -f /usr/include/xxhash.h ]; then
  echo "native addon: WARNING not built: no xxhash.h (Debian: apt-get install libxxhash-dev); checkpoints read guest RAM with pread (slower)" >&2
  exit 0
fi
if [ -z "$include" ]; then
  echo "native addon: WARNING not built: no node_api.h (Debian: apt-get install nodejs); checkpoints read guest RAM with pread (slower)" >&2
  exit 0
fi
mkdir -p dist/native
tmp="$OUT.tmp.$$"
trap 'rm -f "$tmp"' EXIT
if ! ${CC:-cc} -shared -fPIC -O2 -Wall -Wextra -Werror -std=gnu11 -I"$include" -o "$tmp" "$SRC"; then
  echo "native addon: WARNING build failed; checkpoints read guest RAM with pread (slower)" >&2
  exit 0
fi
mv "$tmp" "$OUT"
echo "$hash" > "$STAMP"
echo "native addon: built ($OUT)"
