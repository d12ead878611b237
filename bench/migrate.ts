// `npm run bench -- migrate [--runs 2] [--memory 1024] [--dirty 64] [--downtime-limit 50] [--timeout 90]`:
// live migration between two lab hosts (each `offshoot agent serve` in its
// own network namespace), in one run beside the baseline a libvirt user gets
// by default: plain QMP `migrate` between two hand-started QEMUs in the same
// two namespaces, over the hosts' own addresses, with QEMU's defaults
// (max-bandwidth 128 MiB/s, downtime-limit 300 ms, no TLS, pre-copy only).
// Two workloads: an idle guest, and a guest rewriting a tmpfs file of
// `--dirty` MiB in a loop. Offshoot migrates with its defaults (isolated
// path, TLS-PSK, post-copy when pre-copy stalls) and `--downtime-limit`. Per
// migration: QEMU's downtime, total time, bytes sent against the guest's
// memory, and whether it converged (the baseline is cancelled after
// `--timeout` s). Two more rows tell the costs apart: the idle baseline again
// with its RAM in a shared /dev/shm file as Offshoot keeps it, and Offshoot
// without TLS. Downtime is also measured from inside the guest (guest-clock.ts:
// a timer loop's longest gap),
// and each Offshoot migration's phases are printed (its task's timings, and at
// the end the timelines both lab agents logged: the destination's preparation,
// the source's steps and QEMU's events, the destination's resume; the
// path's own bandwidth is `npm run bench -- netpath`). `--workloads idle`
// runs the idle guest only. The local-storage workload (a 4 GiB disk holding
// 1 GiB) is not measured here.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import { silentLogger } from '../src/common/index.ts';
import { loadDefaultGuest } from '../src/guest/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import { QgaClient, createImage, qemuVersion } from '../src/qemu/index.ts';
import type { QmpClient } from '../src/qemu/index.ts';
import type { MigrateResult, VmEngine } from '../src/vm/index.ts';
import { connectQmpWhenReady, rawGuestArgs } from './qemu-baseline.ts';
import type { BenchResult, Comparison } from './report.ts';
import { option } from './tools.ts';
import { TICK_START, TICK_STOP, clockLoss, readGuestClock } from './guest-clock.ts';
import type { GuestShell } from './guest-clock.ts';

interface Sample {
  downtimeMs: number;
  /** From the request to the guest running at the destination (the baseline: from starting the destination QEMU). */
  wallMs: number;
  /** QEMU's total-time of the migration itself. */
  qemuMs: number;
  bytes: number;
  /** Completed (pre-copy or post-copy). */
  completed: boolean;
  postcopy: boolean;
  /** The guest's timer loop: its longest gap (ms). */
  guestGapMs: number;
  /** The guest clock's loss against the host's over the migration (ms). */
  guestLossMs: number;
}

// Non-zero data (zero pages cost QEMU almost nothing to send): a random 1 MiB block written over the file again and again.
const dirtyScript = (mib: number) => `mkdir -p /mnt/dirty && mount -t tmpfs -o size=${mib + 16}m tmpfs /mnt/dirty && dd if=/dev/urandom of=/mnt/dirty/seed bs=1M count=1 2>/dev/null && (while true; do i=0; while [ $i -lt ${mib} ]; do dd if=/mnt/dirty/seed of=/mnt/dirty/f bs=1M seek=$i count=1 conv=notrunc 2>/dev/null; i=$((i+1)); done; done) >/dev/null 2>&1 &`;

