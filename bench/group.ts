// `npm run bench -- group [--sizes 2,4,8] [--runs 1] [--memory 256] [--dirty 32] [--order group-first|baseline-first]`:
// group migration between two lab hosts (each `offshoot agent serve` in its
// own network namespace). For each group size, N guests of `--memory` MiB
// (one of them rewriting a tmpfs file of `--dirty` MiB in a loop) move
// lab1 -> lab2 as one group (one switch-over), then back lab2 -> lab1 as N
// independent migrations started at once (the baseline: what a user gets
// without a group), alternately `--runs` times (`--order baseline-first`:
// the baseline first, lab1 -> lab2, and the group back: the first move after
// a boot also populates the sources' RAM files, which the way back finds
// done). Per move: the switch-over
// spread (last member resumed at its destination minus first: how long the
// application ran split across two hosts), each member's downtime (QEMU's
// figure; in the group it includes the hold at the barrier), each member's
// whole stop in the group (its source's STOP to its destination's RESUME:
// the hold and the wait for the group's start included) and where it went
// (reach: stop until seen held; held: the barrier; switch: continued until
// its destination held it; wait: for the others' arrival; start: the
// destinations' `cont`), how long the pacer delayed members' starts, kept
// them braked or hovering (guest running), the pauses of members sent back
// to their source to go again (at their switch-over while the group was far
// from it), and the total time. Downtime is
// also measured from inside each guest: a loop logs the guest's uptime about
// every 10 ms (`sleep 0.01`, 10 ms clock steps) into tmpfs; a member's figure
// is the longest gap of its log near its switch-over (ending at most 1 s
// before its resume, counted back from when the loop's stop was answered: the
// stall of the migration's first dirty-bitmap sync, seconds earlier, is left
// out).
// Under load the loop's own steps are uneven too, so the baseline is measured
// the same way. `--keep-logs DIR` copies the lab agents' logs (each outgoing
// migration's timeline of QMP steps and events) into DIR before the lab goes.
// Benchmarks never assert.
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cpus, loadavg } from 'node:os';
import { startDaemon } from '../src/api/index.ts';
import { silentLogger } from '../src/common/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import { qemuVersion } from '../src/qemu/index.ts';
import type { GroupMigrateResult, MigrateResult, VmEngine } from '../src/vm/index.ts';
import type { BenchResult, Comparison } from './report.ts';
import { TICK_STOP_GAPS, tickStart } from './guest-clock.ts';
import { option } from './tools.ts';

interface Move {
  spreadMs: number;
  /** Each member's longest gap of its guest's uptime log near its switch-over (ms; NaN: not read). */
  guestGaps: number[];
  downtimes: number[];
  /** Group: each member's source STOP to destination RESUME; independent: QEMU's downtime (it resumes at once). */
  stops: number[];
  held: number[];
  /** Group: each member's stop phase by phase (reach, held, switch, wait, start; see StopBreakdown). */
  parts: Array<Record<string, number | null>>;
  /** Group: each pause of a member sent back to its source (it reached its switch-over alone and went again; ms). */
  sentBack: Array<number | null>;
  totalMs: number;
}

const dirtyScript = (mib: number) => `mkdir -p /mnt/dirty && mount -t tmpfs -o size=${mib + 16}m tmpfs /mnt/dirty && dd if=/dev/urandom of=/mnt/dirty/seed bs=1M count=1 2>/dev/null && (while true; do i=0; while [ $i -lt ${mib} ]; do dd if=/mnt/dirty/seed of=/mnt/dirty/f bs=1M seek=$i count=1 conv=notrunc 2>/dev/null; i=$((i+1)); done; done) >/dev/null 2>&1 &`;

/** A loop in the guest logs its uptime (10 ms steps) about every 10 ms into tmpfs (guest-clock.ts). */
const TICK_START = tickStart({ sleepS: 0.01, tmpfsMiB: 16 });

async function guestShell(engine: VmEngine, name: string, script: string): Promise<string> {
  const r = await engine.exec(name, { path: '/bin/sh', args: ['-c', script] });
  return Buffer.from(r.stdout, 'base64').toString();
}

async function startTicks(engine: VmEngine, names: string[]): Promise<void> {
  for (const name of names) await guestShell(engine, name, TICK_START);
}

/** Each member's longest guest-seen gap ending at most 1 s before its resume (its resume at the host's clock; NaN when unknown). */
async function stopTicks(engine: VmEngine, names: string[], resumedAt: Array<number | null>): Promise<number[]> {
  return Promise.all(
    names.map(async (name, i) => {
      const out = await guestShell(engine, name, TICK_STOP_GAPS).catch(() => null);
      const resumed = resumedAt[i];
      if (out === null || resumed === null || resumed === undefined) return NaN;
      // The loop stopped at most the exec's round trip after stopAt (under load that is seconds).
      const windowS = (Date.now() - resumed) / 1000 + 1;
      const gaps = out.trim().split('\n').filter(Boolean).map((l) => l.split(' ').map(Number) as [number, number]);
      return Math.max(0, ...gaps.filter(([, before]) => before <= windowS).map(([ms]) => ms));
    }),
  );
}

