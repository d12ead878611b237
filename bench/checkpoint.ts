// Checkpoint benchmark: a default guest with half its memory random (in a
// tmpfs) and half zero is checkpointed live and restored eagerly and lazily
// (`--sizes 256M,1G,4G`, the default; each size is a separate guest). Offshoot's
// figures beside QEMU's own save (`migrate` to a file, as `virsh save` does,
// uncapped) and restore (`-incoming` from that file), same guest, same run:
// stun, time until the file is complete, GB/s of guest memory, file size;
// restore time until the VM runs and until the guest has read its random
// data once (for the lazy restore: starting the moment the VM runs, while its
// memory is still streaming in), and for the lazy restore the time until the
// stream is complete and the checkpoint no longer needed. `--busy N` first
// boots N more guests that each keep a vCPU busy (a shell loop) for the whole
// run: the figures under load, both sides equally loaded. Both sides write
// their files to tmpfs, or under `--dir PATH` (a disk, where Offshoot's
// closing fsync is real: QEMU's save is then also timed until its file is
// fsynced, "durable"). Diagnostics:
// `--only save [--repeat N] [--pause] [--direct]` times live saves only (N
// pairs: each side saves a freshly booted guest, the pair's order alternating), with
// the operation's phases (prepare, switch, record, write, finish, collect),
// the writer's own waits, the CPU of this process and of the guest's QEMUs
// (the one before the switch-over included) beside the CPU of QEMU's save
// (the whole QEMU and the `cat` it writes through), as CPU ms per GiB of
// guest, this process's threads (CPU, run-queue wait, context switches),
// (--perf FILE) `perf record -g` of this process over each save, and
// (--direct) the writer called directly on the same template (reading guest
// RAM with pread, through the mapping, then read and packed by the addon); `--only lazy
// [--repeat N] [--read]` times lazy streams from the VM running, with the page
// server's waits and the CPU of each side (the destination QEMU by thread).
// Before each timed save, restore or stream, on both sides, free memory is
// primed (bench/tools.ts primeFreePages: this VM's hypervisor takes free pages
// back, and touching them again is slow); `--no-prime` leaves it out.
import { spawn } from 'node:child_process';
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import type { RunningDaemon } from '../src/api/index.ts';
import { loadDefaultGuest } from '../src/guest/index.ts';
import { QgaClient, createImage, qemuVersion } from '../src/qemu/index.ts';
import { openGuestMemory, writeCheckpoint } from '../src/memory/index.ts';
import type { MemoryReadPath } from '../src/memory/index.ts';
import { guestMemoryBytes } from '../src/protocol/index.ts';
import { connectQmpWhenReady, rawGuestArgs, waitForMigrationDone } from './qemu-baseline.ts';
import type { CheckpointResult, VmRecord } from '../src/vm/index.ts';
import { option, primeFreePages } from './tools.ts';
import type { BenchResult, Comparison } from './report.ts';

/** `--sizes 256M,1G,4G` (M or G), or the older `--memory 256,1024` (MiB). */
export function parseSizes(args: string[], fallback: number[]): number[] {
  const i = args.indexOf('--sizes');
  if (i >= 0) {
    return (args[i + 1] ?? '').split(',').map((s) => {
      const m = /^(\d+)([MG])$/i.exec(s.trim());
      if (!m) throw new Error(`--sizes: "${s}" is not a size like 256M or 4G`);
      return Number(m[1]) * (m[2]?.toUpperCase() === 'G' ? 1024 : 1);
    });
  }
  const j = args.indexOf('--memory');
  return j >= 0 ? (args[j + 1] ?? '').split(',').map(Number) : fallback;
}

/** Where both sides write their checkpoint files (`--dir`; default tmpfs). */
let fileRoot = '/dev/shm';

/** Whether free memory is primed before each timed step (both sides; `--no-prime`: not). See primeFreePages. */
let priming = true;

/** Primes half the guest's size + 256 MiB of free memory (what a save, restore or stream of it writes, with room), unless --no-prime. */
function prime(memoryMiB: number): void {
  if (priming) primeFreePages(memoryMiB / 2 + 256);
}

const fill = (mib: number) => `mkdir -p /mnt/ram && mount -t tmpfs -o size=${mib + 16}m tmpfs /mnt/ram && dd if=/dev/urandom of=/mnt/ram/blob bs=1M count=${mib} 2>/dev/null`;

async function exec(daemon: RunningDaemon, vm: string, script: string): Promise<void> {
  const r = await daemon.engine.exec(vm, { path: '/bin/sh', args: ['-c', script], timeoutMs: 600_000 });
  if (r.exitCode !== 0) throw new Error(`${vm}: ${Buffer.from(r.stderr, 'base64').toString()}`);
}

const TICK = 100; // USER_HZ on Linux

/** CPU seconds (user + system) of process `pid` as a whole, threads that ended included. */
export function processCpu(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICK;
}

/** CPU seconds (user + system) of process `pid`, threads that ended and children it waited for (a `cat` of exec:) included. */
export function processCpuWithChildren(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / TICK;
}