async function offshootRuns(engine: VmEngine, workload: 'idle' | 'dirtying', o: { runs: number; memory: number; dirty: number; downtimeLimitMs: number; timeoutS: number }, postcopy: 'auto' | 'never' = 'auto', tls = true): Promise<Sample[]> {
  const name = `omb-${workload}-${postcopy}${tls ? '' : '-plain'}`;
  const { task } = await engine.create({ name, memory: `${o.memory}M`, host: 'lab1', start: true });
  const started = await engine.tasks.wait(task?.id as string);
  if (started.state !== 'succeeded') throw new Error(`${name} did not start: ${started.message}`);
  if (workload === 'dirtying') await engine.exec(name, { path: '/bin/sh', args: ['-c', dirtyScript(o.dirty)] });
  const samples: Sample[] = [];
  const shell: GuestShell = async (script) => {
    const r = await engine.exec(name, { path: '/bin/sh', args: ['-c', script] });
    return Buffer.from(r.stdout, 'base64').toString();
  };
  try {
    for (let i = 0; i < o.runs; i++) {
      const to = i % 2 === 0 ? 'lab2' : 'lab1';
      await shell(TICK_START);
      const clock0 = await readGuestClock(shell);
      const t0 = performance.now();
      const { task: m } = await engine.migrate(name, { to, downtimeLimitMs: o.downtimeLimitMs, timeoutS: o.timeoutS, postcopy, tls });
      const done = await engine.tasks.wait(m?.id as string);
      const wall = performance.now() - t0;
      const guestLossMs = clockLoss(clock0, await readGuestClock(shell));
      const guestGapMs = Number(await shell(TICK_STOP));
      if (done.state !== 'succeeded') {
        samples.push({ downtimeMs: NaN, wallMs: wall, qemuMs: NaN, bytes: NaN, completed: false, postcopy: false, guestGapMs, guestLossMs });
        process.stderr.write(`offshoot ${workload} ${i + 1}: failed ${done.error?.code}: ${done.message}\n`);
        continue;
      }
      const r = done.result as MigrateResult;
      samples.push({ downtimeMs: r.downtimeMs ?? NaN, wallMs: wall, qemuMs: r.timings.qemuTotalMs ?? NaN, bytes: r.memoryBytes + r.diskBytes, completed: true, postcopy: r.postcopy, guestGapMs, guestLossMs });
      process.stderr.write(`offshoot ${workload} postcopy=${postcopy} tls=${tls} ${i + 1}: downtime ${r.downtimeMs} ms (guest: loop gap ${guestGapMs} ms, clock loss ${Math.round(guestLossMs)} ms), wall ${Math.round(wall)} ms, ${Math.round((r.memoryBytes + r.diskBytes) / 2 ** 20)} MiB, passes ${r.passes}, postcopy ${r.postcopy}; ${JSON.stringify(r.timings)}\n`);
    }
  } finally {
    await engine.kill(name).catch(() => undefined);
    await engine.delete(name).catch(() => undefined);
  }
  return samples;
}

function inNamespace(namespace: string, argv: string[]): ChildProcess {
  return spawn('ip', ['netns', 'exec', namespace, 'qemu-system-x86_64', ...argv], { stdio: 'ignore' });
}

async function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  p.kill('SIGKILL');
  await new Promise((r) => p.once('exit', r));
}