/** A member's pacing steps (s since the group's start) and its last passes (pass@s:MiB): where its time went. */
function timelineOf(m: GroupMigrateResult['members'][number]): string {
  const steps = (['precopy', 'start', 'brink', 'firstPassEnd', 'selfBrake', 'brake', 'park', 'unpark', 'lastRun', 'lastRunApplied', 'held'] as const).flatMap((k) => (m.timeline[k] === undefined ? [] : [`${k} ${(m.timeline[k] / 1000).toFixed(2)}`]));
  const passes = m.passes.slice(-10).map((p) => `${p.pass}@${(p.atMs / 1000).toFixed(2)}:${(p.bytes / 2 ** 20).toFixed(1)}${p.bandwidthBytesPerSecond > 0 ? `/${Math.round(p.bandwidthBytesPerSecond / 2 ** 20)}` : ''}${p.throttlePercent > 0 ? `/t${p.throttlePercent}` : ''}`);
  return `at (s): ${steps.join(', ')}; passes (pass@s:MiB[/MiB/s sent][/throttle %], last ${passes.length} of ${m.passes.length}): ${passes.join(' ')}`;
}

async function groupMove(engine: VmEngine, names: string[], to: string): Promise<Move | null> {
  await startTicks(engine, names);
  const t0 = performance.now();
  const task = await engine.migrateGroup({ members: names.map((vm) => ({ vm, to })), timeoutS: 300 });
  const done = await engine.tasks.wait(task.id);
  if (done.state !== 'succeeded') {
    process.stderr.write(`group of ${names.length}: failed ${done.error?.code}: ${done.message}\n`);
    return null;
  }
  const r = done.result as GroupMigrateResult;
  const guestGaps = await stopTicks(engine, names, names.map((n) => r.members.find((m) => m.vm === n)?.resumedAt ?? null).map((t) => (t ? Date.parse(t) : null)));
  const parts = (m: GroupMigrateResult['members'][number]) => (m.breakdown ? ` = reach ${m.breakdown.reachMs} + held ${m.breakdown.heldMs} + switch ${m.breakdown.switchMs} + wait ${m.breakdown.waitMs} + start ${m.breakdown.startMs}` : '');
  process.stderr.write(`group of ${names.length} -> ${to}: spread ${r.spreadMs} ms, held spread ${r.heldSpreadMs} ms, total ${r.totalMs} ms, load ${loadavg()[0]?.toFixed(1)}\n${r.members.map((m, i) => `  ${m.vm}: downtime ${m.downtimeMs} ms (guest ${guestGaps[i]} ms), stopped ${m.stoppedMs} ms${parts(m)}; start delayed ${m.startDelayMs} ms, braked ${m.brakedMs} ms${m.pacedBytesPerSecond ? ` at ${Math.round(m.pacedBytesPerSecond / 2 ** 10)} KiB/s` : ''}, hovered ${m.hoveredMs} ms, last run ${m.lastRunMs} ms${m.sentBackMs.length ? `; sent back ${m.sentBackMs.length}x, paused ${m.sentBackMs.map((p) => p ?? '?').join(', ')} ms` : ''}\n    ${timelineOf(m)}`).join('\n')}\n`);
  return { spreadMs: r.spreadMs ?? NaN, guestGaps, downtimes: r.members.map((m) => m.downtimeMs ?? NaN), stops: r.members.map((m) => m.stoppedMs ?? NaN), held: r.members.map((m) => m.heldMs ?? NaN), parts: r.members.flatMap((m) => (m.breakdown ? [{ ...m.breakdown }] : [])), sentBack: r.members.flatMap((m) => m.sentBackMs), totalMs: performance.now() - t0 };
}

async function independentMoves(engine: VmEngine, names: string[], to: string): Promise<Move | null> {
  await startTicks(engine, names);
  const t0 = performance.now();
  const started = await Promise.all(names.map((n) => engine.migrate(n, { to, postcopy: 'never', timeoutS: 300 })));
  const done = await Promise.all(started.map((s) => engine.tasks.wait(s.task?.id as string)));
  if (done.some((d) => d.state !== 'succeeded')) {
    process.stderr.write(`independent ${names.length}: failed ${done.map((d) => d.error?.code).join(',')}\n`);
    return null;
  }
  const results = done.map((d) => d.result as MigrateResult);
  const times = results.map((r) => (r.resumedAt ? Date.parse(r.resumedAt) : NaN));
  const guestGaps = await stopTicks(engine, names, times.map((t) => (Number.isFinite(t) ? t : null)));
  const spreadMs = Math.max(...times) - Math.min(...times);
  process.stderr.write(`independent ${names.length} -> ${to}: spread ${spreadMs} ms, downtimes ${results.map((r) => r.downtimeMs).join(', ')} ms (guest ${guestGaps.join(', ')} ms), load ${loadavg()[0]?.toFixed(1)}\n`);
  const downtimes = results.map((r) => r.downtimeMs ?? NaN);
  return { spreadMs, guestGaps, downtimes, stops: downtimes, held: [], parts: [], sentBack: [], totalMs: performance.now() - t0 };
}

