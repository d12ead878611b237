// `npm run bench -- migrate [--workloads idle,dirtying,storage] [--runs 2]
//  [--memory 1024] [--dirty 64] [--writer loop|stream] [--disk-gib 4] [--data-gib 1]
//  [--downtime-limit 50] [--timeout 90]`:
// live migration between two lab hosts (each `offshoot agent serve` in its
// own network namespace), in one run beside the baseline a libvirt user gets
// by default: plain QMP `migrate` between two hand-started QEMUs in the same
// two namespaces, over the hosts' own addresses, with QEMU's defaults
// (max-bandwidth 128 MiB/s, downtime-limit 300 ms, no TLS, pre-copy only).
// Three workloads, all by default (the whole run took 9 min on this
// 2-core machine at load 8-11; `--workloads idle` runs the idle guest only):
// - idle: an idle guest;
// - dirtying: a guest rewriting a tmpfs file of `--dirty` MiB in a loop
//   (`--writer stream`: by one process, fast enough that QEMU's default
//   bandwidth cap does not converge);
// - storage: a guest with a local `--disk-gib` data disk holding
//   `--data-gib` of random data (on lab1's own datastore: Offshoot mirrors
//   it, `--storage auto`), which keeps writing a little to it throughout
//   (migrate-disk.ts: the data is written on the host before boot, not by dd
//   under TCG). The baseline is libvirt's "copy storage" flow without TLS:
//   NBD exports at the destination, drive-mirror into them, wait until
//   ready, `migrate`, then the mirrors are completed and the destination
//   runs the guest. After the last migration the data disk must equal the
//   data plus the guest's writes (qemu-img compare), for both.
// Offshoot migrates with its defaults (isolated path, TLS-PSK, post-copy when
// pre-copy stalls) and `--downtime-limit`. Per migration: QEMU's downtime,
// total time, bytes sent against the guest's memory (and disk data), and
// whether it converged (the baseline is cancelled after `--timeout` s); for
// storage also the time until the mirrors were ready, memory and disk bytes
// apart, and the bytes out of the source host's interface. More rows tell
// the costs apart: the idle baseline again with its RAM in a shared /dev/shm
// file as Offshoot keeps it, and Offshoot without TLS (idle and storage).
// Downtime is also measured from inside the guest (guest-clock.ts: a timer
// loop's longest gap; the per-run lines place each long gap on the host's
// clock), and for Offshoot also its gap at the switch-over apart: on a TCG
// host its longest gap is QEMU's first dirty sync at the start, which takes
// the per-page path there (a QEMU 7.2 fix, see qemu/argv.ts, that the
// baseline's RAM size does not take: its fast path loses guest writes under
// TCG). Each Offshoot migration's phases are printed (its task's
// timings and phasesMs, and at the end the timelines both lab agents logged:
// the destination's preparation, the source's steps and QEMU's events, the
// destination's resume, the source's removal; the path's own bandwidth is
// `npm run bench -- netpath`). A storage run prints the disk data bytes
// (the result's diskBytes) beside the mirrors' total.
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import { silentLogger } from '../src/common/index.ts';
import { loadDefaultGuest } from '../src/guest/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import { parseLocator } from '../src/protocol/index.ts';
import { QgaClient, createImage, qemuVersion } from '../src/qemu/index.ts';
import type { QmpClient } from '../src/qemu/index.ts';
import type { MigrateResult, StorageService, VmEngine } from '../src/vm/index.ts';
import { WRITER_COUNT, WRITER_STOP, checkDataDisk, completeMirrors, exportTargets, makeDataDisk, mirrorUntilReady, writerStart } from './migrate-disk.ts';
import type { DataDisk, DiskCheck } from './migrate-disk.ts';
import { connectQmpWhenReady, rawGuestArgs } from './qemu-baseline.ts';
import type { BenchResult, Comparison } from './report.ts';
import { option, run } from './tools.ts';
import { TICK_START, clockLoss, describeGaps, readGuestClock, stopTicks } from './guest-clock.ts';
import type { GuestShell } from './guest-clock.ts';

type Workload = 'idle' | 'dirtying' | 'storage';

interface Options {
  runs: number;
  memory: number;
  dirty: number;
  writer: Writer;
  downtimeLimitMs: number;
  timeoutS: number;
  diskGiB: number;
  dataGiB: number;
}

/** The workloads run when --workloads is not given. */
const DEFAULT_WORKLOADS = 'idle,dirtying,storage';

