// `npm run bench -- move [--base-gib 4] [--delta-mib 256] [--memory 256]
// [--runs 1]`: a live move by content id (issue 13), on a control plane and
// two lab hosts. A running default guest (`--memory` MiB) gets a second disk:
// a qcow2 delta of `--delta-mib` MiB of random data over a `--base-gib` GiB
// base on lab1's own datastore (`disk attach`, the way a VM uses a datastore
// disk). It moves live to lab2 (`vm move --live`, storage/move-vm.ts) twice,
// each time a fresh VM: first with nothing at lab2 (the baseline: the
// migration mirrors the whole chain), then with the base seeded on lab2
// ahead of time (`disk seed`, not counted: the migration finds it by content
// id and mirrors only the tops). Per move: memory and disk bytes (QEMU's
// figures from the migration's result), the bytes the isolated path carried
// (TLS and framing included), and the time from the move request to the end
// of its task. The goal of the issue: sent ≤ 1.1 × (delta + memory), printed
// as a note with the memory the move actually sent.
//
// The base is a raw disk of lab1's datastore written in place: incompressible
// data without holes (nothing in the stream
// compresses or skips it), made fast: one 16 MiB random block repeated, each
// 4 KiB block stamped with its own offset, so no two clusters are alike.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import { silentLogger } from '../src/common/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import { qemuVersion } from '../src/qemu/index.ts';
import type { MigrateResult } from '../src/vm/index.ts';
import type { BenchResult, Comparison } from './report.ts';
import { option, run } from './tools.ts';

const MiB = 2 ** 20;
const load = () => loadavg().map((l) => l.toFixed(1)).join(' ');

/**
 * Overwrites a file with `mib` MiB with no holes and no two 4 KiB blocks alike. Asynchronous: a long synchronous
 * write stalls the fleet's connections to the lab agents (seen: the next call failed with UND_ERR_SOCKET).
 */
async function baseFile(path: string, mib: number): Promise<void> {
  const block = randomBytes(16 * MiB);
  const file = await open(path, 'r+');
  try {
    for (let at = 0; at < mib * MiB; at += block.length) {
      for (let o = 0; o < block.length; o += 4096) block.writeDoubleLE(at + o, o);
      await file.write(block, 0, Math.min(block.length, mib * MiB - at), at);
    }
  } finally {
    await file.close();
  }
}

interface Move {
  memoryMiB: number;
  diskMiB: number;
  pathMiB: number;
  ms: number;
  downtimeMs: number;
  sync: string;
  skippedMiB: number;
}

