// What the fork and checkpoint tests do inside the guest: 64 MiB of random
// data in a tmpfs (RAM) and on the data disk, a counter ticking every 0.1 s,
// and the shell and md5 helpers to check them, all through the engine.
import type { RunningDaemon } from '../src/api/index.ts';

export const GUEST_DATA_SETUP = [
  'set -e',
  'mkdir -p /mnt/ram && mount -t tmpfs -o size=80m tmpfs /mnt/ram',
  'dd if=/dev/urandom of=/mnt/ram/blob bs=1M count=64 2>/dev/null',
  'cp /mnt/ram/blob /data/blob && sync',
  '(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 &',
].join('\n');

/** Prints /tmp/counter, which the guest scripts' counter loops (GUEST_DATA_SETUP, WRITER, fabric SETUP) truncate then write at each tick: an empty read is read again. */
export const READ_COUNTER = 'c=; k=0; while [ -z "$c" ] && [ $k -lt 50 ]; do k=$((k+1)); c=$(cat /tmp/counter); done; echo "$c"';

export interface GuestShell {
  sh(vm: string, script: string): Promise<string>;
  md5s(vm: string): Promise<string>;
  counter(vm: string): Promise<number>;
}

export function guestShell(daemon: () => RunningDaemon): GuestShell {
  const sh = async (vm: string, script: string): Promise<string> => {
    const r = await daemon().engine.exec(vm, { path: '/bin/sh', args: ['-c', script], timeoutMs: 120_000 });
    const out = Buffer.from(r.stdout, 'base64').toString('utf8');
    if (r.exitCode !== 0) throw new Error(`${vm}: exit ${r.exitCode}: ${Buffer.from(r.stderr, 'base64').toString('utf8')}`);
    return out.trim();
  };
  return {
    sh,
    md5s: (vm) => sh(vm, 'md5sum /mnt/ram/blob /data/blob | cut -d" " -f1 | tr "\\n" " "'),
    counter: async (vm) => Number(await sh(vm, READ_COUNTER)),
  };
}