/** CPU seconds (user + system) of each thread of process `pid`, keyed by thread name and id. */
export function threadCpu(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  const tick = TICK;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue;
    }
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out[`${name}/${tid}`] = (Number(fields[11]) + Number(fields[12])) / tick;
  }
  return out;
}

/**
 * Per thread of process `pid` (keyed by name and id): CPU ms in user and system mode, ms run and ms
 * waited runnable for a core (schedstat: the run-queue wait, what a loaded machine adds), and voluntary
 * (blocked: waiting for I/O, a lock or another thread) and involuntary (preempted) context switches.
 */
export function threadSched(pid: number): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const [runNs, waitNs] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      const switches = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0);
      out[`${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))}/${tid}`] = [(Number(f[11]) * 1000) / TICK, (Number(f[12]) * 1000) / TICK, (runNs ?? 0) / 1e6, (waitNs ?? 0) / 1e6, switches('voluntary_ctxt_switches'), switches('nonvoluntary_ctxt_switches')];
    } catch {
      // the thread ended
    }
  }
  return out;
}

/** `threadSched` after minus before, for threads that ran at least 5 ms, as "user/sys/run/wait ms, vcs/nvcs". */
export function schedDelta(after: Record<string, number[]>, before: Record<string, number[]>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(after)
      .map(([k, v]) => [k, v.map((x, i) => Math.round(x - (before[k]?.[i] ?? 0)))] as const)
      .filter(([, v]) => (v[2] ?? 0) >= 5)
      .map(([k, v]) => [k, `${v[0]}/${v[1]}/${v[2]}/${v[3]} ms, ${v[4]}/${v[5]}`]),
  );
}

function cpuDelta(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, Number((v - (before[k] ?? 0)).toFixed(2))]).filter(([, v]) => (v as number) > 0));
}

/**
 * Samples the CPU of `pid`'s threads every 100 ms until stopped: threads that end (QEMU's postcopy
 * listen thread ends with the stream) keep their last figure. Returns seconds by thread name.
 */
function sampleThreadCpu(pid: number): { stop(): Record<string, number> } {
  const first = threadCpu(pid);
  const total0 = processCpu(pid);
  let last = first;
  let total = total0;
  const take = () => {
    try {
      last = { ...last, ...threadCpu(pid) };
      total = processCpu(pid);
    } catch {
      // the process ended
    }
  };
  const timer = setInterval(take, 100);
  return {
    stop: () => {
      clearInterval(timer);
      take();
      return { total: Number((total - total0).toFixed(2)), ...cpuDelta(last, first) };
    },
  };
}

/** The last log line of the daemon with message `msg`, parsed. */
function lastLogLine(home: string, msg: string): Record<string, unknown> | undefined {
  const last = readFileSync(join(home, 'daemon.log'), 'utf8').split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).at(-1);
  return last ? (JSON.parse(last) as Record<string, unknown>) : undefined;
}

/**
 * A lazy restore whose stream is measured: from the VM running to the stream complete, with the guest
 * idle or (`read`) reading its random data meanwhile; CPU of the benchmark process (the page server) and
 * of the destination QEMU by thread over that window, and the page server's own figures.
 */