interface Sample {
  downtimeMs: number;
  /** From the request to the guest running at the destination (the baseline: from creating the destination's disks and starting its QEMU). */
  wallMs: number;
  /** QEMU's total-time of the migration itself (memory; disk mirrors before it not included). */
  qemuMs: number;
  bytes: number;
  memoryBytes: number;
  /** Bytes the disk mirrors copied, by QEMU's count (the job's progress: holes count as copied, sent as zero writes). */
  diskBytes: number;
  /** Bytes out of the source host's interface during the migration (everything on the wire: memory, disks, TLS, VXLAN). */
  wireBytes: number;
  /** From the first mirror's start until every mirror was ready (null: no disk copied). */
  mirrorMs: number | null;
  /** Completed (pre-copy or post-copy). */
  completed: boolean;
  postcopy: boolean;
  /** The guest's timer loop: its longest gap (ms). */
  guestGapMs: number;
  /**
   * The loop's longest gap that ended near the destination's start (the switch-over as the guest saw it; under 30 ms
   * when none over 30 ms ended there): not the one at QEMU's first dirty sync, which on a TCG host takes its
   * per-page path (qemu/argv.ts, memoryExtraKiB) and held the guest 0.3-0.7 s at the start of a 1 GiB migration.
   */
  guestSwitchGapMs: number;
  /** The guest clock's loss against the host's over the migration (ms). */
  guestLossMs: number;
}

// Non-zero data (zero pages cost QEMU almost nothing to send): a random 1 MiB block written over the file again and
// again, one `dd` per MiB (`--writer loop`, the default: a few tens of MiB/s under TCG, which QEMU's default 128 MiB/s
// outruns), or the whole file rewritten by one `dd` from a copy of it made of that block, pass after pass (`--writer
// stream`: a memory copy in the guest's kernel, faster than the default cap can send).
type Writer = 'loop' | 'stream';
const dirtyScript = (mib: number, writer: Writer) => {
  const seed = `mkdir -p /mnt/dirty && mount -t tmpfs -o size=${writer === 'stream' ? 2 * mib + 16 : mib + 16}m tmpfs /mnt/dirty && dd if=/dev/urandom of=/mnt/dirty/seed bs=1M count=1 2>/dev/null`;
  if (writer === 'loop') return `${seed} && (while true; do i=0; while [ $i -lt ${mib} ]; do dd if=/mnt/dirty/seed of=/mnt/dirty/f bs=1M seek=$i count=1 conv=notrunc 2>/dev/null; i=$((i+1)); done; done) >/dev/null 2>&1 &`;
  // The source file doubled from the seed until it holds `mib` MiB, then the rewrite loop.
  return `${seed} && n=1 && while [ $n -lt ${mib} ]; do cat /mnt/dirty/seed /mnt/dirty/seed > /mnt/dirty/next && mv /mnt/dirty/next /mnt/dirty/seed && n=$((n*2)); done && (while true; do dd if=/mnt/dirty/seed of=/mnt/dirty/f bs=1M count=${mib} conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 &`;
};

/** What the Offshoot runs need beyond the engine: the storage service and lab hosts (storage workload) and scratch space. */
interface OffshootSetup {
  engine: VmEngine;
  storage: StorageService;
  labHosts: Array<{ name: string; home: string; namespace: string }>;
  data: DataDisk | null;
  scratch: string;
}

