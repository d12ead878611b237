// `npm run bench -- group [--sizes 2,4,8] [--runs 1] [--memory 256] [--dirty 32]`:
// group migration between two lab hosts (each `offshoot agent serve` in its
// own network namespace). For each group size, N guests of `--memory` MiB
// (one of them rewriting a tmpfs file of `--dirty` MiB in a loop) move
// lab1 -> lab2 as one group (one switch-over), then back lab2 -> lab1 as N
// independent migrations started at once (the baseline: what a user gets
// without a group), alternately `--runs` times. Per move: the switch-over
// spread (last member resumed at its destination minus first: how long the
// application ran split across two hosts), each member's downtime (QEMU's
// figure; in the group it includes the hold at the barrier), each member's
// whole stop in the group (its source's STOP to its destination's RESUME:
// the hold and the wait for the group's start included) and where it went
// (reach: stop until seen held; held: the barrier; switch: continued until
// its destination held it; wait: for the others' arrival; start: the
// destinations' `cont`), how long the pacer delayed members' starts and kept
// them braked (guest running), and the total time. Benchmarks never assert.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { startDaemon } from '../src/api/index.ts';
import { silentLogger } from '../src/common/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import { qemuVersion } from '../src/qemu/index.ts';
import type { GroupMigrateResult, MigrateResult, VmEngine } from '../src/vm/index.ts';
import type { BenchResult, Comparison } from './report.ts';
import { option } from './tools.ts';

interface Move {
  spreadMs: number;
  downtimes: number[];
  /** Group: each member's source STOP to destination RESUME; independent: QEMU's downtime (it resumes at once). */
  stops: number[];
  held: number[];
  /** Group: each member's stop phase by phase (reach, held, switch, wait, start; see StopBreakdown). */
  parts: Array<Record<string, number | null>>;
  totalMs: number;
}

const dirtyScript = (mib: number) => `mkdir -p /mnt/dirty && mount -t tmpfs -o size=${mib + 16}m tmpfs /mnt/dirty && dd if=/dev/urandom of=/mnt/dirty/seed bs=1M count=1 2>/dev/null && (while true; do i=0; while [ $i -lt ${mib} ]; do dd if=/mnt/dirty/seed of=/mnt/dirty/f bs=1M seek=$i count=1 conv=notrunc 2>/dev/null; i=$((i+1)); done; done) >/dev/null 2>&1 &`;

async function groupMove(engine: VmEngine, names: string[], to: string): Promise<Move | null> {
  const t0 = performance.now();
  const task = await engine.migrateGroup({ members: names.map((vm) => ({ vm, to })), timeoutS: 300 });
  const done = await engine.tasks.wait(task.id);
  if (done.state !== 'succeeded') {
    process.stderr.write(`group of ${names.length}: failed ${done.error?.code}: ${done.message}\n`);
    return null;
  }
  const r = done.result as GroupMigrateResult;
  const parts = (m: GroupMigrateResult['members'][number]) => (m.breakdown ? ` = reach ${m.breakdown.reachMs} + held ${m.breakdown.heldMs} + switch ${m.breakdown.switchMs} + wait ${m.breakdown.waitMs} + start ${m.breakdown.startMs}` : '');
  process.stderr.write(`group of ${names.length} -> ${to}: spread ${r.spreadMs} ms, held spread ${r.heldSpreadMs} ms, total ${r.totalMs} ms, load ${loadavg()[0]?.toFixed(1)}\n${r.members.map((m) => `  ${m.vm}: downtime ${m.downtimeMs} ms, stopped ${m.stoppedMs} ms${parts(m)}; start delayed ${m.startDelayMs} ms, braked ${m.brakedMs} ms${m.pacedBytesPerSecond ? ` at ${Math.round(m.pacedBytesPerSecond / 2 ** 10)} KiB/s` : ''}`).join('\n')}\n`);
  return { spreadMs: r.spreadMs ?? NaN, downtimes: r.members.map((m) => m.downtimeMs ?? NaN), stops: r.members.map((m) => m.stoppedMs ?? NaN), held: r.members.map((m) => m.heldMs ?? NaN), parts: r.members.flatMap((m) => (m.breakdown ? [{ ...m.breakdown }] : [])), totalMs: performance.now() - t0 };
}

async function independentMoves(engine: VmEngine, names: string[], to: string): Promise<Move | null> {
  const t0 = performance.now();
  const started = await Promise.all(names.map((n) => engine.migrate(n, { to, postcopy: 'never', timeoutS: 300 })));
  const done = await Promise.all(started.map((s) => engine.tasks.wait(s.task?.id as string)));
  if (done.some((d) => d.state !== 'succeeded')) {
    process.stderr.write(`independent ${names.length}: failed ${done.map((d) => d.error?.code).join(',')}\n`);
    return null;
  }
  const results = done.map((d) => d.result as MigrateResult);
  const times = results.map((r) => (r.resumedAt ? Date.parse(r.resumedAt) : NaN));
  const spreadMs = Math.max(...times) - Math.min(...times);
  process.stderr.write(`independent ${names.length} -> ${to}: spread ${spreadMs} ms, downtimes ${results.map((r) => r.downtimeMs).join(', ')} ms, load ${loadavg()[0]?.toFixed(1)}\n`);
  const downtimes = results.map((r) => r.downtimeMs ?? NaN);
  return { spreadMs, downtimes, stops: downtimes, held: [], parts: [], totalMs: performance.now() - t0 };
}

