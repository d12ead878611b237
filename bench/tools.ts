// Small helpers the benchmarks share: reading a `--name value` option,
// running a command to completion (its stderr in the error if it fails), and
// priming free memory before a timed step (see primeFreePages).
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export function option(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  return i >= 0 ? (args[i + 1] ?? fallback) : fallback;
}

export function run(command: string, argv: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`${command} ${argv.join(' ')}: exit ${code}: ${err}`))));
  });
}

/**
 * Writes `mib` MiB into a new tmpfs file and removes it, so that the timed step that follows finds that
 * much free memory the kernel has just used. This machine is a VM whose free pages are handed back to
 * its hypervisor soon after they are freed (virtio-balloon free page reporting): a page that was given
 * back costs a fault in the hypervisor the next time it is touched, and writing 2 GiB into
 * /dev/shm took 1.2, 4.7, then 7.5 s for three files in a row, and 1.0 s again right after removing them.
 * Whichever side of a comparison runs after the other has freed its file would otherwise get the cheap
 * pages. A bare-metal host has no such cost, so both sides are primed the same way before they are timed.
 */
export function primeFreePages(mib: number): void {
  const dir = mkdtempSync('/dev/shm/osh-bench-prime-');
  const chunk = Buffer.alloc(8 * 1024 * 1024, 1);
  try {
    const fd = openSync(join(dir, 'prime'), 'w', 0o600);
    try {
      for (let done = 0; done < mib; done += 8) writeSync(fd, chunk);
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
