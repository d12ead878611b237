#!/usr/bin/env bash
# The data-path benchmarks of issue 16, one after another (each prints its
# table and writes JSON under bench/results/), with the machine's load before
# each: `bash bench/data-paths.sh [--quick]` (--quick: checkpoint at 1G only,
# copy and clone with fewer runs). Run it on a quiet machine for the figures
# that count; `--busy 2` first boots two guests that keep a core busy each, for
# the checkpoint run "with two busy guests beside it".
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
busy=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --busy) busy="$2"; shift ;;
    *) echo "usage: bash bench/data-paths.sh [--quick] [--busy N]" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "== $* (load: $(cut -d' ' -f1-3 /proc/loadavg))"; }
if [ "$busy" -gt 0 ]; then
  log "checkpoint with $busy busy guests"
  npm run --silent bench -- checkpoint --sizes 1G --busy "$busy"
  exit 0
fi
if [ "$quick" = 1 ]; then sizes=1G; runs=2; else sizes=256M,1G,4G; runs=5; fi
log "checkpoint --sizes $sizes"; npm run --silent bench -- checkpoint --sizes "$sizes"
log "copy --runs $runs"; npm run --silent bench -- copy --runs "$runs"
log "clone --runs $((runs > 3 ? 3 : runs))"; npm run --silent bench -- clone --runs "$((runs > 3 ? 3 : runs))"
log "fork --memory 1024 --counts 16"; npm run --silent bench -- fork --memory 1024 --counts 16
log "done"
