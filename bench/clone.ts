// Clone benchmark (`npm run bench -- clone`): a VM with a 4 GiB datastore disk
// holding 1 GiB of random data (attached as a read-only base under the VM's
// own delta). Measured: linked clone time; full clone (a copy job onto a
// second datastore) time and throughput; full clone taken from a pool;
// instant clone time until its guest agent answers and until the stream ends.
// Baselines in the same run: `cp --sparse=always` and `qemu-img convert -O
// qcow2` of the same image, and a cold boot of the same guest (a linked
// clone started, i.e. the same QEMU, disks and kernel) for the instant clone.
// Everything lives under --dir (default /var/tmp: the root file system, not
// tmpfs). Options: --runs N (3), --size-gib N (4), --data-gib N (1).
import { hostPathOf } from '../tests/harness.ts';
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import type { RunningDaemon } from '../src/api/index.ts';
import { qemuVersion } from '../src/qemu/index.ts';
import type { CloneResult } from '../src/vm/index.ts';
import { option, run } from './tools.ts';
import type { BenchResult, Comparison } from './report.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;


async function timed(command: string, argv: string[]): Promise<number> {
  const t0 = performance.now();
  await run(command, argv);
  return performance.now() - t0;
}

/** A raw image of `sizeBytes` with `dataBytes` of random data spread in 64 MiB runs, converted to qcow2. */
function makeImage(dir: string, sizeBytes: number, dataBytes: number): string {
  const raw = join(dir, 'big.raw');
  const fd = openSync(raw, 'w');
  const buf = Buffer.alloc(4 * MiB);
  const runs = Math.max(1, Math.round(dataBytes / (64 * MiB)));
  const stride = Math.floor(sizeBytes / runs / MiB) * MiB;
  for (let r = 0; r < runs; r++) {
    for (let o = 0; o < 64 * MiB; o += buf.length) {
      randomFillSync(buf);
      writeSync(fd, buf, 0, buf.length, r * stride + o);
    }
  }
  closeSync(fd);
  execFileSync('truncate', ['-s', String(sizeBytes), raw]);
  const qcow2 = join(dir, 'big.qcow2');
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  rmSync(raw);
  return qcow2;
}

async function waitTask(daemon: RunningDaemon, id: string | undefined): Promise<void> {
  if (!id) return;
  const task = await daemon.engine.tasks.wait(id);
  if (task.state !== 'succeeded') throw new Error(`${task.kind} failed: ${task.message}`);
}

async function removeVm(daemon: RunningDaemon, name: string): Promise<void> {
  const vm = await daemon.engine.resolve(name);
  if (vm.state === 'running' || vm.state === 'paused') await daemon.engine.kill(name);
  await daemon.engine.delete(name);
}