/** The guest's data-disk writer: started, and seen writing. */
async function startDiskWriter(shell: GuestShell, data: DataDisk): Promise<void> {
  const out = await shell(writerStart(data));
  if (out.trim()) throw new Error(`the disk writer did not start: ${out.trim()}`);
  const deadline = Date.now() + 60_000;
  while (Number(await shell(WRITER_COUNT)) < 2) {
    if (Date.now() > deadline) throw new Error(`the disk writer does not write: ${await shell(WRITER_STOP)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Stops the writer (its writes flushed): the blocks it wrote, or why it failed. */
async function stopDiskWriter(shell: GuestShell): Promise<number> {
  const [n, state, ...err] = (await shell(WRITER_STOP)).trim().split(' ');
  if (state !== 'ok') throw new Error(`the guest's disk writer ${state ?? 'said nothing'}: ${err.join(' ')}`);
  return Number(n);
}

/**
 * The longest of the guest's gaps that ended within 300 ms of `arrivedAt` (the destination's start, ms since the epoch):
 * the switch-over as the guest saw it. A gap's end is placed on the host's clock within a guest-agent round trip.
 * Under 30 ms (the loop's threshold) when none ended there: 30 is answered as the bound.
 */
function switchOverGap(gaps: Array<{ ms: number; endedAt: number }>, arrivedAt: number): number {
  const near = gaps.filter((g) => Math.abs(g.endedAt - arrivedAt) <= 300).map((g) => g.ms);
  return near.length > 0 ? Math.max(...near) : 30;
}

async function offshootRuns(setup: OffshootSetup, workload: Workload, o: Options, postcopy: 'auto' | 'never' = 'auto', tls = true): Promise<{ samples: Sample[]; check: DiskCheck | null }> {
  const { engine } = setup;
  const name = `omb-${workload}-${postcopy}${tls ? '' : '-plain'}`;
  const storageWorkload = workload === 'storage';
  // The data disk and its writer belong to the storage workload only.
  const data = storageWorkload ? setup.data : null;
  if (storageWorkload && !data) throw new Error('the storage workload needs its data disk');
  const created = await engine.create({ name, memory: `${o.memory}M`, host: 'lab1', start: !storageWorkload });
  let startTask = created.task;
  if (storageWorkload && data) {
    // The data disk on lab1's own datastore (not shared): attached, it is a read-only base under the VM's delta, which a migration mirrors whole.
    const disk = await setup.storage.catalog.importDisk({ datastore: 'lab1-local', name: `${name}-data`, source: data.reference, format: 'qcow2' });
    await setup.storage.attachDisk(name, { disk: disk.id });
    startTask = (await engine.start(name)).task;
  }
  const started = await engine.tasks.wait(startTask?.id as string);
  if (started.state !== 'succeeded') throw new Error(`${name} did not start: ${started.message}`);
  if (workload === 'dirtying') await engine.exec(name, { path: '/bin/sh', args: ['-c', dirtyScript(o.dirty, o.writer)] });
  const samples: Sample[] = [];
  const shell: GuestShell = async (script) => {
    const r = await engine.exec(name, { path: '/bin/sh', args: ['-c', script] });
    return Buffer.from(r.stdout, 'base64').toString();
  };
  let check: DiskCheck | null = null;
  try {
    if (data) await startDiskWriter(shell, data);
    for (let i = 0; i < o.runs; i++) {
      const to = i % 2 === 0 ? 'lab2' : 'lab1';
      await shell(TICK_START);
      const clock0 = await readGuestClock(shell);
      const blocks0 = data ? Number(await shell(WRITER_COUNT)) : 0;
      const sourceNamespace = setup.labHosts.find((h) => h.name === (to === 'lab2' ? 'lab1' : 'lab2'))?.namespace as string;
      const tx0 = await txBytes(sourceNamespace);
      const t0 = performance.now();
      const epoch0 = Date.now();
      const { task: m } = await engine.migrate(name, { to, downtimeLimitMs: o.downtimeLimitMs, timeoutS: o.timeoutS, postcopy, tls, storage: 'auto' });
      const done = await engine.tasks.wait(m?.id as string);
      const wall = performance.now() - t0;
      const guestLossMs = clockLoss(clock0, await readGuestClock(shell));
      const ticks = await stopTicks(shell);
      const guestGapMs = ticks.longestMs;
      const wireBytes = (await txBytes(sourceNamespace)) - tx0;
      const written = data ? `, guest wrote ${Number(await shell(WRITER_COUNT)) - blocks0} disk blocks of 256 KiB meanwhile` : '';
      if (done.state !== 'succeeded') {
        samples.push({ downtimeMs: NaN, wallMs: wall, qemuMs: NaN, bytes: NaN, memoryBytes: NaN, diskBytes: NaN, wireBytes, mirrorMs: null, completed: false, postcopy: false, guestGapMs, guestSwitchGapMs: NaN, guestLossMs });
        process.stderr.write(`offshoot ${workload} ${i + 1}: failed ${done.error?.code}: ${done.message}\n`);
        continue;
      }
      const r = done.result as MigrateResult;
      // Disk bytes as the baseline counts them (the mirrors' progress, holes included); the data bytes are printed beside.
      const mirrored = r.diskMirroredBytes;
      const guestSwitchGapMs = switchOverGap(ticks.gaps, epoch0 + r.timings.arrivedMs);
      samples.push({ downtimeMs: r.downtimeMs ?? NaN, wallMs: wall, qemuMs: r.timings.qemuTotalMs ?? NaN, bytes: r.memoryBytes + mirrored, memoryBytes: r.memoryBytes, diskBytes: mirrored, wireBytes, mirrorMs: r.timings.mirrorMs, completed: true, postcopy: r.postcopy, guestGapMs, guestSwitchGapMs, guestLossMs });
      const storage = r.storage.copied.length ? `, disks ${JSON.stringify(r.storage.sync)}: ${Math.round(r.diskBytes / 2 ** 20)} MiB of data (${Math.round(mirrored / 2 ** 20)} MiB mirrored)` : '';
      process.stderr.write(`offshoot ${workload} postcopy=${postcopy} tls=${tls} ${i + 1}: downtime ${r.downtimeMs} ms (guest: loop gap ${guestGapMs} ms, at the switch-over ${guestSwitchGapMs} ms, clock loss ${Math.round(guestLossMs)} ms; longest gaps ${describeGaps(ticks.gaps)}), wall ${Math.round(wall)} ms, memory ${Math.round(r.memoryBytes / 2 ** 20)} MiB${storage}${written}, ${Math.round(wireBytes / 2 ** 20)} MiB out of the source host, passes ${r.passes}, postcopy ${r.postcopy}; ${JSON.stringify(r.timings)}; phases ${JSON.stringify(r.phasesMs)}\n`);
    }
    if (data) {
      const blocks = await stopDiskWriter(shell);
      // The data disk's image where the VM ended, read once its QEMU is gone.
      const vm = await engine.resolve(name);
      const disk = vm.spec.disks.find((d) => d.id !== 'disk0' && !d.readOnly);
      const hostName = engine.fleet.hosts().find((h) => h.id === vm.hostId)?.name;
      const home = setup.labHosts.find((h) => h.name === hostName)?.home;
      if (!disk || !home) throw new Error(`cannot find the data disk of ${name} (host ${hostName ?? vm.hostId})`);
      const { scope, relative } = parseLocator(disk.file);
      if (scope.kind !== 'home') throw new Error(`the data disk of ${name} is not in its VM folder (${disk.file})`);
      await engine.kill(name);
      check = await checkDataDisk(data, join(home, relative), disk.format, blocks, setup.scratch);
      process.stderr.write(`offshoot ${workload} tls=${tls}: data disk after ${o.runs} migrations ${check.equal ? 'equal to' : 'DIFFERENT from'} the reference plus the guest's ${blocks} blocks (${check.detail})\n`);
    }
  } finally {
    await engine.kill(name).catch(() => undefined);
    await engine.delete(name).catch(() => undefined);
  }
  return { samples, check };
}

/** Bytes sent so far by a lab host's interface (mgmt0, under its VXLAN path links). */
async function txBytes(namespace: string): Promise<number> {
  const out = await new Promise<string>((resolve, reject) => execFile('ip', ['-n', namespace, '-j', '-s', 'link', 'show', 'mgmt0'], (err, stdout) => (err ? reject(err) : resolve(stdout))));
  const [link] = JSON.parse(out) as Array<{ stats64?: { tx?: { bytes?: number } } }>;
  return link?.stats64?.tx?.bytes ?? NaN;
}

function inNamespace(namespace: string, argv: string[]): ChildProcess {
  return spawn('ip', ['netns', 'exec', namespace, 'qemu-system-x86_64', ...argv], { stdio: 'ignore' });
}

async function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  p.kill('SIGKILL');
  await new Promise((r) => p.once('exit', r));
}

async function baselineRuns(accel: string, hosts: Array<{ namespace: string; address: string }>, workload: Workload, o: Options, dataDisk: DataDisk | null, ramInShm = false): Promise<{ samples: Sample[]; check: DiskCheck | null }> {
  const guest = await loadDefaultGuest();
  const dir = mkdtempSync('/tmp/omb-base-');
  const shm = mkdtempSync('/dev/shm/omb-base-');
  const samples: Sample[] = [];
  const procs: ChildProcess[] = [];
  const storageWorkload = workload === 'storage';
  const data = storageWorkload ? dataDisk : null;
  if (storageWorkload && !data) throw new Error('the storage workload needs its data disk');
  let check: DiskCheck | null = null;
  try {
    // Without local storage both QEMUs open the same disk (shared storage); with it each QEMU has its own pair (n: the QEMU's number).
    const disks = (n: number) => (storageWorkload ? { system: join(dir, `disk${n}.qcow2`), data: join(dir, `data${n}.qcow2`) } : { system: join(dir, 'disk.qcow2'), data: null });
    const first = disks(0);
    await createImage({ path: first.system, format: 'qcow2', backing: { path: guest.dataDisk, format: 'qcow2' } });
    if (first.data && data) await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', data.reference, first.data]);
    const args = (n: number, incoming: boolean) => {
      const d = disks(n);
      return rawGuestArgs({ accel, memoryMiB: o.memory, guest, disk: d.system, ...(d.data ? { extraDisks: [d.data], paused: incoming } : {}), qgaSocket: join(dir, `qga${n}.sock`), qmpSocket: join(dir, `qmp${n}.sock`), incoming, offshootCpu: true, offshootDevices: true, ...(ramInShm ? { memoryFile: join(shm, `ram${n}`) } : {}) });
    };
    let n = 0;
    /** The number of the QEMU that runs the guest. */
    let at = 0;
    let current = inNamespace(hosts[0]?.namespace as string, args(n, false));
    procs.push(current);
    let qmp: QmpClient = await connectQmpWhenReady(join(dir, `qmp${n}.sock`));
    let qga = await QgaClient.waitForAgent(join(dir, `qga${n}.sock`), { timeoutMs: 180_000 });
    if (workload === 'dirtying') await qga.exec('/bin/sh', ['-c', dirtyScript(o.dirty, o.writer)]);
    const shellOf = (client: QgaClient): GuestShell => async (script) => (await client.exec('/bin/sh', ['-c', script])).stdout.toString();
    if (data) await startDiskWriter(shellOf(qga), data);
    const nodes = ['disk0', 'disk1'];
    for (let i = 0; i < o.runs; i++) {
      const target = hosts[(i + 1) % 2] as { namespace: string; address: string };
      n++;
      await shellOf(qga)(TICK_START);
      const clock0 = await readGuestClock(shellOf(qga));
      const blocks0 = data ? Number(await shellOf(qga)(WRITER_COUNT)) : 0;
      const sourceNamespace = (hosts[i % 2] as { namespace: string }).namespace;
      const tx0 = await txBytes(sourceNamespace);
      qga.close();
      const t0 = performance.now();
      const deadline = Date.now() + o.timeoutS * 1000;
      const port = 50000 + n;
      const nbdPort = 51000 + n;
      if (storageWorkload && data) {
        // What libvirt precreates at the destination: the system disk's delta over the same base, a blank data disk of the same size.
        const d = disks(n);
        await createImage({ path: d.system, format: 'qcow2', backing: { path: guest.dataDisk, format: 'qcow2' } });
        await createImage({ path: d.data as string, format: 'qcow2', sizeBytes: data.diskGiB * 2 ** 30 });
      }
      const next = inNamespace(target.namespace, args(n, true));
      procs.push(next);
      const nextQmp = await connectQmpWhenReady(join(dir, `qmp${n}.sock`));
      let mirrorMs: number | null = null;
      if (storageWorkload) {
        await exportTargets(nextQmp, target.address, nbdPort, nodes);
        await nextQmp.execute('migrate-incoming', { uri: `tcp:${target.address}:${port}` });
        const m0 = performance.now();
        // sync top: the system disk's base is at both ends; the data disk has no base (top is all of it).
        await mirrorUntilReady(qmp, target.address, nbdPort, nodes.map((node) => ({ node, sync: 'top' as const })), deadline);
        mirrorMs = performance.now() - m0;
      } else {
        await nextQmp.execute('migrate-incoming', { uri: `tcp:${target.address}:${port}` });
      }
      await qmp.execute('migrate', { uri: `tcp:${target.address}:${port}` });
      let status = 'active';
      let info: { status?: string; downtime?: number; 'total-time'?: number; ram?: { transferred?: number } } = {};
      while (Date.now() < deadline) {
        info = await qmp.execute('query-migrate');
        status = info.status ?? 'none';
        if (status === 'completed' || status === 'failed' || status === 'cancelled') break;
        await new Promise((r) => setTimeout(r, 20));
      }
      if (status !== 'completed') {
        await qmp.execute('migrate_cancel').catch(() => undefined);
        if (storageWorkload) for (const node of nodes) await qmp.execute('block-job-cancel', { device: `mirror-${node}`, force: true }).catch(() => undefined);
        samples.push({ downtimeMs: NaN, wallMs: performance.now() - t0, qemuMs: NaN, bytes: info.ram?.transferred ?? NaN, memoryBytes: info.ram?.transferred ?? NaN, diskBytes: NaN, wireBytes: (await txBytes(sourceNamespace)) - tx0, mirrorMs, completed: false, postcopy: false, guestGapMs: NaN, guestSwitchGapMs: NaN, guestLossMs: NaN });
        process.stderr.write(`baseline ${workload} ${i + 1}: ${status} after ${o.timeoutS} s (${Math.round((info.ram?.transferred ?? 0) / 2 ** 20)} MiB sent): cancelled\n`);
        await stopProcess(next);
        qga = await QgaClient.waitForAgent(join(dir, `qga${at}.sock`), { timeoutMs: 60_000 });
        break;
      }
      let diskBytes = 0;
      if (storageWorkload) {
        // The source is stopped (postmigrate): the mirrors complete, then the destination drops its exports and runs the guest.
        diskBytes = await completeMirrors(qmp, nodes);
        await nextQmp.execute('nbd-server-stop');
        await nextQmp.execute('cont');
      }
      const wall = performance.now() - t0;
      for (let k = 0; k < 10 && !info['total-time']; k++) info = await qmp.execute('query-migrate');
      // Without storage the destination was started with -incoming alone: it runs the guest as soon as the migration completed.
      qga = await QgaClient.waitForAgent(join(dir, `qga${n}.sock`), { timeoutMs: 60_000 });
      const guestLossMs = clockLoss(clock0, await readGuestClock(shellOf(qga)));
      const ticks = await stopTicks(shellOf(qga));
      const guestGapMs = ticks.longestMs;
      const wireBytes = (await txBytes(sourceNamespace)) - tx0;
      const memoryBytes = info.ram?.transferred ?? NaN;
      samples.push({ downtimeMs: info.downtime ?? NaN, wallMs: wall, qemuMs: info['total-time'] ?? NaN, bytes: memoryBytes + diskBytes, memoryBytes, diskBytes, wireBytes, mirrorMs, completed: true, postcopy: false, guestGapMs, guestSwitchGapMs: guestGapMs, guestLossMs });
      const written = data ? `, disks ${Math.round(diskBytes / 2 ** 20)} MiB (ready after ${Math.round(mirrorMs ?? 0)} ms), guest wrote ${Number(await shellOf(qga)(WRITER_COUNT)) - blocks0} disk blocks of 256 KiB meanwhile` : '';
      process.stderr.write(`baseline ${workload} ${i + 1}: downtime ${info.downtime} ms (guest: loop gap ${guestGapMs} ms, clock loss ${Math.round(guestLossMs)} ms; longest gaps ${describeGaps(ticks.gaps)}), wall ${Math.round(wall)} ms, QEMU total ${info['total-time']} ms, memory ${Math.round(memoryBytes / 2 ** 20)} MiB${written}, ${Math.round(wireBytes / 2 ** 20)} MiB out of the source host\n`);
      qmp.close();
      await stopProcess(current);
      rmSync(join(shm, `ram${n - 1}`), { force: true });
      if (storageWorkload) for (const f of Object.values(disks(n - 1))) rmSync(f as string, { force: true });
      current = next;
      qmp = nextQmp;
      at = n;
    }
    if (data) {
      const blocks = await stopDiskWriter(shellOf(qga));
      await qmp.execute('quit').catch(() => undefined);
      await new Promise((r) => (current.exitCode !== null || current.signalCode !== null ? r(null) : current.once('exit', r)));
      check = await checkDataDisk(data, disks(at).data as string, 'qcow2', blocks, dir);
      process.stderr.write(`baseline ${workload}: data disk after ${samples.length} migrations ${check.equal ? 'equal to' : 'DIFFERENT from'} the reference plus the guest's ${blocks} blocks (${check.detail})\n`);
    }
    qmp.close();
    qga.close();
  } finally {
    for (const p of procs) await stopProcess(p);
    rmSync(dir, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  }
  return { samples, check };
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
  const o: Options = {
    runs: Number(option(args, '--runs', '2')),
    memory: Number(option(args, '--memory', '1024')),
    dirty: Number(option(args, '--dirty', '64')),
    writer: option(args, '--writer', 'loop') === 'stream' ? 'stream' : 'loop',
    downtimeLimitMs: Number(option(args, '--downtime-limit', '50')),
    timeoutS: Number(option(args, '--timeout', '90')),
    diskGiB: Number(option(args, '--disk-gib', '4')),
    dataGiB: Number(option(args, '--data-gib', '1')),
  };
  const workloads = option(args, '--workloads', DEFAULT_WORKLOADS).split(',') as Workload[];
  const unknown = workloads.filter((w) => !['idle', 'dirtying', 'storage'].includes(w));
  if (unknown.length) throw new Error(`unknown workload(s) ${unknown.join(', ')}: idle, dirtying, storage`);
  const home = mkdtempSync('/tmp/omb-home-');
  const scratch = mkdtempSync('/tmp/omb-data-');
  const memoryDir = mkdtempSync('/dev/shm/omb-mem-');
  const prefix = `omb${randomBytes(2).toString('hex').slice(0, 3)}`;
  const labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  const daemon = await startDaemon({ home, memoryDir, logger: silentLogger }).catch((err: unknown) => {
    for (const d of [home, memoryDir, labDir, scratch]) rmSync(d, { recursive: true, force: true });
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
    const data = workloads.includes('storage') ? await makeDataDisk(scratch, o.diskGiB, o.dataGiB) : null;
    const setup: OffshootSetup = { engine: daemon.engine, storage: daemon.storage, labHosts: lab.hosts, data, scratch };
    for (const workload of workloads) {
      const mineRun = await offshootRuns(setup, workload, o);
      const baseRun = await baselineRuns(accel, hosts, workload, o, data);
      const [mine, base] = [mineRun.samples, baseRun.samples];
      const ok = (x: Sample[]) => x.filter((y) => y.completed);
      const label = workload === 'idle' ? 'idle guest' : workload === 'dirtying' ? `guest rewriting ${o.dirty} MiB${o.writer === 'stream' ? ' (one writer)' : ''}` : `local ${o.diskGiB} GiB disk holding ${o.dataGiB} GiB`;
      const who = { mine: 'offshoot (path, TLS-PSK)', base: 'plain QMP, defaults' };
      comparisons.push({ metric: `${label}: downtime (QEMU)`, offshoot: ms(who.mine, ok(mine).map((x) => x.downtimeMs)), baseline: ms(who.base, ok(base).map((x) => x.downtimeMs)) });
      comparisons.push({ metric: `${label}: downtime seen in the guest (longest gap of its timer loop)`, offshoot: ms(who.mine, ok(mine).map((x) => x.guestGapMs)), baseline: ms(who.base, ok(base).map((x) => x.guestGapMs)) });
      comparisons.push({ metric: `${label}: downtime seen in the guest at the switch-over (offshoot: its gap there, not at the first dirty sync)`, offshoot: ms(who.mine, ok(mine).map((x) => x.guestSwitchGapMs)), baseline: ms(`${who.base} (longest gap)`, ok(base).map((x) => x.guestGapMs)) });
      comparisons.push({ metric: `${label}: wall time to running there`, offshoot: ms(who.mine, mine.map((x) => x.wallMs)), baseline: ms(`${who.base} (incl. destination start)`, base.map((x) => x.wallMs)) });
      comparisons.push({ metric: `${label}: QEMU migration time`, offshoot: ms(who.mine, ok(mine).map((x) => x.qemuMs)), baseline: ms(who.base, ok(base).map((x) => x.qemuMs)) });
      comparisons.push({ metric: `${label}: bytes sent`, offshoot: mib(who.mine, ok(mine).map((x) => x.bytes / 2 ** 20)), baseline: mib(who.base, ok(base).map((x) => x.bytes / 2 ** 20)) });
      if (workload === 'storage') {
        comparisons.push({ metric: `${label}: memory bytes sent`, offshoot: mib(who.mine, ok(mine).map((x) => x.memoryBytes / 2 ** 20)), baseline: mib(who.base, ok(base).map((x) => x.memoryBytes / 2 ** 20)) });
        comparisons.push({ metric: `${label}: disk bytes sent (the mirrors' progress, holes included)`, offshoot: mib(who.mine, ok(mine).map((x) => x.diskBytes / 2 ** 20)), baseline: mib(`${who.base} (drive-mirror)`, ok(base).map((x) => x.diskBytes / 2 ** 20)) });
        comparisons.push({ metric: `${label}: bytes out of the source host (interface counter: memory, disks, protocol)`, offshoot: mib(who.mine, ok(mine).map((x) => x.wireBytes / 2 ** 20)), baseline: mib(who.base, ok(base).map((x) => x.wireBytes / 2 ** 20)) });
        comparisons.push({ metric: `${label}: disk mirrors until ready`, offshoot: ms(`${who.mine}, write-blocking`, ok(mine).map((x) => x.mirrorMs ?? NaN)), baseline: ms(`${who.base} (drive-mirror, background)`, ok(base).map((x) => x.mirrorMs ?? NaN)) });
        // What TLS costs the mirror: the same migration over the same isolated path without it.
        const plain = await offshootRuns(setup, workload, o, 'auto', false);
        comparisons.push({ metric: `${label}: disk mirrors until ready, TLS-PSK against none (both offshoot)`, offshoot: ms('offshoot, TLS-PSK', ok(mine).map((x) => x.mirrorMs ?? NaN)), baseline: ms('offshoot --no-tls', ok(plain.samples).map((x) => x.mirrorMs ?? NaN)) });
        comparisons.push({ metric: `${label}: wall time, TLS-PSK against none (both offshoot)`, offshoot: ms('offshoot, TLS-PSK', mine.map((x) => x.wallMs)), baseline: ms('offshoot --no-tls', plain.samples.map((x) => x.wallMs)) });
        const total = (o.memory + o.dataGiB * 1024).toLocaleString('en');
        notes.push(`${label}: guest memory + disk data = ${total} MiB; bytes sent are memory (QEMU's ram.transferred) + disk (the mirrors' progress, which counts the disk's unallocated ${o.diskGiB - o.dataGiB} GiB as copied: they go as zero writes), each migration copying the whole data disk (no base of it at the destination); the bytes on the wire are the source host's interface counter (with TCP, TLS and VXLAN overhead, and the agents' own traffic)`);
        const checked = (who: string, c: DiskCheck | null) => `${who} ${c ? `${c.equal ? 'equal' : 'DIFFERENT'} (${c.blocksWritten} blocks written by the guest)` : 'not checked'}`;
        notes.push(`${label}: data disk after the last migration against the reference plus the guest's writes (qemu-img compare): ${checked('offshoot', mineRun.check)}, ${checked('offshoot --no-tls', plain.check)}, ${checked('baseline', baseRun.check)}`);
        notes.push(`${label}, offshoot --no-tls: completed ${ok(plain.samples).length}/${plain.samples.length}`);
      }
      if (workload === 'idle') {
        // The baseline with guest RAM in a shared /dev/shm file, as Offshoot keeps it (anonymous RAM above).
        const shmBase = (await baselineRuns(accel, hosts, workload, o, null, true)).samples;
        comparisons.push({ metric: `${label}: QEMU migration time, plain QMP with RAM in a /dev/shm file (as offshoot)`, offshoot: ms(who.mine, ok(mine).map((x) => x.qemuMs)), baseline: ms('plain QMP, RAM file', ok(shmBase).map((x) => x.qemuMs)) });
        // What TLS costs: the same migration over the same isolated path without it.
        const plain = (await offshootRuns(setup, workload, o, 'auto', false)).samples;
        comparisons.push({ metric: `${label}: QEMU migration time, TLS-PSK against none (both offshoot)`, offshoot: ms('offshoot, TLS-PSK', ok(mine).map((x) => x.qemuMs)), baseline: ms('offshoot --no-tls', ok(plain).map((x) => x.qemuMs)) });
      }
      if (workload === 'dirtying') {
        // Pre-copy only: multifd (2 channels) with TLS, which QEMU 7.2 cannot combine with post-copy.
        const precopy = (await offshootRuns(setup, workload, o, 'never')).samples;
        comparisons.push({ metric: `${label}: downtime (QEMU), offshoot --postcopy never`, offshoot: ms('offshoot, multifd 2 + TLS', ok(precopy).map((x) => x.downtimeMs)), baseline: ms(who.base, ok(base).map((x) => x.downtimeMs)) });
        comparisons.push({ metric: `${label}: wall time, offshoot --postcopy never`, offshoot: ms('offshoot, multifd 2 + TLS', precopy.map((x) => x.wallMs)), baseline: ms(`${who.base} (incl. destination start)`, base.map((x) => x.wallMs)) });
        notes.push(`${label}, offshoot --postcopy never: completed ${ok(precopy).length}/${precopy.length}`);
      }
      notes.push(`${label}: completed offshoot ${ok(mine).length}/${mine.length} (post-copy ${mine.filter((x) => x.postcopy).length}), baseline ${ok(base).length}/${base.length} within ${o.timeoutS} s (guest memory ${o.memory} MiB)`);
    }
    notes.push(`load average at the end: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    notes.push('downtime seen in the guest: the longest gap of a timer loop reading the guest\'s clock (see bench/guest-clock.ts); the per-run lines also print the guest clock\'s loss against the host\'s (noisy under load)');
    return { name: 'migrate', startedAt, machine: { cpus: cpus().length, accel, qemu: await qemuVersion(), node: process.version }, parameters: { ...o, workloads }, comparisons, notes };
  } finally {
    for (const vm of await daemon.engine.list()) await daemon.engine.kill(vm.id).catch(() => undefined);
    printTimelines(labDir);
    await daemon.close();
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    for (const d of [home, memoryDir, labDir, scratch]) rmSync(d, { recursive: true, force: true });
  }
}
