// Fabric benchmark: the latency of a claim until the child runs with its
// guest agent answering (the hand-out's guest step: see
// src/agent/fabric-hand-out.ts), from a ready pool of paused children and
// from one of warm children (`--warm`: running idle), each one at a time and
// in waves of --concurrency, with where the median claim's time went
// (picking the child, the hand-out call, the resume, the guest step: its
// identity, and for a script its guest-exec, and the exit polls; recording it
// running), the warm waves also with a customisation script and env (the
// other claims ask for the identity only), and from an empty pool (forked on
// demand), against a cold boot of the same guest and a plain fork of a
// running VM (`vm fork --count 1` until its child answers), measured in the
// same run; and the host memory of a pool of --pool ready
// children (their PSS without the template's mapping, plus the template's
// resident RAM) against as many booted guests (one booted guest's memory
// times the count, measured right after its boot: its PSS without its RAM
// file's mapping plus the file's resident size), and against --booted guests
// booted and running together (default: as many as the pool), measured the
// same way (and the warm pool's memory beside the paused one's). Defaults
// follow issue 14: 50 claims, 20 at once (the pool holds a whole wave), a
// pool of 16. Percentiles of the claims, the machine's load, the CPU a wave
// took per claim (the children's QEMUs, and this process: controller and
// agent) and the pool's memory split are in the notes. `--only warm`: the warm pool's
// claims (one at a time, in waves, in waves with a script) and the baselines
// only, for a quicker comparison (~1.5 min instead of ~4).
import { readFile, stat } from 'node:fs/promises';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import type { RunningDaemon } from '../src/api/index.ts';
import { mappingPssKiB, processMemoryStats } from '../src/memory/index.ts';
import { qemuVersion } from '../src/qemu/index.ts';
import type { ClaimResult, ForkResult } from '../src/vm/index.ts';
import type { BenchResult, Comparison } from './report.ts';

function option(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
}

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

async function boot(daemon: RunningDaemon, name: string, memoryMiB: number): Promise<number> {
  const t0 = performance.now();
  const { task } = await daemon.engine.create({ name, memory: `${memoryMiB}M`, start: true });
  const done = await daemon.engine.tasks.wait(task?.id as string);
  if (done.state !== 'succeeded') throw new Error(`boot failed: ${done.message}`);
  return performance.now() - t0;
}

async function remove(daemon: RunningDaemon, ref: string): Promise<void> {
  await daemon.engine.kill(ref).catch(() => undefined);
  await daemon.engine.delete(ref);
}

/** Host memory of QEMUs and the RAM files they map: each one's PSS without its RAM file's mapping, plus each file's resident size once. */
async function hostMemoryMiB(qemus: Array<{ pid: number; ramFile: string }>): Promise<number> {
  let kib = 0;
  for (const q of qemus) kib += (await processMemoryStats(q.pid)).pssKiB - (await mappingPssKiB(q.pid, q.ramFile));
  for (const file of new Set(qemus.map((q) => q.ramFile))) kib += ((await stat(file)).blocks * 512) / 1024;
  return kib / 1024;
}

/**
 * What each of these QEMUs holds privately on average, MiB, from /proc/PID/smaps: guest pages it wrote (its
 * private copies in the template's mapping), TCG's translated code (the anonymous mapping QEMU asks huge
 * pages for), QEMU's heap and other anonymous memory, and the data of QEMU's binary and libraries.
 */