export async function cloneBenchmark(args: string[]): Promise<BenchResult> {
  const runs = Number(option(args, '--runs', '3'));
  const sizeBytes = Number(option(args, '--size-gib', '4')) * GiB;
  const dataBytes = Number(option(args, '--data-gib', '1')) * GiB;
  const root = mkdtempSync(join(option(args, '--dir', '/var/tmp'), 'osh-bench-clone-'));
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-clone-');
  const startedAt = new Date().toISOString();
  const daemon = await startDaemon({ home: join(root, 'home'), memoryDir });
  const notes: string[] = [];
  const samples = { linked: [] as number[], fullMs: [] as number[], fullGBs: [] as number[], pool: [] as number[], instantAnswer: [] as number[], instantStream: [] as number[], coldBoot: [] as number[], cp: [] as number[], cpGBs: [] as number[], convert: [] as number[], convertGBs: [] as number[] };
  try {
    const image = makeImage(root, sizeBytes, dataBytes);
    const allocated = statSync(image).blocks * 512;
    notes.push(`source image: ${sizeBytes / GiB} GiB virtual, ${(allocated / GiB).toFixed(2)} GiB allocated (random data)`);
    await daemon.storage.catalog.addDatastore({ name: 'ds1', path: join(root, 'ds1') });
    await daemon.storage.catalog.addDatastore({ name: 'ds2', path: join(root, 'ds2') });
    const disk = await daemon.storage.catalog.importDisk({ datastore: 'ds1', name: 'big', source: image });
    rmSync(image);
    await daemon.engine.create({ name: 'src', memory: '256M' });
    await daemon.storage.attachDisk('src', { disk: disk.id });

    for (let i = 0; i < runs; i++) {
      // Baselines: the same image file copied by cp and by qemu-img convert.
      const cpTarget = join(root, 'cp.qcow2');
      const cpMs = await timed('sh', ['-c', `cp --sparse=always '${hostPathOf(join(root, 'home'), disk.file)}' '${cpTarget}' && sync -f '${cpTarget}'`]);
      samples.cp.push(cpMs);
      samples.cpGBs.push(allocated / 1e9 / (cpMs / 1000));
      rmSync(cpTarget);
      const cvTarget = join(root, 'convert.qcow2');
      const cvMs = await timed('sh', ['-c', `qemu-img convert -q -O qcow2 '${hostPathOf(join(root, 'home'), disk.file)}' '${cvTarget}' && sync -f '${cvTarget}'`]);
      samples.convert.push(cvMs);
      samples.convertGBs.push(allocated / 1e9 / (cvMs / 1000));
      rmSync(cvTarget);

      const linked = await daemon.storage.clone('src', { name: `linked${i}`, mode: 'linked' });
      samples.linked.push(linked.ms);
      // Cold boot of the same guest (same disks, kernel, QEMU): the linked clone started.
      const t0 = performance.now();
      await waitTask(daemon, (await daemon.engine.start(`linked${i}`)).task?.id);
      samples.coldBoot.push(performance.now() - t0);
      await removeVm(daemon, `linked${i}`);

      const t1 = performance.now();
      const full: CloneResult = await daemon.storage.clone('src', { name: `full${i}`, mode: 'full', datastore: 'ds2' });
      const job = await daemon.storage.jobs.wait(full.job?.id as string);
      if (job.state !== 'succeeded') throw new Error(`full clone copy failed: ${job.error?.message}`);
      const fullMs = performance.now() - t1;
      samples.fullMs.push(fullMs);
      samples.fullGBs.push(allocated / 1e9 / (fullMs / 1000));
      notes.push(`full clone ${i}: ${job.files.length} files, chunks copied ${job.progress.chunksCopied}`);
      await removeVm(daemon, `full${i}`);

      const t2 = performance.now();
      const instant = await daemon.storage.clone('src', { name: `instant${i}`, mode: 'instant' });
      const startTask = (await daemon.engine.tasks.list(10)).find((t) => t.kind === 'vm.start' && t.targetName === `instant${i}`);
      await waitTask(daemon, startTask?.id);
      samples.instantAnswer.push(performance.now() - t2);
      await waitTask(daemon, instant.task?.id);
      samples.instantStream.push(performance.now() - t2);
      await removeVm(daemon, `instant${i}`);
    }

    await daemon.storage.pools.create({ name: 'p', vm: 'src', datastore: 'ds2', size: 1 });
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      while (!(await daemon.storage.pools.get('p')).slots.some((s) => s.state === 'ready')) {
        if (performance.now() - t0 > 600_000) throw new Error('pool did not fill in 10 min');
        await new Promise((r) => setTimeout(r, 200));
      }
      const pooled = await daemon.storage.clone('src', { name: `pooled${i}`, mode: 'full', datastore: 'ds2' });
      if (!pooled.pool) throw new Error('the clone did not come from the pool');
      samples.pool.push(pooled.ms);
      await removeVm(daemon, `pooled${i}`);
    }
    await daemon.storage.pools.delete('p');
  } finally {
    await daemon.close();
    // Nothing of the run may outlive it (the daemon leaves VMs running by design).
    let leftovers: string[] = [];
    try {
      leftovers = execFileSync('pgrep', ['-f', `${root}/`]).toString().split('\n').filter(Boolean);
    } catch {
      // pgrep exits 1 when nothing matches
    }
    for (const pid of leftovers) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(root, { recursive: true, force: true });
    rmSync(memoryDir, { recursive: true, force: true });
  }
  const faster = (a: number[], b: number[]) => ([...a].sort()[Math.floor(a.length / 2)] ?? 0) >= ([...b].sort()[Math.floor(b.length / 2)] ?? 0);
  const bestGBs = faster(samples.cpGBs, samples.convertGBs) ? { label: 'cp --sparse=always', samples: samples.cpGBs } : { label: 'qemu-img convert', samples: samples.convertGBs };
  const comparisons: Comparison[] = [
    { metric: 'linked clone (ms)', offshoot: { label: 'offshoot linked', unit: 'ms', samples: samples.linked }, baseline: { label: 'cp --sparse=always', unit: 'ms', samples: samples.cp } },
    { metric: 'full clone (ms)', offshoot: { label: 'offshoot full (copy job)', unit: 'ms', samples: samples.fullMs }, baseline: { label: 'qemu-img convert', unit: 'ms', samples: samples.convert } },
    { metric: 'full copy throughput', offshoot: { label: 'offshoot full (copy job)', unit: 'GB/s', samples: samples.fullGBs }, baseline: { label: bestGBs.label, unit: 'GB/s', samples: bestGBs.samples } },
    { metric: 'clone from a pool (ms)', offshoot: { label: 'offshoot pool', unit: 'ms', samples: samples.pool }, baseline: { label: 'cp --sparse=always', unit: 'ms', samples: samples.cp } },
    { metric: 'instant clone answering (ms)', offshoot: { label: 'offshoot instant', unit: 'ms', samples: samples.instantAnswer }, baseline: { label: 'cold boot, same guest', unit: 'ms', samples: samples.coldBoot } },
    { metric: 'instant clone stream done (ms)', offshoot: { label: 'offshoot instant', unit: 'ms', samples: samples.instantStream }, baseline: { label: 'cp --sparse=always', unit: 'ms', samples: samples.cp } },
  ];
  return {
    name: 'clone',
    startedAt,
    machine: { cpus: cpus().length, accel: (await daemon.engine.hostInfo()).accel, qemu: await qemuVersion(), node: process.version },
    parameters: { runs, sizeGiB: sizeBytes / GiB, dataGiB: dataBytes / GiB, dir: root },
    comparisons,
    notes: [...notes, 'baselines copy the same qcow2 file and sync it; throughput is GB of allocated image data per second'],
  };
}