async function lazyStreamOnce(daemon: RunningDaemon, home: string, checkpoint: string, read: boolean) {
  const started = await daemon.engine.restore({ checkpoint, mode: 'lazy' });
  const taskId = started.task?.id as string;
  let pid: number | undefined;
  while (pid === undefined) {
    const task = await daemon.engine.tasks.get(taskId);
    if (task.state === 'failed') throw new Error(`lazy restore failed: ${task.message}`);
    const vm = await daemon.engine.resolve(started.vm.id);
    if (vm.state === 'running' && vm.runtime) pid = vm.runtime.pid;
    else await new Promise((r) => setTimeout(r, 2));
  }
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const self0 = threadCpu(process.pid);
  const qemu = sampleThreadCpu(pid);
  let readMs: number | undefined;
  if (read) {
    for (;;) {
      const task = await daemon.engine.tasks.get(taskId);
      if (task.state !== 'running' || task.progress >= 0.4) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    await exec(daemon, started.vm.name, 'md5sum /mnt/ram/blob >/dev/null');
    readMs = performance.now() - t0;
  }
  const done = await daemon.engine.tasks.wait(taskId);
  const endMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const qemuCpu = qemu.stop();
  const selfCpu = cpuDelta(threadCpu(process.pid), self0);
  if (done.state !== 'succeeded') throw new Error(`lazy restore failed: ${done.message}`);
  await daemon.engine.kill(started.vm.id);
  await daemon.engine.delete(started.vm.id);
  await new Promise((r) => setTimeout(r, 200));
  const line = lastLogLine(home, 'lazy restore complete: the checkpoint is no longer needed') ?? {};
  const pick = (k: string) => Number(line[k] ?? NaN);
  return { endMs, readMs, streamMs: pick('streamMs'), benchCpu: { user: cpu.user / 1e6, system: cpu.system / 1e6 }, selfCpu, qemuCpu, server: { pagesSent: pick('pagesSent'), zeroPagesSent: pick('zeroPagesSent'), requests: pick('requests'), faultBlocks: pick('faultBlocks'), backgroundBlocks: pick('backgroundBlocks'), bytesWritten: pick('bytesWritten'), writeWaitMs: Math.round(pick('writeWaitMs')), readWaitMs: Math.round(pick('readWaitMs')) } };
}

/** `--only lazy`: one checkpoint, then lazy restores (`--repeat N`) with the guest idle and reading, each beside an eager restore. */
async function lazyOnly(daemon: RunningDaemon, home: string, dir: string, memoryMiB: number, repeat: number, readToo: boolean): Promise<Comparison[]> {
  const name = `ck${memoryMiB}`;
  const boot = await daemon.engine.create({ name, memory: `${memoryMiB}M`, start: true });
  await daemon.engine.tasks.wait(boot.task?.id as string);
  await exec(daemon, name, fill(memoryMiB / 2));
  const saved = await daemon.engine.tasks.wait((await daemon.engine.checkpoint(name, { name: `${name}-ckpt`, out: join(dir, `${name}.ckpt`) })).task?.id as string);
  if (saved.state !== 'succeeded') throw new Error(`checkpoint failed: ${saved.message}`);
  await daemon.engine.kill(name);
  await daemon.engine.delete(name);
  const idle: number[] = [];
  const reading: number[] = [];
  const eager: number[] = [];
  for (let r = 0; r < repeat; r++) {
    for (const read of readToo ? [false, true] : [false]) {
      prime(memoryMiB);
      const s = await lazyStreamOnce(daemon, home, `${name}-ckpt`, read);
      const gbs = (s.server.bytesWritten / 1e9) / (s.streamMs / 1000);
      process.stderr.write(`${memoryMiB} MiB lazy ${read ? 'reading' : 'idle'} ${r + 1}/${repeat} (load ${loadavg()[0]?.toFixed(1)}): stream ${s.streamMs.toFixed(0)} ms (${gbs.toFixed(2)} GB/s of stream), end seen ${s.endMs.toFixed(0)} ms${s.readMs ? `, data read ${s.readMs.toFixed(0)} ms` : ''}; page server ${JSON.stringify(s.server)}; bench process CPU user ${s.benchCpu.user.toFixed(2)} sys ${s.benchCpu.system.toFixed(2)} s ${JSON.stringify(s.selfCpu)}; QEMU CPU ${JSON.stringify(s.qemuCpu)}\n`);
      (read ? reading : idle).push(s.streamMs);
    }
    const e = await restoreOnce(daemon, `${name}-ckpt`, 'eager', memoryMiB);
    eager.push(e.runningMs);
    process.stderr.write(`${memoryMiB} MiB eager ${r + 1}/${repeat}: running ${e.runningMs.toFixed(0)} ms\n`);
  }
  await daemon.engine.deleteCheckpoint(`${name}-ckpt`);
  const label = `${memoryMiB} MiB (${memoryMiB / 2} MiB random)`;
  return [
    { metric: `${label}: lazy stream complete, guest idle`, offshoot: { label: 'offshoot lazy restore (from running)', unit: 'ms', samples: idle }, baseline: { label: 'offshoot eager restore (running)', unit: 'ms', samples: eager } },
    ...(reading.length ? [{ metric: `${label}: lazy stream complete, guest reading`, offshoot: { label: 'offshoot lazy restore (from running)', unit: 'ms' as const, samples: reading }, baseline: { label: 'offshoot eager restore (running)', unit: 'ms' as const, samples: eager } }] : []),
  ];
}

/** The writer's own timings of the last checkpoint written (the host agent logs them). */
function lastWriteTimings(home: string): Record<string, number | string> | undefined {
  const last = lastLogLine(home, 'checkpoint written');
  if (!last) return undefined;
  const { totalMs, readWaitMs, encodeWaitMs, writeWaitMs, syncMs, rawBlocks, lz4Blocks, zeroBlocks, readPath } = last as Record<string, number> & { readPath?: string };
  const round = (v: number | undefined) => Number((v ?? 0).toFixed(0));
  return { readPath: readPath ?? 'unknown', totalMs: round(totalMs), readWaitMs: round(readWaitMs), encodeWaitMs: round(encodeWaitMs), writeWaitMs: round(writeWaitMs), syncMs: round(syncMs), rawBlocks: round(rawBlocks), lz4Blocks: round(lz4Blocks), zeroBlocks: round(zeroBlocks) };
}

/** The agent's steps of the last fork prepared (debug log, OFFSHOOT_LOG_LEVEL=debug), or nothing. */
function preparedSteps(home: string): string {
  const line = lastLogLine(home, 'fork prepared');
  return line ? ` (prepare: disks ${String(line.disksMs)}, template ${String(line.templateMs)}, QEMU launch ${String(line.launchMs)} ms)` : '';
}

/**
 * One live checkpoint of VM `name` into `out`, then deleted: time until the file is complete, the
 * engine's stun and write times, the writer's own timings, and the CPU the benchmark process (daemon
 * and writer) and the VM's QEMU (by thread) spent meanwhile.
 */
async function saveOnce(daemon: RunningDaemon, home: string, name: string, out: string, perfFile?: string): Promise<{ completeMs: number; queuedMs: number; result: CheckpointResult; writer?: Record<string, number | string>; benchCpuS: number; selfCpu: Record<string, number>; sched: Record<string, string>; qemuCpu: Record<string, number> }> {
  const before = (await daemon.engine.resolve(name)).runtime?.pid;
  const qemuBefore = before ? threadCpu(before) : {};
  // The QEMU the VM ran in before the switch-over (it saves the device state in the stun, then ends).
  const oldQemu = before ? sampleThreadCpu(before) : undefined;
  const self0 = threadCpu(process.pid);
  const sched0 = threadSched(process.pid);
  // `--perf FILE`: the bench process's stacks over the save (perf record -g), for `perf report -i FILE`.
  const perf = perfFile ? spawn('perf', ['record', '-q', '-g', '-F', '999', '-p', String(process.pid), '-o', perfFile], { stdio: 'ignore' }) : undefined;
  if (perf) await new Promise((r) => setTimeout(r, 300));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const queued = await daemon.engine.checkpoint(name, { name: `${name}-ckpt`, out });
  const queuedMs = performance.now() - t0;
  const saved = await daemon.engine.tasks.wait(queued.task?.id as string);
  if (saved.state !== 'succeeded') throw new Error(`checkpoint failed: ${saved.message}`);
  const completeMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const selfCpu = cpuDelta(threadCpu(process.pid), self0);
  const sched = schedDelta(threadSched(process.pid), sched0);
  if (perf) {
    perf.kill('SIGINT');
    await new Promise((r) => perf.once('exit', r));
  }
  const after = (await daemon.engine.resolve(name)).runtime?.pid;
  // The switch-over replaces the QEMU: the old one's CPU is gone with it, the new one's counts from its start.
  const qemuCpu = after ? cpuDelta(threadCpu(after), after === before ? qemuBefore : {}) : {};
  const oldQemuCpu = oldQemu?.stop() ?? {};
  if (after !== before) qemuCpu['old QEMU (total)'] = oldQemuCpu.total ?? 0;
  await new Promise((r) => setTimeout(r, 200)); // the log line reaches the file
  return { completeMs, queuedMs, result: saved.result as CheckpointResult, writer: lastWriteTimings(home), benchCpuS: (cpu.user + cpu.system) / 1e6, selfCpu, sched, qemuCpu };
}

/**
 * The writer alone, called directly in this process on the template file the VM's checkpoint was just
 * written from (the VM still maps it, running): the same file and load, without the agent protocol,
 * reading guest RAM by `readPath` (read and packed by the addon, the mapping, or pread).
 */
async function directWrite(daemon: RunningDaemon, name: string, out: string, readPath: MemoryReadPath): Promise<{ ms: number; timings: Record<string, number>; selfCpu: Record<string, number>; sched: Record<string, string>; cpuS: number }> {
  const vm = await daemon.engine.resolve(name);
  const templateId = vm.runtime?.memory.templateId;
  if (!templateId || !daemon.agent) throw new Error(`${name} maps no template`);
  const memory = await openGuestMemory(daemon.agent.templatePath(templateId), guestMemoryBytes(vm.spec), readPath);
  const self0 = threadCpu(process.pid);
  const sched0 = threadSched(process.pid);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  try {
    const written = await writeCheckpoint(out, { memoryBytes: guestMemoryBytes(vm.spec), memory, metadata: {}, deviceState: Buffer.alloc(16), onProgress: () => undefined });
    const cpu = process.cpuUsage(cpu0);
    const timings = Object.fromEntries(Object.entries(written.timings).flatMap(([k, v]) => (typeof v === 'number' ? [[k, Math.round(v)]] : [])));
    return { ms: performance.now() - t0, timings, selfCpu: cpuDelta(threadCpu(process.pid), self0), sched: schedDelta(threadSched(process.pid), sched0), cpuS: (cpu.user + cpu.system) / 1e6 };
  } finally {
    await memory.close();
    rmSync(out, { force: true });
  }
}

/** QEMU's own save and restore of the same guest, driven by hand. */
async function qemuSaveRestore(accel: string, memoryMiB: number, randomMiB: number, restore = true) {
  const guest = await loadDefaultGuest();
  const dir = mkdtempSync('/tmp/osh-ckb-');
  const mem = mkdtempSync(join(fileRoot, 'osh-ckb-'));
  const procs: ReturnType<typeof spawn>[] = [];
  await createImage({ path: join(dir, 'd.qcow2'), format: 'qcow2', backing: { path: guest.dataDisk, format: 'qcow2' } });
  const qemu = async (i: number, incoming: boolean) => {
    const qmpPath = join(dir, `qmp${i}.sock`);
    const proc = spawn('qemu-system-x86_64', rawGuestArgs({ accel, memoryMiB, guest, disk: join(dir, 'd.qcow2'), qgaSocket: join(dir, `qga${i}.sock`), qmpSocket: qmpPath, incoming, offshootCpu: true }), { stdio: 'ignore' });
    procs.push(proc);
    return { qmp: await connectQmpWhenReady(qmpPath), qga: join(dir, `qga${i}.sock`) };
  };
  try {
    const src = await qemu(0, false);
    const agent = await QgaClient.waitForAgent(src.qga, { timeoutMs: 120_000 });
    const r = await agent.exec('/bin/sh', ['-c', fill(randomMiB)], { timeoutMs: 600_000 });
    if (r.exitCode !== 0) throw new Error(r.stderr.toString());
    agent.close();
    const file = join(mem, 'state');
    const pid = procs[0]?.pid as number;
    const cpu0 = processCpuWithChildren(pid);
    const threads0 = threadCpu(pid);
    const sched0 = threadSched(pid);
    prime(memoryMiB);
    const t0 = performance.now();
    await src.qmp.stop();
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
    await src.qmp.execute('migrate', { uri: `exec:cat > ${file}` });
    await waitForMigrationDone(src.qmp);
    const saveMs = performance.now() - t0;
    // What a durable file costs on top (Offshoot's writer fsyncs its file before it renames it into place).
    const syncFd = openSync(file, 'r');
    fsyncSync(syncFd);
    closeSync(syncFd);
    const syncedMs = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 100)); // QEMU reaps its cat
    // The whole QEMU (its migration thread, main loop) and the cat it writes the file through.
    const saveCpu = { total: Number((processCpuWithChildren(pid) - cpu0).toFixed(2)), ...cpuDelta(threadCpu(pid), threads0) };
    // QEMU's threads (its migration thread writes the stream), run-queue wait included (its cat is not among them).
    const saveSched = schedDelta(threadSched(pid), sched0);
    src.qmp.close();
    const fileBytes = statSync(file).size;
    if (!restore) return { stunMs: saveMs, saveMs, syncedMs, fileBytes, runningMs: NaN, readAllMs: NaN, saveCpu, saveSched };
    prime(memoryMiB);
    const t1 = performance.now();
    const dst = await qemu(1, true);
    await dst.qmp.execute('migrate-incoming', { uri: `exec:cat ${file}` });
    await waitForMigrationDone(dst.qmp);
    await dst.qmp.cont();
    const runningMs = performance.now() - t1;
    const agent2 = await QgaClient.waitForAgent(dst.qga, { timeoutMs: 60_000 });
    const r2 = await agent2.exec('/bin/sh', ['-c', 'md5sum /mnt/ram/blob >/dev/null'], { timeoutMs: 600_000 });
    if (r2.exitCode !== 0) throw new Error('md5 failed');
    const readAllMs = performance.now() - t1;
    agent2.close();
    dst.qmp.close();
    return { stunMs: saveMs, saveMs, syncedMs, fileBytes, runningMs, readAllMs, saveCpu, saveSched };
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.once('exit', r)))));
    rmSync(dir, { recursive: true, force: true });
    rmSync(mem, { recursive: true, force: true });
  }
}

