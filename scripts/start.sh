#!/usr/bin/env bash
# The main job (`npm start`, after setup): starts the Offshoot daemon in the
# background (or reuses the running one), creates and boots the default guest
# "demo" (or starts it again), runs `uname -r` in it, and prints how to reach it.
set -euo pipefail
cd "$(dirname "$0")/.."
offshoot=./bin/offshoot
VM="${OFFSHOOT_DEMO_VM:-demo}"

$offshoot serve --detach
if ! $offshoot vm show "$VM" --json >/dev/null 2>&1; then
  $offshoot vm create "$VM" --memory 256M --start
else
  state="$($offshoot vm show "$VM" --json | node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(0,"utf8")).state)')"
  case "$state" in
    running) echo "VM $VM is already running" ;;
    paused) $offshoot vm resume "$VM" ;;
    *) $offshoot vm start "$VM" ;;
  esac
fi
echo
$offshoot vm list
echo
echo "The guest answers through its agent:"
echo "  \$ ./bin/offshoot vm exec $VM -- uname -r"
$offshoot vm exec "$VM" -- uname -r
home="${OFFSHOOT_HOME:-$HOME/.offshoot}"
cat <<INFO

Offshoot is running (state in $home).
  CLI:  ./bin/offshoot vm list | vm show $VM | vm exec $VM -- CMD | vm console $VM | vm stop $VM
  API:  $(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).url)' "$home/daemon.json")  (bearer token in $home/token; OpenAPI at /openapi.json)
  Stop the daemon (VMs keep running): ./bin/offshoot daemon stop
INFO