export async function moveBenchmark(args: string[]): Promise<BenchResult> {
  const o = { baseGiB: Number(option(args, '--base-gib', '4')), deltaMiB: Number(option(args, '--delta-mib', '256')), memory: Number(option(args, '--memory', '256')), runs: Number(option(args, '--runs', '1')) };
  const home = mkdtempSync('/tmp/omv-bench-');
  const memoryDir = mkdtempSync('/dev/shm/omv-bench-');
  const prefix = `omv${randomBytes(2).toString('hex').slice(0, 3)}`;
  const labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  const scratch = mkdtempSync(`/tmp/${prefix}-files-`);
  const daemon = await startDaemon({ home, memoryDir, logger: silentLogger }).catch((err: unknown) => {
    for (const d of [home, memoryDir, labDir, scratch]) rmSync(d, { recursive: true, force: true });
    throw err;
  });
  const startedAt = new Date().toISOString();
  const notes: string[] = [`load average at the start: ${load()}`];
  const { engine, storage } = daemon;
  try {
    const lab = await labUp(2, { dir: labDir, prefix, subnet: `10.214.${200 + Math.floor(Math.random() * 20)}.0/24` }, home);
    const lab1Home = lab.hosts.find((h) => h.name === 'lab1')?.home as string;
    const t0 = performance.now();
    // A raw disk of lab1's datastore, its bytes written in place (no import: the agent's copy of 4 GiB is slow under load).
    const base = await storage.catalog.createDisk({ datastore: 'lab1-local', name: `${prefix}-base`, size: `${o.baseGiB * 1024}M`, format: 'raw' });
    const lab1Local = await storage.catalog.showDatastore('lab1-local');
    await baseFile(join(lab1Local.path, base.file.slice(base.file.indexOf(':') + 1)), o.baseGiB * 1024);
    notes.push(`making the ${o.baseGiB} GiB base took ${((performance.now() - t0) / 1000).toFixed(1)} s (load after: ${load()})`);
    const deltaData = join(scratch, 'delta.bin');
    const delta = await open(deltaData, 'w', 0o600);
    for (let i = 0; i < o.deltaMiB; i += 16) await delta.write(randomBytes(Math.min(16, o.deltaMiB - i) * MiB));
    await delta.close();

    /** A fresh running VM on lab1 whose disk1 is a delta of random data over the base. */
    const makeVm = async (name: string): Promise<{ topsMiB: number }> => {
      await engine.create({ name, memory: `${o.memory}M`, host: 'lab1' });
      const vm = await storage.attachDisk(name, { disk: base.id });
      const vmDir = join(lab1Home, 'vms', vm.id);
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -q -s ${deltaData} 0 ${o.deltaMiB}M`, join(vmDir, 'disk1.qcow2')]);
      // Twice at most: under load a TCG guest's boot sometimes resets.
      for (let attempt = 1; ; attempt++) {
        const { task } = await engine.start(name);
        const started = task ? await engine.tasks.wait(task.id) : null;
        if (!started || started.state === 'succeeded') break;
        if (attempt >= 2) throw new Error(`${name} did not start: ${started.message}`);
        await engine.kill(name).catch(() => undefined);
      }
      // Each writable disk's own file (its top): what a move by content id has to send of it.
      const tops = vm.spec.disks.filter((d) => !d.readOnly).reduce((n, d) => n + statSync(join(vmDir, d.file.slice(d.file.lastIndexOf('/') + 1))).blocks * 512, 0);
      return { topsMiB: tops / MiB };
    };

    const moveOnce = async (name: string): Promise<Move> => {
      const before = load();
      const t = performance.now();
      const started = await storage.mover.move(name, { to: 'lab2', mode: 'live' });
      const done = await engine.tasks.wait(started.task.id);
      const ms = performance.now() - t;
      if (done.state !== 'succeeded') throw new Error(`move of ${name}: ${done.state}: ${done.error?.message}`);
      const r = done.result as MigrateResult;
      const m: Move = { memoryMiB: r.memoryBytes / MiB, diskMiB: r.diskBytes / MiB, pathMiB: (r.path.bytesSent ?? NaN) / MiB, ms, downtimeMs: r.downtimeMs ?? NaN, sync: JSON.stringify(r.storage.sync), skippedMiB: r.storage.skipped.reduce((n, s) => n + s.bytes, 0) / MiB };
      process.stderr.write(`${name}: memory ${m.memoryMiB.toFixed(1)} MiB, disks ${m.diskMiB.toFixed(1)} MiB (${m.sync}, skipped ${m.skippedMiB.toFixed(0)} MiB), path ${m.pathMiB.toFixed(1)} MiB, ${(ms / 1000).toFixed(1)} s, downtime ${m.downtimeMs} ms; load before ${before}, after ${load()}\n`);
      notes.push(`${name}: ${m.sync}, load before ${before}, after ${load()}`);
      return m;
    };
    const done = async (name: string) => {
      await engine.kill(name).catch(() => undefined);
      await engine.delete(name).catch(() => undefined);
    };

    const unseeded: Move[] = [];
    const seeded: Move[] = [];
    const tops: number[] = [];
    for (let i = 0; i < o.runs; i++) {
      const name = `${prefix}-cold${i}`;
      await makeVm(name);
      try {
        unseeded.push(await moveOnce(name));
      } finally {
        await done(name);
      }
    }
    const s0 = performance.now();
    const seed = await storage.seeder.seed(base.id, { to: 'lab2' });
    const seedJob = seed.job ? await storage.jobs.wait(seed.job.id) : null;
    if (seedJob && seedJob.state !== 'succeeded') throw new Error(`seed ${seedJob.state}: ${seedJob.error?.message}`);
    notes.push(`seeding the base on lab2 ahead of time took ${((performance.now() - s0) / 1000).toFixed(1)} s (not counted; load after: ${load()})`);
    for (let i = 0; i < o.runs; i++) {
      const name = `${prefix}-seeded${i}`;
      tops.push((await makeVm(name)).topsMiB);
      try {
        seeded.push(await moveOnce(name));
      } finally {
        await done(name);
      }
    }

    const series = (label: string, unit: 'ms' | 'MiB', samples: number[]) => ({ label, unit, samples });
    const who = { mine: 'base seeded (skipped by content id)', base: 'nothing seeded' };
    const what = `live move, ${o.baseGiB} GiB base + ${o.deltaMiB} MiB delta, ${o.memory} MiB guest`;
    const comparisons: Comparison[] = [
      { metric: `${what}: memory + disk bytes sent`, offshoot: series(who.mine, 'MiB', seeded.map((m) => m.memoryMiB + m.diskMiB)), baseline: series(who.base, 'MiB', unseeded.map((m) => m.memoryMiB + m.diskMiB)) },
      { metric: `${what}: disk bytes sent`, offshoot: series(who.mine, 'MiB', seeded.map((m) => m.diskMiB)), baseline: series(who.base, 'MiB', unseeded.map((m) => m.diskMiB)) },
      { metric: `${what}: memory bytes sent`, offshoot: series(who.mine, 'MiB', seeded.map((m) => m.memoryMiB)), baseline: series(who.base, 'MiB', unseeded.map((m) => m.memoryMiB)) },
      { metric: `${what}: bytes on the isolated path (TLS included)`, offshoot: series(who.mine, 'MiB', seeded.map((m) => m.pathMiB)), baseline: series(who.base, 'MiB', unseeded.map((m) => m.pathMiB)) },
      { metric: `${what}: move request to task end`, offshoot: series(who.mine, 'ms', seeded.map((m) => m.ms)), baseline: series(who.base, 'ms', unseeded.map((m) => m.ms)) },
      { metric: `${what}: downtime (QEMU)`, offshoot: series(who.mine, 'ms', seeded.map((m) => m.downtimeMs)), baseline: series(who.base, 'ms', unseeded.map((m) => m.downtimeMs)) },
    ];
    for (const [i, m] of seeded.entries()) {
      const goal = o.deltaMiB + m.memoryMiB;
      const topsMiB = tops[i] ?? NaN;
      notes.push(`seeded move ${i}: sent ${(m.memoryMiB + m.diskMiB).toFixed(1)} MiB = ${((m.memoryMiB + m.diskMiB) / goal).toFixed(3)} × (delta ${o.deltaMiB} + memory sent ${m.memoryMiB.toFixed(1)} MiB) (goal ≤ 1.1); on the path ${(m.pathMiB / goal).toFixed(3)} ×; the disks' tops held ${topsMiB.toFixed(1)} MiB (the ${o.deltaMiB} MiB delta and the guest's own disk0 delta)`);
    }
    notes.push(`load average at the end: ${load()}`);
    return { name: 'move', startedAt, machine: { cpus: cpus().length, accel: (await engine.hostInfo('lab1')).accel, qemu: await qemuVersion(), node: process.version }, parameters: o, comparisons, notes };
  } finally {
    await daemon.close();
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    for (const d of [home, memoryDir, labDir, scratch]) rmSync(d, { recursive: true, force: true });
  }
}