async function privateSplit(pids: number[], ramFile: string): Promise<string> {
  const sums = { written: 0, tcg: 0, heap: 0, files: 0 };
  for (const pid of pids) {
    let kind: keyof typeof sums = 'heap';
    let priv = 0;
    let huge = 0;
    const flush = () => (sums[kind === 'heap' && huge > 0 ? 'tcg' : kind] += priv);
    for (const line of (await readFile(`/proc/${pid}/smaps`, 'utf8')).split('\n')) {
      const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
      if (head) {
        flush();
        const name = head[1] ?? '';
        kind = name === ramFile || name.endsWith('.ram') ? 'written' : name.startsWith('/') ? 'files' : 'heap';
        priv = 0;
        huge = 0;
        continue;
      }
      const kv = /^(\w+):\s+(\d+) kB/.exec(line);
      if (kv?.[1] === 'Private_Clean' || kv?.[1] === 'Private_Dirty') priv += Number(kv[2]);
      if (kv?.[1] === 'AnonHugePages') huge += Number(kv[2]);
    }
    flush();
  }
  const mib = (kib: number) => (kib / 1024 / Math.max(1, pids.length)).toFixed(1);
  return `guest pages written ${mib(sums.written)}, TCG translated code ${mib(sums.tcg)}, QEMU heap and other anonymous ${mib(sums.heap)}, QEMU and library data ${mib(sums.files)} MiB`;
}

/** CPU time (user + system) of a process, in clock ticks (/proc/PID/stat fields 14 and 15). */
async function cpuTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** The share of one CPU each of these processes used on average over `ms` (clock ticks of 10 ms). */
async function cpuShare(pids: number[], ms: number): Promise<number> {
  if (pids.length === 0) return 0;
  const before = await Promise.all(pids.map(cpuTicks));
  await new Promise((r) => setTimeout(r, ms));
  const after = await Promise.all(pids.map(cpuTicks));
  const ticks = after.reduce((sum, t, i) => sum + t - (before[i] as number), 0);
  return (ticks * 10) / ms / pids.length;
}

/** Host memory of the given QEMUs sharing the template's RAM file. */
function poolMemoryMiB(pids: number[], ramFile: string): Promise<number> {
  return hostMemoryMiB(pids.map((pid) => ({ pid, ramFile })));
}

type Timings = ClaimResult['timings'];

/** The median claim's time, step by step. */
function breakdown(t: Timings): string {
  const f = (n: number | undefined) => (n === undefined ? '-' : n.toFixed(1));
  return `claim ${f(t.claimMs)} = pick ${f(t.pickMs)} + hand-out call ${f(t.callMs)} + record running ${f(t.settleMs)}; on the host: waiting for its turn ${f(t.queuedMs)}, resume ${f(t.resumeMs)}, guest step ${f(t.guestMs)} (${t.armed ? 'armed' : 'not armed'}; agent connection ${f(t.agentMs)}, identity ${f(t.identityMs)} (armed: the request sent), script's guest-exec ${f(t.execMs)}, until the exit was seen ${f(t.exitMs)}, ${t.polls ?? '-'} polls)`;
}

function summarize(samples: number[], timings: Timings[]): string {
  if (samples.length === 0) return 'no claims';
  const order = samples.map((ms, i) => ({ ms, i })).sort((a, b) => a.ms - b.ms);
  const mid = order[Math.floor((order.length - 1) / 2)] as { ms: number; i: number };
  return `p50 ${percentile(samples, 50).toFixed(0)} ms, p99 ${percentile(samples, 99).toFixed(0)} ms over ${samples.length} (load ${(loadavg()[0] ?? 0).toFixed(1)}); the median claim: ${breakdown(timings[mid.i] as Timings)}`;
}

/** Claims one at a time from a full pool (refilled between claims). */
async function sequentialClaims(daemon: RunningDaemon, count: number): Promise<{ samples: number[]; summary: string }> {
  const samples: number[] = [];
  const timings: Timings[] = [];
  for (let i = 0; i < count; i++) {
    await daemon.fabric.keeper.settled();
    const s0 = performance.now();
    const c = await daemon.fabric.claim('bench', {});
    samples.push(performance.now() - s0);
    timings.push(c.timings);
    if (c.source !== 'pool') throw new Error(`a sequential claim found no ready child (${c.vm.name})`);
    await remove(daemon, c.vm.id);
  }
  await daemon.fabric.keeper.settled();
  const summary = summarize(samples, timings);
  process.stderr.write(`sequential claims ${samples.map((x) => x.toFixed(0)).join(', ')} ms: ${summary}\n`);
  return { samples, summary };
}