export async function groupBenchmark(args: string[]): Promise<BenchResult> {
  const o = { sizes: option(args, '--sizes', '2,4,8').split(',').map(Number), runs: Number(option(args, '--runs', '1')), memory: Number(option(args, '--memory', '256')), dirty: Number(option(args, '--dirty', '32')), order: option(args, '--order', 'group-first') };
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
        // Twice at most: under load a TCG guest's boot sometimes resets (seen at load 29).
        for (let attempt = 1; ; attempt++) {
          const { task } = await engine.create({ name, memory: `${o.memory}M`, host: 'lab1', start: true });
          const started = await engine.tasks.wait(task?.id as string);
          if (started.state === 'succeeded') break;
          if (attempt >= 2) throw new Error(`${name} did not start: ${started.message}`);
          process.stderr.write(`${name} did not start (${started.message}): once more\n`);
          await engine.kill(name).catch(() => undefined);
          await engine.delete(name).catch(() => undefined);
        }
      }
      await engine.exec(names[0] as string, { path: '/bin/sh', args: ['-c', dirtyScript(o.dirty)] });
      const group: Move[] = [];
      const alone: Move[] = [];
      try {
        for (let i = 0; i < o.runs; i++) {
          // The first move of a freshly booted guest reads its RAM file's holes (populating them at the source too):
          // --order baseline-first gives that cost to the baseline instead.
          if (o.order === 'baseline-first') {
            const a = await independentMoves(engine, names, 'lab2');
            if (!a) break;
            alone.push(a);
          }
          const g = await groupMove(engine, names, o.order === 'baseline-first' ? 'lab1' : 'lab2');
          if (!g) break;
          group.push(g);
          if (o.order === 'baseline-first') continue;
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
      comparisons.push({ metric: `${size} VMs: downtime per member seen in the guest (longest gap of its uptime log near its switch-over)`, offshoot: ms(who.mine, group.flatMap((x) => x.guestGaps)), baseline: ms(who.base, alone.flatMap((x) => x.guestGaps)) });
      comparisons.push({ metric: `${size} VMs: whole stop per member (source stop -> destination run)`, offshoot: ms(who.mine, group.flatMap((x) => x.stops)), baseline: ms(who.base, alone.flatMap((x) => x.stops)) });
      comparisons.push({ metric: `${size} VMs: total time`, offshoot: ms(who.mine, group.map((x) => x.totalMs)), baseline: ms(who.base, alone.map((x) => x.totalMs)) });
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
      const parts = group.flatMap((x) => x.parts);
      const breakdown = ['reachMs', 'heldMs', 'switchMs', 'waitMs', 'startMs'].map((k) => `${k.replace('Ms', '')} ${Math.round(median(parts.map((p) => p[k] ?? NaN).filter((v) => Number.isFinite(v))))}`).join(', ');
      notes.push(`${size} VMs: a member's whole stop by phase, medians over ${parts.length} member(s) (ms): ${breakdown}; held per member: ${group.flatMap((x) => x.held).map((h) => Math.round(h)).join(', ')}; members sent back (at their switch-over while the group was far from it: their guest ran on at the source and they went again): ${group.filter((x) => x.sentBack.length > 0).length} of ${group.length} group(s), pauses ${group.flatMap((x) => x.sentBack).map((p) => p ?? '?').join(', ') || 'none'} ms; load average after: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    }
    notes.push(`load average at the end: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    notes.push(`one member of each group rewrites ${o.dirty} MiB of tmpfs in a loop; guests of ${o.memory} MiB; ${o.order === 'baseline-first' ? 'the baseline moves them lab1 -> lab2 first, the group moves them back' : 'group moves lab1 -> lab2, the baseline moves them back'}`);
    notes.push("downtime seen in the guest: a loop logs the guest's uptime (10 ms steps) about every 10 ms (sleep 0.01); the longest gap ending at most 1 s before the member's resume (the loop's normal step under TCG is some tens of ms, more under load)");
    return { name: 'group', startedAt, machine: { cpus: cpus().length, accel, qemu: await qemuVersion(), node: process.version }, parameters: o, comparisons, notes };
  } finally {
    for (const vm of await engine.list()) await engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    const keep = option(args, '--keep-logs', '');
    if (keep) keepAgentLogs(labDir, keep);
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    for (const d of [home, memoryDir, labDir]) rmSync(d, { recursive: true, force: true });
  }
}

/** Copies each lab host's agent log (labN.log) and its output (labN.out.log) into `dir`. */
function keepAgentLogs(labDir: string, dir: string): void {
  mkdirSync(dir, { recursive: true });
  for (const host of ['lab1', 'lab2']) {
    for (const [log, name] of [[join(labDir, 'hosts', host, 'agent.log'), `${host}.out.log`], [join(labDir, 'hosts', host, 'home', 'agent.log'), `${host}.log`]] as const) {
      if (existsSync(log)) cpSync(log, join(dir, name));
    }
  }
}
