// QEMU 7.2 under TCG loses guest writes during a live migration when the
// RAM block's size is a multiple of 256 KiB (see qemu/argv.ts): a page the
// guest writes after QEMU's first dirty sync may never be sent again, so the
// destination runs with stale memory. Offshoot gives guest RAM 8 KiB beyond
// its MiB on TCG hosts (memoryExtraKiB), which makes QEMU take its per-page
// dirty sync path.
//
// The check, with real QEMU and the real guest: a guest rewrites 32 MiB of a
// tmpfs file with random data in a loop (dirtying pages all the time) while it
// is live-migrated on this host (the local migration a fork of a fork uses,
// migrateLocally, capped at QEMU's default 128 MiB/s so it takes several passes) into a new QEMU waiting with -S; once the migration has
// completed both QEMUs are stopped, and their RAM files (share=on: the files
// are the guest's RAM) must be equal page for page. With memoryExtraKiB 8,
// three migrations in a row lose no page; without it (QEMU < 9.0 only: the
// bug is fixed there) one of at most five loses pages, which shows the
// check can see the bug.
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDefaultGuest } from '../guest/index.ts';
import type { GuestImage } from '../guest/index.ts';
import { QgaClient, QmpClient, killAndWait, qemuVersion, spawnQemu } from '../qemu/index.ts';
import type { QemuLaunchSpec } from '../qemu/index.ts';
import { migrateLocally } from './migration.ts';

const MEMORY_MIB = 128;
// QEMU's own default bandwidth: the migration takes several passes while the guest writes (uncapped, a local
// migration of 128 MiB is over so fast that QEMU 7.2 lost pages in about one migration of thirty on a quiet machine).
const MIGRATION_BYTES_PER_SECOND = 128 * 1024 * 1024;

interface Guest {
  pid: number;
  qmp: QmpClient;
  ramFile: string;
}

let dir: string;
let memoryDir: string;
let guest: GuestImage;
const started: Guest[] = [];

function differingPages(a: string, b: string): number {
  if (statSync(a).size !== statSync(b).size) return -1;
  const [fa, fb] = [openSync(a, 'r'), openSync(b, 'r')];
  let pages = 0;
  try {
    const [ba, bb] = [Buffer.alloc(4 << 20), Buffer.alloc(4 << 20)];
    for (let at = 0; ; at += ba.length) {
      const n = readSync(fa, ba, 0, ba.length, at);
      if (n === 0) return pages;
      readSync(fb, bb, 0, bb.length, at);
      for (let p = 0; p < n; p += 4096) if (!ba.subarray(p, p + 4096).equals(bb.subarray(p, p + 4096))) pages++;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

async function start(name: string, memoryExtraKiB: number, incoming: boolean): Promise<Guest> {
  const spec: QemuLaunchSpec = {
    vmId: name,
    name,
    accel: 'tcg',
    vcpus: 1,
    memoryMiB: MEMORY_MIB,
    memoryExtraKiB,
    memory: { path: join(memoryDir, `${name}.ram`), share: true },
    boot: { kind: 'kernel', kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline },
    disks: [],
    nics: [],
    qmpSocket: join(dir, `${name}.qmp`),
    qgaSocket: join(dir, `${name}.qga`),
    consoleLog: join(dir, `${name}.console`),
    pidFile: join(dir, `${name}.pid`),
    ...(incoming ? { incoming: 'defer' as const, paused: true } : {}),
  };
  const proc = await spawnQemu(spec, { logFile: join(dir, `${name}.log`) });
  const qmp = await QmpClient.connect(spec.qmpSocket, { timeoutMs: 10_000 });
  const g = { pid: proc.pid, qmp, ramFile: spec.memory.path };
  started.push(g);
  return g;
}

/** Boots a guest whose RAM has `extra` KiB beyond its MiB and starts a loop that rewrites 32 MiB of a tmpfs file. */
async function busyGuest(name: string, extra: number): Promise<Guest> {
  const g = await start(name, extra, false);
  const qga = await QgaClient.waitForAgent(join(dir, `${name}.qga`), { timeoutMs: 120_000 });
  try {
    const script = 'mkdir -p /mnt/ram && mount -t tmpfs -o size=40m tmpfs /mnt/ram && (while true; do dd if=/dev/urandom of=/mnt/ram/blob bs=1M count=32 conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 &';
    const r = await qga.exec('/bin/sh', ['-c', script], { timeoutMs: 30_000 });
    expect(r.exitCode).toBe(0);
  } finally {
    qga.close();
  }
  await new Promise((r) => setTimeout(r, 1_000)); // the loop is rewriting pages
  return g;
}

/** Live-migrates `source` into a new QEMU (RAM of the same size), then compares the two stopped RAM files. */
async function migrateAndCompare(source: Guest, name: string, extra: number): Promise<{ target: Guest; lostPages: number }> {
  const target = await start(name, extra, true);
  await migrateLocally(source.qmp, target.qmp, join(dir, `${name}.mig`), 120_000, MIGRATION_BYTES_PER_SECOND);
  // The source stopped at completion (postmigrate); the target waits paused (-S): both RAM files are final.
  expect((await source.qmp.queryStatus()).running).toBe(false);
  expect((await target.qmp.queryStatus()).status).toBe('paused');
  const lostPages = differingPages(source.ramFile, target.ramFile);
  await source.qmp.execute('quit').catch(() => undefined);
  await killAndWait(source.pid, { graceMs: 2_000 });
  await target.qmp.cont();
  return { target, lostPages };
}

beforeAll(async () => {
  dir = mkdtempSync('/tmp/osh-tcgdirty-');
  memoryDir = mkdtempSync('/dev/shm/osh-tcgdirty-');
  guest = await loadDefaultGuest();
});

afterAll(async () => {
  for (const g of started) {
    g.qmp.close();
    await killAndWait(g.pid, { graceMs: 0 });
  }
  rmSync(dir, { recursive: true, force: true });
  rmSync(memoryDir, { recursive: true, force: true });
});

describe('TCG dirty tracking during a live migration', () => {
  it('loses no guest write with RAM 8 KiB past a whole MiB (three migrations of a busy guest)', async () => {
    let source = await busyGuest('fixed', 8);
    const lost: number[] = [];
    for (let i = 1; i <= 3; i++) {
      const { target, lostPages } = await migrateAndCompare(source, `fixed-${i}`, 8);
      lost.push(lostPages);
      source = target;
    }
    expect(lost).toEqual([0, 0, 0]);
  }, 240_000);

  it('shows QEMU 7.2 losing writes without it (the check sees the bug)', async (ctx) => {
    const [major] = (await qemuVersion()).split('.').map(Number);
    if ((major ?? 0) >= 9) ctx.skip(); // fixed upstream in QEMU 9.0: nothing to see
    let source = await busyGuest('plain', 0);
    const lost: number[] = [];
    // The loss depends on timing (a write between two dirty syncs); at 128 MiB/s the first migration showed it in
    // every run tried, up to five are tried, stopping at the first that loses pages.
    for (let i = 1; i <= 5 && !lost.some((n) => n > 0); i++) {
      const { target, lostPages } = await migrateAndCompare(source, `plain-${i}`, 0);
      lost.push(lostPages);
      source = target;
    }
    console.log(`without the extra 8 KiB: pages lost per migration ${JSON.stringify(lost)}`);
    expect(lost.some((n) => n > 0)).toBe(true);
  }, 240_000);
});