/** `claims` claims in waves of `concurrency`, the pool refilled to hold a whole wave before each. */
async function claimWaves(daemon: RunningDaemon, o: { claims: number; concurrency: number; poolSize: number; warm: boolean; request?: Record<string, unknown> }): Promise<{ samples: number[]; summary: string }> {
  const samples: number[] = [];
  const timings: Timings[] = [];
  let served = 0;
  let forked = 0;
  const cpu = { waveMs: 0, qemuMs: 0, selfMs: 0 };
  while (served < o.claims) {
    const wave = Math.min(o.concurrency, o.claims - served);
    await daemon.fabric.scale('bench', { ready: Math.max(o.poolSize, wave), warm: o.warm }, { wait: true });
    await daemon.fabric.keeper.settled();
    // The CPU the wave took: the pool children's QEMUs (the claims' guest steps) and this process (controller and agent).
    const pids = (await daemon.engine.list()).filter((v) => v.name.startsWith('bench-') && v.runtime?.pid).map((v) => v.runtime?.pid as number);
    const ticks0 = await Promise.all(pids.map((pid) => cpuTicks(pid).catch(() => 0)));
    const self0 = process.cpuUsage();
    const w0 = performance.now();
    const results = await Promise.all(
      Array.from({ length: wave }, async () => {
        const s = performance.now();
        const c = await daemon.fabric.claim('bench', o.request ?? {});
        if (o.request?.customize !== undefined && !c.script?.stdout.includes('customized')) throw new Error(`a claim's script did not run: ${JSON.stringify(c.script)}`);
        return { ms: performance.now() - s, c };
      }),
    );
    cpu.waveMs += performance.now() - w0;
    const self = process.cpuUsage(self0);
    cpu.selfMs += (self.user + self.system) / 1000;
    const ticks1 = await Promise.all(pids.map((pid) => cpuTicks(pid).catch(() => 0)));
    cpu.qemuMs += ticks1.reduce((sum, t, i) => sum + Math.max(0, t - (ticks0[i] as number)), 0) * 10;
    for (const r of results) {
      if (r.c.source !== 'pool') forked++;
      else {
        samples.push(r.ms);
        timings.push(r.c.timings);
      }
    }
    served += wave;
    await daemon.fabric.keeper.settled();
    for (const r of results) await remove(daemon, r.c.vm.id);
  }
  const perClaim = (ms: number) => (ms / Math.max(1, o.claims)).toFixed(1);
  const summary = `${summarize(samples, timings)}; waves of ${o.concurrency}; ${forked} claims found no ready child; CPU per claim: the children's QEMUs ${perClaim(cpu.qemuMs)} ms, this process ${perClaim(cpu.selfMs)} ms (over ${cpu.waveMs.toFixed(0)} ms of waves on ${cpus().length} cpus)`;
  process.stderr.write(`claims in waves ${samples.map((x) => x.toFixed(0)).join(', ')} ms: ${summary}\n`);
  return { samples, summary };
}