/**
 * One restore of `checkpoint`: until the VM runs (polled from its record, 5 ms apart, or the engine's own
 * figure), until the guest has read its random data (md5sum started at once), and for a lazy restore
 * until its background stream has completed (the restore task ends then).
 */
async function restoreOnce(daemon: RunningDaemon, checkpoint: string, mode: 'eager' | 'lazy', memoryMiB: number): Promise<{ runningMs: number; readAllMs: number; streamMs?: number }> {
  prime(memoryMiB);
  const t0 = performance.now();
  const wall0 = Date.now();
  const started = await daemon.engine.restore({ checkpoint, mode });
  const taskId = started.task?.id as string;
  let polledMs: number | undefined;
  while (polledMs === undefined) {
    const task = await daemon.engine.tasks.get(taskId);
    if (task.state === 'failed') throw new Error(`${mode} restore failed: ${task.message}`);
    if ((await daemon.engine.resolve(started.vm.id)).state === 'running') polledMs = performance.now() - t0;
    else await new Promise((r) => setTimeout(r, 5));
  }
  // The restore customizes the guest's identity through its agent right after it runs; the guest agent
  // takes one client at a time, so the md5sum waits for that step: the end of an eager restore's task, or
  // a lazy one's progress reaching 0.4 (then it only streams memory; see VmEngine.restore).
  for (;;) {
    const task = await daemon.engine.tasks.get(taskId);
    if (task.state !== 'running' || (mode === 'lazy' && task.progress >= 0.4)) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  await exec(daemon, started.vm.name, 'md5sum /mnt/ram/blob >/dev/null');
  const readAllMs = performance.now() - t0;
  const done = await daemon.engine.tasks.wait(taskId);
  // The restore task of a lazy restore ends when its stream is complete.
  const endMs = Date.parse(done.updatedAt) - wall0;
  if (done.state !== 'succeeded') throw new Error(`${mode} restore failed: ${done.message}`);
  const result = done.result as { vm: VmRecord; runningMs?: number };
  await daemon.engine.kill(started.vm.id);
  await daemon.engine.delete(started.vm.id);
  return { runningMs: result.runningMs ?? polledMs, readAllMs, ...(mode === 'lazy' ? { streamMs: endMs } : {}) };
}

/**
 * `--only save`: `repeat` pairs of saves, Offshoot's live checkpoint of a freshly booted guest beside
 * QEMU's save of its own freshly booted guest, the pair's order alternating (this machine's memory and
 * CPU are shared and noisy: one pair measured in the same minute, medians over the pairs), with where
 * Offshoot's time went.
 */
async function saveOnly(daemon: RunningDaemon, home: string, dir: string, accel: string, memoryMiB: number, repeat: number, pauseGuest: boolean, direct: boolean, perfFile?: string): Promise<Comparison[]> {
  const randomMiB = memoryMiB / 2;
  const complete: number[] = [];
  const writes: number[] = [];
  const cpuPerGiB: number[] = [];
  const q: number[] = [];
  const qSynced: number[] = [];
  const qCpu: number[] = [];
  const offshootSave = async (r: number) => {
    const name = `ck${memoryMiB}-${r}`;
    const boot = await daemon.engine.create({ name, memory: `${memoryMiB}M`, start: true });
    await daemon.engine.tasks.wait(boot.task?.id as string);
    await exec(daemon, name, fill(randomMiB));
    if (pauseGuest) await daemon.engine.pause(name);
    prime(memoryMiB);
    const s = await saveOnce(daemon, home, name, join(dir, `${name}.ckpt`), perfFile && `${perfFile}.${memoryMiB}M.${r}`);
    process.stderr.write(`${memoryMiB} MiB save ${r + 1}/${repeat} (load ${loadavg()[0]?.toFixed(1)}): complete ${s.completeMs.toFixed(0)} ms, stun ${s.result.stunMs.toFixed(0)}, write ${s.result.writeMs.toFixed(0)}; phases ${JSON.stringify(Object.fromEntries(Object.entries(s.result.phasesMs ?? {}).map(([k, v]) => [k, Math.round(v)])))}${preparedSteps(home)}; task queued to running ${s.queuedMs.toFixed(0)} ms; writer ${JSON.stringify(s.writer)}; bench process CPU ${s.benchCpuS.toFixed(2)} s ${JSON.stringify(s.selfCpu)}; its threads (user/sys/run/run-queue wait ms, voluntary/involuntary switches) ${JSON.stringify(s.sched)}; QEMU CPU ${JSON.stringify(s.qemuCpu)}\n`);
    if (direct) {
      for (const readPath of ['pread', 'mmap', 'packed'] as const) {
        const d = await directWrite(daemon, name, join(dir, `${name}-direct.ckpt`), readPath);
        process.stderr.write(`${memoryMiB} MiB direct writer (${readPath}) on the same template (load ${loadavg()[0]?.toFixed(1)}): ${d.ms.toFixed(0)} ms; ${JSON.stringify(d.timings)}; CPU ${d.cpuS.toFixed(2)} s ${JSON.stringify(d.selfCpu)}; threads ${JSON.stringify(d.sched)}\n`);
      }
    }
    complete.push(s.completeMs);
    writes.push(s.result.writeMs);
    // Ours: the whole benchmark process (controller, agent, writer) and the guest QEMU's CPU over the save.
    cpuPerGiB.push(((s.benchCpuS + Object.values(s.qemuCpu).reduce((a, b) => a + b, 0)) * 1000) / (memoryMiB / 1024));
    await daemon.engine.deleteCheckpoint(`${name}-ckpt`);
    await daemon.engine.kill(name);
    await daemon.engine.delete(name);
  };
  const qemuSave = async (r: number) => {
    const qs = await qemuSaveRestore(accel, memoryMiB, randomMiB, false);
    q.push(qs.saveMs);
    qSynced.push(qs.syncedMs);
    qCpu.push((qs.saveCpu.total * 1000) / (memoryMiB / 1024));
    process.stderr.write(`${memoryMiB} MiB QEMU save ${r + 1}/${repeat} (load ${loadavg()[0]?.toFixed(1)}): ${q.at(-1)?.toFixed(0)} ms (fsynced ${qs.syncedMs.toFixed(0)}), file ${(qs.fileBytes / 2 ** 20).toFixed(0)} MiB; QEMU CPU (with its cat) ${JSON.stringify(qs.saveCpu)}; its threads (user/sys/run/run-queue wait ms, voluntary/involuntary switches) ${JSON.stringify(qs.saveSched)}\n`);
  };
  for (let r = 0; r < repeat; r++) {
    for (const side of r % 2 === 0 ? [offshootSave, qemuSave] : [qemuSave, offshootSave]) await side(r);
  }
  const label = `${memoryMiB} MiB (${randomMiB} MiB random)`;
  return [
    { metric: `${label}: file complete`, offshoot: { label: 'offshoot live checkpoint', unit: 'ms', samples: complete }, baseline: { label: 'qemu migrate to file', unit: 'ms', samples: q } },
    { metric: `${label}: file complete, durable`, offshoot: { label: 'offshoot live checkpoint', unit: 'ms', samples: complete }, baseline: { label: 'qemu migrate to file + fsync', unit: 'ms', samples: qSynced } },
    { metric: `${label}: write`, offshoot: { label: 'offshoot checkpoint write', unit: 'ms', samples: writes }, baseline: { label: 'qemu migrate to file', unit: 'ms', samples: q } },
    { metric: `${label}: CPU ms per GiB of guest`, offshoot: { label: 'offshoot (daemon + guest QEMU)', unit: 'ms', samples: cpuPerGiB }, baseline: { label: 'qemu migrate (QEMU + its cat)', unit: 'ms', samples: qCpu } },
  ];
}

export async function checkpointBenchmark(args: string[]): Promise<BenchResult> {
  const sizes = parseSizes(args, [256, 1024, 4096]);
  const notes: string[] = [];
  const home = mkdtempSync('/tmp/osh-bench-home-');
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-mem-');
  // Checkpoint files (both sides') go to tmpfs too (measuring Offshoot, not the disk), or under `--dir
  // PATH` (a disk, as an operator's checkpoints): a folder the daemon is allowed to write.
  fileRoot = option(args, '--dir', '/dev/shm');
  const checkpointDir = mkdtempSync(join(fileRoot, 'osh-bench-ckpt-'));
  const daemon = await startDaemon({ home, memoryDir, allowImages: [checkpointDir] });
  const startedAt = new Date().toISOString();
  const comparisons: Comparison[] = [];
  const busy = Number(option(args, '--busy', '0'));
  priming = !args.includes('--no-prime');
  // `--only save`: only live checkpoints (`--repeat N` of them per size, `--pause`: of a paused guest), each beside QEMU's save.
  const only = option(args, '--only', 'all');
  const repeat = Number(option(args, '--repeat', '1'));
  const pauseGuest = args.includes('--pause');
  const load: number[][] = [loadavg()];
  try {
    const host = await daemon.engine.hostInfo();
    for (let b = 0; b < busy; b++) {
      const vm = await daemon.engine.create({ name: `busy${b}`, memory: '256M', start: true });
      await daemon.engine.tasks.wait(vm.task?.id as string);
      // Detached from the agent's exec: the loop runs until the VM is killed (a subshell: the guest has no
      // `nohup`, so the earlier `nohup sh -c …` failed in the background and left the guest idle).
      await exec(daemon, `busy${b}`, '(while :; do :; done) >/dev/null 2>&1 &');
    }
    if (busy > 0) notes.push(`${busy} guests ran a busy loop beside the whole run`);
    if (only === 'save' || only === 'lazy') {
      for (const memoryMiB of sizes) comparisons.push(...(only === 'save' ? await saveOnly(daemon, home, checkpointDir, host.accel, memoryMiB, repeat, pauseGuest, args.includes('--direct'), args.includes('--perf') ? option(args, '--perf', '') : undefined) : await lazyOnly(daemon, home, checkpointDir, memoryMiB, repeat, args.includes('--read'))));
      load.push(loadavg());
      return { name: 'checkpoint', startedAt, machine: { cpus: cpus().length, accel: host.accel, qemu: await qemuVersion(), node: process.version }, parameters: { sizes, busy, load, only, repeat, pauseGuest, primed: priming, fileRoot }, comparisons, notes: [only === 'save' ? `save only: each pair is a freshly booted guest saved by Offshoot and one saved by QEMU, the order alternating; each checkpoint is deleted after it is written; both files in ${fileRoot}; "durable": QEMU's file fsynced after its save (Offshoot's writer fsyncs its own)` : 'lazy stream only: from the VM running to the stream complete (the page server\'s own streamMs)', ...(pauseGuest ? ['the guest was paused before the saves'] : []), ...notes] };
    }
    for (const memoryMiB of sizes) {
      const randomMiB = memoryMiB / 2;
      const name = `ck${memoryMiB}`;
      const boot = await daemon.engine.create({ name, memory: `${memoryMiB}M`, start: true });
      await daemon.engine.tasks.wait(boot.task?.id as string);
      await exec(daemon, name, fill(randomMiB));
      prime(memoryMiB);
      const t0 = performance.now();
      const saved = await daemon.engine.tasks.wait((await daemon.engine.checkpoint(name, { name: `${name}-ckpt`, out: join(checkpointDir, `${name}.ckpt`) })).task?.id as string);
      if (saved.state !== 'succeeded') throw new Error(`checkpoint failed: ${saved.message}`);
      const completeMs = performance.now() - t0;
      const result = saved.result as CheckpointResult;
      // The source is not needed any more: free its memory before the restores.
      await daemon.engine.kill(name);
      await daemon.engine.delete(name);
      const eager = await restoreOnce(daemon, `${name}-ckpt`, 'eager', memoryMiB);
      const lazy = await restoreOnce(daemon, `${name}-ckpt`, 'lazy', memoryMiB).catch((err: Error) => {
        notes.push(`${memoryMiB} MiB: lazy restore not measured: ${err.message}`);
        return undefined;
      });
      await daemon.engine.deleteCheckpoint(`${name}-ckpt`);
      const { runningMs, readAllMs } = eager;
      const q = await qemuSaveRestore(host.accel, memoryMiB, randomMiB);
      const gb = (memoryMiB * 2 ** 20) / 1e9;
      process.stderr.write(`${memoryMiB} MiB: stun ${result.stunMs.toFixed(0)} ms (qemu ${q.stunMs.toFixed(0)}), file complete ${completeMs.toFixed(0)} ms, ${(result.fileBytes / 2 ** 20).toFixed(0)} MiB (qemu ${(q.fileBytes / 2 ** 20).toFixed(0)}), eager restore running ${runningMs.toFixed(0)} ms, lazy ${lazy ? lazy.runningMs.toFixed(0) : '-'} ms (qemu ${q.runningMs.toFixed(0)}); random data read at ${readAllMs.toFixed(0)} / ${lazy ? lazy.readAllMs.toFixed(0) : '-'} ms (qemu ${q.readAllMs.toFixed(0)}); lazy stream complete at ${lazy?.streamMs?.toFixed(0) ?? '-'} ms\n`);
      const label = `${memoryMiB} MiB (${randomMiB} MiB random)`;
      comparisons.push(
        { metric: `${label}: save stun`, offshoot: { label: 'offshoot live checkpoint', unit: 'ms', samples: [result.stunMs] }, baseline: { label: 'qemu migrate to file', unit: 'ms', samples: [q.stunMs] } },
        { metric: `${label}: file complete`, offshoot: { label: 'offshoot live checkpoint', unit: 'ms', samples: [completeMs] }, baseline: { label: 'qemu migrate to file', unit: 'ms', samples: [q.saveMs] } },
        { metric: `${label}: save throughput`, offshoot: { label: 'offshoot (guest memory / write time)', unit: 'GB/s', samples: [gb / (result.writeMs / 1000)] }, baseline: { label: 'qemu migrate to file', unit: 'GB/s', samples: [gb / (q.saveMs / 1000)] } },
        { metric: `${label}: file size`, offshoot: { label: 'offshoot checkpoint', unit: 'MiB', samples: [result.fileBytes / 2 ** 20] }, baseline: { label: 'qemu migration stream', unit: 'MiB', samples: [q.fileBytes / 2 ** 20] } },
        { metric: `${label}: restore until running`, offshoot: { label: 'offshoot eager restore', unit: 'ms', samples: [runningMs] }, baseline: { label: 'qemu -incoming from file', unit: 'ms', samples: [q.runningMs] } },
        { metric: `${label}: restore until random data read`, offshoot: { label: 'offshoot eager restore', unit: 'ms', samples: [readAllMs] }, baseline: { label: 'qemu -incoming from file', unit: 'ms', samples: [q.readAllMs] } },
      );
      if (lazy) {
        comparisons.push(
          { metric: `${label}: lazy restore until running`, offshoot: { label: 'offshoot lazy restore', unit: 'ms', samples: [lazy.runningMs] }, baseline: { label: 'qemu -incoming from file', unit: 'ms', samples: [q.runningMs] } },
          { metric: `${label}: lazy restore until random data read`, offshoot: { label: 'offshoot lazy restore', unit: 'ms', samples: [lazy.readAllMs] }, baseline: { label: 'qemu -incoming from file', unit: 'ms', samples: [q.readAllMs] } },
        );
        if (lazy.streamMs !== undefined) comparisons.push({ metric: `${label}: lazy restore until all memory loaded`, offshoot: { label: 'offshoot lazy restore (stream complete)', unit: 'ms', samples: [lazy.streamMs] }, baseline: { label: 'offshoot eager restore (running)', unit: 'ms', samples: [runningMs] } });
      }
    }
    load.push(loadavg());
    return {
      name: 'checkpoint',
      startedAt,
      machine: { cpus: cpus().length, accel: host.accel, qemu: await qemuVersion(), node: process.version },
      parameters: { sizes, busy, load, primed: priming, fileRoot },
      comparisons,
      notes: [
        `both files are written to ${fileRoot === '/dev/shm' ? 'tmpfs (/dev/shm)' : fileRoot}; Offshoot fsyncs its file, QEMU does not`,
        ...(priming ? ['before each timed save and restore, both sides, half the guest size + 256 MiB of free memory is primed (written to tmpfs and removed): this VM hands free pages back to its hypervisor, and a page given back costs a fault when touched again (--no-prime: not primed)'] : ['--no-prime: free memory not primed before the timed steps']),
        'one run per size; the source VM is deleted before the restores, the eager restore VM before the lazy one',
        'offshoot "restore until running" includes creating the VM and its disk delta (eager: and loading all memory; lazy: the postcopy handshake and device state); "until random data read" is until an md5sum of the tmpfs data in the guest has finished, started as soon as the VM runs and its identity is customized (the guest agent takes one client at a time); the lazy VM may still be streaming its memory then',
        ...notes,
      ],
    };
  } finally {
    for (const vm of await daemon.engine.list()) await daemon.engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
    rmSync(memoryDir, { recursive: true, force: true });
    rmSync(checkpointDir, { recursive: true, force: true });
  }
}