async function baselineRuns(accel: string, hosts: Array<{ namespace: string; address: string }>, workload: 'idle' | 'dirtying', o: { runs: number; memory: number; dirty: number; timeoutS: number }, ramInShm = false): Promise<Sample[]> {
  const guest = await loadDefaultGuest();
  const dir = mkdtempSync('/tmp/omb-base-');
  const shm = mkdtempSync('/dev/shm/omb-base-');
  const samples: Sample[] = [];
  const procs: ChildProcess[] = [];
  try {
    const disk = join(dir, 'disk.qcow2');
    await createImage({ path: disk, format: 'qcow2', backing: { path: guest.dataDisk, format: 'qcow2' } });
    const args = (n: number, incoming: boolean) => rawGuestArgs({ accel, memoryMiB: o.memory, guest, disk, qgaSocket: join(dir, `qga${n}.sock`), qmpSocket: join(dir, `qmp${n}.sock`), incoming, offshootCpu: true, offshootDevices: true, ...(ramInShm ? { memoryFile: join(shm, `ram${n}`) } : {}) });
    let n = 0;
    let current = inNamespace(hosts[0]?.namespace as string, args(n, false));
    procs.push(current);
    let qmp: QmpClient = await connectQmpWhenReady(join(dir, `qmp${n}.sock`));
    let qga = await QgaClient.waitForAgent(join(dir, `qga${n}.sock`), { timeoutMs: 180_000 });
    if (workload === 'dirtying') await qga.exec('/bin/sh', ['-c', dirtyScript(o.dirty)]);
    const shellOf = (client: QgaClient): GuestShell => async (script) => (await client.exec('/bin/sh', ['-c', script])).stdout.toString();
    for (let i = 0; i < o.runs; i++) {
      const target = hosts[(i + 1) % 2] as { namespace: string; address: string };
      n++;
      await shellOf(qga)(TICK_START);
      const clock0 = await readGuestClock(shellOf(qga));
      qga.close();
      const t0 = performance.now();
      const next = inNamespace(target.namespace, args(n, true));
      procs.push(next);
      const nextQmp = await connectQmpWhenReady(join(dir, `qmp${n}.sock`));
      const port = 50000 + n;
      await nextQmp.execute('migrate-incoming', { uri: `tcp:${target.address}:${port}` });
      await qmp.execute('migrate', { uri: `tcp:${target.address}:${port}` });
      let status = 'active';
      let info: { status?: string; downtime?: number; 'total-time'?: number; ram?: { transferred?: number } } = {};
      while (performance.now() - t0 < o.timeoutS * 1000) {
        info = await qmp.execute('query-migrate');
        status = info.status ?? 'none';
        if (status === 'completed' || status === 'failed' || status === 'cancelled') break;
        await new Promise((r) => setTimeout(r, 20));
      }
      if (status !== 'completed') {
        await qmp.execute('migrate_cancel').catch(() => undefined);
        samples.push({ downtimeMs: NaN, wallMs: performance.now() - t0, qemuMs: NaN, bytes: info.ram?.transferred ?? NaN, completed: false, postcopy: false, guestGapMs: NaN, guestLossMs: NaN });
        process.stderr.write(`baseline ${workload} ${i + 1}: ${status} after ${o.timeoutS} s (${Math.round((info.ram?.transferred ?? 0) / 2 ** 20)} MiB sent): cancelled\n`);
        await stopProcess(next);
        break;
      }
      const wall = performance.now() - t0;
      for (let k = 0; k < 10 && !info['total-time']; k++) info = await qmp.execute('query-migrate');
      // The plain destination was started with -incoming alone: it runs the guest as soon as the migration completed.
      qga = await QgaClient.waitForAgent(join(dir, `qga${n}.sock`), { timeoutMs: 60_000 });
      const guestLossMs = clockLoss(clock0, await readGuestClock(shellOf(qga)));
      const guestGapMs = Number(await shellOf(qga)(TICK_STOP));
      samples.push({ downtimeMs: info.downtime ?? NaN, wallMs: wall, qemuMs: info['total-time'] ?? NaN, bytes: info.ram?.transferred ?? NaN, completed: true, postcopy: false, guestGapMs, guestLossMs });
      process.stderr.write(`baseline ${workload} ${i + 1}: downtime ${info.downtime} ms (guest: loop gap ${guestGapMs} ms, clock loss ${Math.round(guestLossMs)} ms), wall ${Math.round(wall)} ms, QEMU total ${info['total-time']} ms, ${Math.round((info.ram?.transferred ?? 0) / 2 ** 20)} MiB\n`);
      qmp.close();
      await stopProcess(current);
      rmSync(join(shm, `ram${n - 1}`), { force: true });
      current = next;
      qmp = nextQmp;
    }
    qmp.close();
    qga.close();
  } finally {
    for (const p of procs) await stopProcess(p);
    rmSync(dir, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  }
  return samples;
}

/**
 * Prints the migration timelines the lab agents logged (the destination's preparation, the source's steps and
 * QEMU's events, the destination's resume), each as steps at ms from its first entry, in the order they began:
 * where a migration's time went, on either host.
 */
function printTimelines(labDir: string): void {
  const lines: Array<{ host: string; msg: string; entries: Array<[string, number]> }> = [];
  for (const host of ['lab1', 'lab2']) {
    const text = (() => {
      try {
        return readFileSync(join(labDir, 'hosts', host, 'home', 'agent.log'), 'utf8');
      } catch {
        return '';
      }
    })();
    for (const line of text.split('\n')) {
      if (!line.includes('"timeline"')) continue;
      try {
        const j = JSON.parse(line) as { msg?: string; timeline?: Array<[string, number]> };
        if (j.timeline?.length) lines.push({ host, msg: j.msg ?? '', entries: j.timeline });
      } catch {
        // not a JSON log line
      }
    }
  }
  lines.sort((a, b) => (a.entries[0]?.[1] ?? 0) - (b.entries[0]?.[1] ?? 0));
  for (const l of lines) {
    const t0 = l.entries[0]?.[1] ?? 0;
    process.stderr.write(`timeline ${l.host} (${l.msg}) at ${new Date(t0).toISOString().slice(11, 23)}: ${l.entries.map(([n, t]) => `${n} +${t - t0}`).join(', ')}\n`);
  }
}

export async function migrateBenchmark(args: string[]): Promise<BenchResult> {
  const o = { runs: Number(option(args, '--runs', '2')), memory: Number(option(args, '--memory', '1024')), dirty: Number(option(args, '--dirty', '64')), downtimeLimitMs: Number(option(args, '--downtime-limit', '50')), timeoutS: Number(option(args, '--timeout', '90')) };
  const home = mkdtempSync('/tmp/omb-home-');
  const memoryDir = mkdtempSync('/dev/shm/omb-mem-');
  const prefix = `omb${randomBytes(2).toString('hex').slice(0, 3)}`;
  const labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  const daemon = await startDaemon({ home, memoryDir, logger: silentLogger }).catch((err: unknown) => {
    for (const d of [home, memoryDir, labDir]) rmSync(d, { recursive: true, force: true });
    throw err;
  });
  const startedAt = new Date().toISOString();
  const notes: string[] = [`load average at the start: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`];
  try {
    const lab = await labUp(2, { dir: labDir, prefix, subnet: `10.213.${200 + Math.floor(Math.random() * 20)}.0/24` }, home);
    const accel = (await daemon.engine.hostInfo('lab1')).accel;
    const hosts = lab.hosts.map((h) => ({ namespace: h.namespace, address: h.address }));
    const comparisons: Comparison[] = [];
    const ms = (label: string, s: number[]) => ({ label, unit: 'ms' as const, samples: s });
    const mib = (label: string, s: number[]) => ({ label, unit: 'MiB' as const, samples: s });
    const workloads = option(args, '--workloads', 'idle,dirtying').split(',') as Array<'idle' | 'dirtying'>;
    for (const workload of workloads) {
      const mine = await offshootRuns(daemon.engine, workload, o);
      const base = await baselineRuns(accel, hosts, workload, o);
      const ok = (x: Sample[]) => x.filter((y) => y.completed);
      const label = workload === 'idle' ? 'idle guest' : `guest rewriting ${o.dirty} MiB`;
      const who = { mine: 'offshoot (path, TLS-PSK)', base: 'plain QMP, defaults' };
      comparisons.push({ metric: `${label}: downtime (QEMU)`, offshoot: ms(who.mine, ok(mine).map((x) => x.downtimeMs)), baseline: ms(who.base, ok(base).map((x) => x.downtimeMs)) });
      comparisons.push({ metric: `${label}: downtime seen in the guest (longest gap of its timer loop)`, offshoot: ms(who.mine, ok(mine).map((x) => x.guestGapMs)), baseline: ms(who.base, ok(base).map((x) => x.guestGapMs)) });
      comparisons.push({ metric: `${label}: wall time to running there`, offshoot: ms(who.mine, mine.map((x) => x.wallMs)), baseline: ms(`${who.base} (incl. destination start)`, base.map((x) => x.wallMs)) });
      comparisons.push({ metric: `${label}: QEMU migration time`, offshoot: ms(who.mine, ok(mine).map((x) => x.qemuMs)), baseline: ms(who.base, ok(base).map((x) => x.qemuMs)) });
      comparisons.push({ metric: `${label}: bytes sent`, offshoot: mib(who.mine, ok(mine).map((x) => x.bytes / 2 ** 20)), baseline: mib(who.base, ok(base).map((x) => x.bytes / 2 ** 20)) });
      if (workload === 'idle') {
        // The baseline with guest RAM in a shared /dev/shm file, as Offshoot keeps it (anonymous RAM above).
        const shmBase = await baselineRuns(accel, hosts, workload, o, true);
        comparisons.push({ metric: `${label}: QEMU migration time, plain QMP with RAM in a /dev/shm file (as offshoot)`, offshoot: ms(who.mine, ok(mine).map((x) => x.qemuMs)), baseline: ms('plain QMP, RAM file', ok(shmBase).map((x) => x.qemuMs)) });
        // What TLS costs: the same migration over the same isolated path without it.
        const plain = await offshootRuns(daemon.engine, workload, o, 'auto', false);
        comparisons.push({ metric: `${label}: QEMU migration time, TLS-PSK against none (both offshoot)`, offshoot: ms('offshoot, TLS-PSK', ok(mine).map((x) => x.qemuMs)), baseline: ms('offshoot --no-tls', ok(plain).map((x) => x.qemuMs)) });
      }
      if (workload === 'dirtying') {
        // Pre-copy only: multifd (2 channels) with TLS, which QEMU 7.2 cannot combine with post-copy.
        const precopy = await offshootRuns(daemon.engine, workload, o, 'never');
        comparisons.push({ metric: `${label}: downtime (QEMU), offshoot --postcopy never`, offshoot: ms('offshoot, multifd 2 + TLS', ok(precopy).map((x) => x.downtimeMs)), baseline: ms(who.base, ok(base).map((x) => x.downtimeMs)) });
        comparisons.push({ metric: `${label}: wall time, offshoot --postcopy never`, offshoot: ms('offshoot, multifd 2 + TLS', precopy.map((x) => x.wallMs)), baseline: ms(`${who.base} (incl. destination start)`, base.map((x) => x.wallMs)) });
        notes.push(`${label}, offshoot --postcopy never: completed ${ok(precopy).length}/${precopy.length}`);
      }
      notes.push(`${label}: completed offshoot ${ok(mine).length}/${mine.length} (post-copy ${mine.filter((x) => x.postcopy).length}), baseline ${ok(base).length}/${base.length} within ${o.timeoutS} s (guest memory ${o.memory} MiB)`);
    }
    notes.push(`load average at the end: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    notes.push('downtime seen in the guest: the longest gap of a timer loop reading the guest\'s clock (see bench/guest-clock.ts); the per-run lines also print the guest clock\'s loss against the host\'s (noisy under load)');
    notes.push('not measured: the local-storage workload (4 GiB disk with 1 GiB of data)');
    return { name: 'migrate', startedAt, machine: { cpus: cpus().length, accel, qemu: await qemuVersion(), node: process.version }, parameters: o, comparisons, notes };
  } finally {
    for (const vm of await daemon.engine.list()) await daemon.engine.kill(vm.id).catch(() => undefined);
    printTimelines(labDir);
    await daemon.close();
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    for (const d of [home, memoryDir, labDir]) rmSync(d, { recursive: true, force: true });
  }
}