/** The paused pool: its memory against booted guests, then its claims one at a time and in waves. */
async function pausedPool(daemon: RunningDaemon, o: { poolSize: number; memoryMiB: number; bootedCount: number; claims: number; concurrency: number; sequential: number; memoryDir: string; bootedMiB: number; notes: string[]; load: number[] }) {
  const t0 = performance.now();
  await daemon.fabric.scale('bench', { ready: o.poolSize }, { wait: true });
  const fillMs = performance.now() - t0;
  const template = await daemon.fabric.show('bench');
  const members = (await daemon.engine.list()).filter((v) => v.name.startsWith('bench-') && v.state === 'paused');
  const ramFile = join(o.memoryDir, 'templates', `${template.placements[0]?.memoryTemplateId}.ram`);
  const poolMiB = await poolMemoryMiB(members.map((v) => v.runtime?.pid as number), ramFile);
  const templateMiB = (await stat(ramFile)).blocks / 2048;
  o.notes.push(`the pool's memory: the template's RAM file ${templateMiB.toFixed(0)} MiB resident, each child ${((poolMiB - templateMiB) / Math.max(1, members.length)).toFixed(0)} MiB on average besides; privately, on average: ${await privateSplit(members.map((v) => v.runtime?.pid as number), ramFile)}`);
  process.stderr.write(`pool of ${members.length} filled in ${fillMs.toFixed(0)} ms; ${poolMiB.toFixed(0)} MiB (booted x${members.length}: ${(o.bootedMiB * members.length).toFixed(0)} MiB)\n`);
  // As many booted guests as asked, running together beside the pool: their memory measured as the pool's.
  const booted: string[] = [];
  for (let i = 0; i < o.bootedCount; i++) {
    await boot(daemon, `booted${i}`, o.memoryMiB);
    booted.push(`booted${i}`);
  }
  const bootedVms = await Promise.all(booted.map((n) => daemon.engine.resolve(n)));
  const bootedTogetherMiB = await hostMemoryMiB(bootedVms.map((v) => ({ pid: v.runtime?.pid as number, ramFile: join(o.memoryDir, `${v.id}.ram`) })));
  o.load.push(loadavg()[0] ?? 0);
  process.stderr.write(`${booted.length} booted guests together: ${bootedTogetherMiB.toFixed(0)} MiB\n`);
  for (const n of booted) await remove(daemon, n);
  // One at a time from a full paused pool, then the same from a warm pool (children running idle): a claim's own
  // latency, and where the median claim's time goes.
  const paused = await sequentialClaims(daemon, o.sequential);
  o.notes.push(`sequential claims, paused pool: ${paused.summary}`);
  const pausedWaves = await claimWaves(daemon, { claims: o.claims, concurrency: o.concurrency, poolSize: o.poolSize, warm: false });
  o.notes.push(`claims in waves, paused pool: ${pausedWaves.summary}`);
  o.load.push(loadavg()[0] ?? 0);
  return { paused, pausedWaves, members, poolMiB, fillMs, booted, bootedTogetherMiB };
}