export async function groupBenchmark(args: string[]): Promise<BenchResult> {
  const o = { sizes: option(args, '--sizes', '2,4,8').split(',').map(Number), runs: Number(option(args, '--runs', '1')), memory: Number(option(args, '--memory', '256')), dirty: Number(option(args, '--dirty', '32')) };
  const home = mkdtempSync('/tmp/ogb-home-');
  const memoryDir = mkdtempSync('/dev/shm/ogb-mem-');
  const prefix = `ogb${randomBytes(2).toString('hex').slice(0, 3)}`;
  const labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  const daemon = await startDaemon({ home, memoryDir, logger: silentLogger }).catch((err: unknown) => {
    for (const d of [home, memoryDir, labDir]) rmSync(d, { recursive: true, force: true });
    throw err;
  });
  const startedAt = new Date().toISOString();
  const notes: string[] = [`load average at the start: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`];
  const engine = daemon.engine;
  try {
    await labUp(2, { dir: labDir, prefix, subnet: `10.214.${200 + Math.floor(Math.random() * 20)}.0/24` }, home);
    const accel = (await engine.hostInfo('lab1')).accel;
    const comparisons: Comparison[] = [];
    const ms = (label: string, s: number[]) => ({ label, unit: 'ms' as const, samples: s });
    for (const size of o.sizes) {
      const names = Array.from({ length: size }, (_, i) => `ogb-${size}-${i}`);
      for (const name of names) {
        const { task } = await engine.create({ name, memory: `${o.memory}M`, host: 'lab1', start: true });
        const started = await engine.tasks.wait(task?.id as string);
        if (started.state !== 'succeeded') throw new Error(`${name} did not start: ${started.message}`);
      }
      await engine.exec(names[0] as string, { path: '/bin/sh', args: ['-c', dirtyScript(o.dirty)] });
      const group: Move[] = [];
      const alone: Move[] = [];
      try {
        for (let i = 0; i < o.runs; i++) {
          const g = await groupMove(engine, names, 'lab2');
          if (!g) break;
          group.push(g);
          const a = await independentMoves(engine, names, 'lab1');
          if (!a) break;
          alone.push(a);
        }
      } finally {
        for (const name of names) {
          await engine.kill(name).catch(() => undefined);
          await engine.delete(name).catch(() => undefined);
        }
      }
      const who = { mine: `offshoot group of ${size}`, base: `${size} independent migrations at once` };
      comparisons.push({ metric: `${size} VMs: switch-over spread (last resumed - first)`, offshoot: ms(who.mine, group.map((x) => x.spreadMs)), baseline: ms(who.base, alone.map((x) => x.spreadMs)) });
      comparisons.push({ metric: `${size} VMs: downtime per member (QEMU)`, offshoot: ms(who.mine, group.flatMap((x) => x.downtimes)), baseline: ms(who.base, alone.flatMap((x) => x.downtimes)) });
      comparisons.push({ metric: `${size} VMs: whole stop per member (source stop -> destination run)`, offshoot: ms(who.mine, group.flatMap((x) => x.stops)), baseline: ms(who.base, alone.flatMap((x) => x.stops)) });
      comparisons.push({ metric: `${size} VMs: total time`, offshoot: ms(who.mine, group.map((x) => x.totalMs)), baseline: ms(who.base, alone.map((x) => x.totalMs)) });
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
      const parts = group.flatMap((x) => x.parts);
      const breakdown = ['reachMs', 'heldMs', 'switchMs', 'waitMs', 'startMs'].map((k) => `${k.replace('Ms', '')} ${Math.round(median(parts.map((p) => p[k] ?? NaN).filter((v) => Number.isFinite(v))))}`).join(', ');
      notes.push(`${size} VMs: a member's whole stop by phase, medians over ${parts.length} member(s) (ms): ${breakdown}; held per member: ${group.flatMap((x) => x.held).map((h) => Math.round(h)).join(', ')}; load average after: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    }
    notes.push(`load average at the end: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    notes.push(`one member of each group rewrites ${o.dirty} MiB of tmpfs in a loop; guests of ${o.memory} MiB; group moves lab1 -> lab2, the baseline moves them back`);
    notes.push('not measured: downtime seen from inside the guests');
    return { name: 'group', startedAt, machine: { cpus: cpus().length, accel, qemu: await qemuVersion(), node: process.version }, parameters: o, comparisons, notes };
  } finally {
    for (const vm of await engine.list()) await engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    for (const d of [home, memoryDir, labDir]) rmSync(d, { recursive: true, force: true });
  }
}