export async function fabricBenchmark(args: string[]): Promise<BenchResult> {
  const memoryMiB = option(args, '--memory', 256);
  const claims = option(args, '--claims', 50);
  const concurrency = option(args, '--concurrency', 20);
  const poolSize = option(args, '--pool', 16);
  const bootedCount = option(args, '--booted', poolSize);
  const runs = option(args, '--runs', 3);
  const sequentialClaims_ = option(args, '--sequential', 10);
  const onlyWarm = args[args.indexOf('--only') + 1] === 'warm' && args.includes('--only');
  const home = mkdtempSync('/tmp/osh-bench-home-');
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-mem-');
  const daemon = await startDaemon({ home, memoryDir });
  const startedAt = new Date().toISOString();
  const load = [loadavg()[0] ?? 0];
  const notes: string[] = [];
  const comparisons: Comparison[] = [];
  try {
    const host = await daemon.engine.hostInfo();
    // Baselines: cold boots, and plain forks of a running guest.
    const cold: number[] = [];
    const fork: number[] = [];
    const bootedSamples: number[] = [];
    for (let r = 0; r < runs; r++) {
      cold.push(await boot(daemon, `cold${r}`, memoryMiB));
      const fresh = await daemon.engine.resolve(`cold${r}`);
      bootedSamples.push(await poolMemoryMiB([fresh.runtime?.pid as number], join(memoryDir, `${fresh.id}.ram`)));
      const t0 = performance.now();
      const { task } = await daemon.engine.fork(`cold${r}`, { count: 1 });
      const done = await daemon.engine.tasks.wait(task?.id as string);
      if (done.state !== 'succeeded') throw new Error(`fork failed: ${done.message}`);
      fork.push(performance.now() - t0);
      for (const c of (done.result as ForkResult).children) await remove(daemon, c.name);
      if (r > 0) await remove(daemon, `cold${r}`);
    }
    const bootedMiB = [...bootedSamples].sort((a, b) => a - b)[Math.floor(bootedSamples.length / 2)] as number;
    process.stderr.write(`cold boot ${cold.map((x) => x.toFixed(0)).join(', ')} ms; fork ${fork.map((x) => x.toFixed(0)).join(', ')} ms; booted guest ${bootedMiB.toFixed(0)} MiB\n`);

    // The template, from a running guest (cold0 runs on).
    const made = await daemon.fabric.create({ name: 'bench', from: 'cold0' });
    const createdTask = await daemon.engine.tasks.wait(made.task?.id as string);
    if (createdTask.state !== 'succeeded') throw new Error(`template create failed: ${createdTask.message}`);

    // From an empty pool: each claim forks on demand.
    const onDemand: number[] = [];
    for (let r = 0; r < (onlyWarm ? 0 : runs); r++) {
      const t0 = performance.now();
      const c = await daemon.fabric.claim('bench', {});
      onDemand.push(performance.now() - t0);
      if (c.source !== 'on-demand') notes.push(`an empty-pool claim came from the pool (${c.vm.name})`);
      await remove(daemon, c.vm.id);
    }
    if (!onlyWarm) process.stderr.write(`on-demand claims ${onDemand.map((x) => x.toFixed(0)).join(', ')} ms\n`);

    // A ready pool: its memory, then claims in waves, refilled between waves.
    const paused = onlyWarm ? undefined : await pausedPool(daemon, { poolSize, memoryMiB, bootedCount, claims, concurrency, sequential: sequentialClaims_, memoryDir, bootedMiB, notes, load });
    const template = await daemon.fabric.show('bench');
    const ramFile = join(memoryDir, 'templates', `${template.placements[0]?.memoryTemplateId}.ram`);
    const templateMiB = (await stat(ramFile)).blocks / 2048;
    // A warm pool: the paused children retired, warm ones made (the memory of a pool of warm children too).
    await daemon.fabric.scale('bench', { ready: 0 }, { wait: true });
    await daemon.fabric.scale('bench', { ready: poolSize, warm: true }, { wait: true });
    await daemon.fabric.keeper.settled();
    const warmMembers = (await daemon.engine.list()).filter((v) => v.name.startsWith('bench-') && v.state === 'running');
    const warmPoolMiB = await poolMemoryMiB(warmMembers.map((v) => v.runtime?.pid as number), ramFile);
    const warmSplit = await privateSplit(warmMembers.map((v) => v.runtime?.pid as number), ramFile);
    const idle = await cpuShare(warmMembers.map((v) => v.runtime?.pid as number), 5_000);
    notes.push(`a warm pool of ${warmMembers.length}: ${warmPoolMiB.toFixed(0)} MiB, each child ${((warmPoolMiB - templateMiB) / Math.max(1, warmMembers.length)).toFixed(0)} MiB on average besides the template (privately: ${warmSplit}); idle, each used ${(idle * 100).toFixed(1)}% of a CPU (over 5 s)`);
    process.stderr.write(`warm pool of ${warmMembers.length}: ${warmPoolMiB.toFixed(0)} MiB, idle CPU ${(idle * 100).toFixed(1)}% each\n`);
    const warm = await sequentialClaims(daemon, sequentialClaims_);
    notes.push(`sequential claims, warm pool: ${warm.summary}`);
    const warmWaves = await claimWaves(daemon, { claims, concurrency, poolSize, warm: true });
    notes.push(`claims in waves, warm pool: ${warmWaves.summary}`);
    load.push(loadavg()[0] ?? 0);
    // The same with a customisation script and env (the claims above ask for the identity only): the guest runs a shell.
    const scripted = await claimWaves(daemon, { claims, concurrency, poolSize, warm: true, request: { customize: 'echo "customized $OFFSHOOT_VM_NAME $ROLE"\n', env: ['ROLE=bench'] } });
    notes.push(`claims in waves with a customisation script, warm pool: ${scripted.summary}`);
    load.push(loadavg()[0] ?? 0);
    const warmRows: Comparison[] = [
      { metric: 'claim until the agent answers (warm pool, one at a time)', offshoot: { label: 'claim, warm child', unit: 'ms', samples: warm.samples }, baseline: { label: 'plain fork, 1 child', unit: 'ms', samples: fork } },
      { metric: `claim until the agent answers (warm pool, ${concurrency} at once)`, offshoot: { label: 'claim, warm child', unit: 'ms', samples: warmWaves.samples }, baseline: { label: 'plain fork, 1 child', unit: 'ms', samples: fork } },
      { metric: `claim with a customisation script until it ran (warm pool, ${concurrency} at once)`, offshoot: { label: 'claim + script, warm child', unit: 'ms', samples: scripted.samples }, baseline: { label: 'plain fork, 1 child', unit: 'ms', samples: fork } },
    ];
    if (!paused) comparisons.push(...warmRows);
    else {
      const { members, poolMiB, booted, bootedTogetherMiB, pausedWaves } = paused;
      comparisons.push(
        { metric: 'claim until the agent answers (paused pool, one at a time)', offshoot: { label: 'claim, paused child', unit: 'ms', samples: paused.paused.samples }, baseline: { label: 'cold boot', unit: 'ms', samples: cold } },
        { metric: 'claim until the agent answers (paused pool, one at a time)', offshoot: { label: 'claim, paused child', unit: 'ms', samples: paused.paused.samples }, baseline: { label: 'plain fork, 1 child', unit: 'ms', samples: fork } },
        warmRows[0] as Comparison,
        { metric: `claim until the agent answers (paused pool, ${concurrency} at once)`, offshoot: { label: 'claim, paused child', unit: 'ms', samples: pausedWaves.samples }, baseline: { label: 'plain fork, 1 child', unit: 'ms', samples: fork } },
        ...warmRows.slice(1),
        { metric: 'claim until the agent answers (empty pool)', offshoot: { label: 'claim, forked on demand', unit: 'ms', samples: onDemand }, baseline: { label: 'cold boot', unit: 'ms', samples: cold } },
        { metric: `host memory of ${members.length} ready children`, offshoot: { label: 'pool (PSS + template)', unit: 'MiB', samples: [poolMiB] }, baseline: { label: `${members.length} x booted guest`, unit: 'MiB', samples: [bootedMiB * members.length] } },
        { metric: `host memory: ${members.length} ready children vs ${booted.length} booted guests running together`, offshoot: { label: 'pool (PSS + template)', unit: 'MiB', samples: [poolMiB] }, baseline: { label: `${booted.length} booted guests (PSS + RAM files)`, unit: 'MiB', samples: [bootedTogetherMiB] } },
      );
      notes.push(`empty-pool claims: p50 ${percentile(onDemand, 50).toFixed(0)} ms over ${onDemand.length}`);
      notes.push(`filling a pool of ${poolSize}: ${paused.fillMs.toFixed(0)} ms`);
    }
    notes.push(`machine load (1-min average) during the run: ${load.map((l) => l.toFixed(1)).join(', ')} on ${cpus().length} cpus`);
    notes.push('cold boot = create + start of the default guest until its agent answers; plain fork = vm fork --count 1 until the child is customized');
    return {
      name: 'fabric',
      startedAt,
      machine: { cpus: cpus().length, accel: host.accel, qemu: await qemuVersion(), node: process.version },
      parameters: { memoryMiB, claims, concurrency, poolSize, bootedCount, runs, sequentialClaims: sequentialClaims_, only: onlyWarm ? 'warm' : 'all' },
      comparisons,
      notes,
    };
  } finally {
    await daemon.fabric.scale('bench', { ready: 0 }, { wait: true }).catch(() => undefined);
    await daemon.fabric.delete('bench', { force: true }).catch(() => undefined);
    for (const vm of await daemon.engine.list()) await daemon.engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
    rmSync(memoryDir, { recursive: true, force: true });
  }
}
