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
// run: the figures under load, both sides equally loaded.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import type { RunningDaemon } from '../src/api/index.ts';
import { loadDefaultGuest } from '../src/guest/index.ts';
import { QgaClient, createImage, qemuVersion } from '../src/qemu/index.ts';
import { connectQmpWhenReady, rawGuestArgs, waitForMigrationDone } from './qemu-baseline.ts';
import type { CheckpointResult, VmRecord } from '../src/vm/index.ts';
import { option } from './tools.ts';
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

const fill = (mib: number) => `mkdir -p /mnt/ram && mount -t tmpfs -o size=${mib + 16}m tmpfs /mnt/ram && dd if=/dev/urandom of=/mnt/ram/blob bs=1M count=${mib} 2>/dev/null`;

async function exec(daemon: RunningDaemon, vm: string, script: string): Promise<void> {
  const r = await daemon.engine.exec(vm, { path: '/bin/sh', args: ['-c', script], timeoutMs: 600_000 });
  if (r.exitCode !== 0) throw new Error(`${vm}: ${Buffer.from(r.stderr, 'base64').toString()}`);
}


/** QEMU's own save and restore of the same guest, driven by hand. */
async function qemuSaveRestore(accel: string, memoryMiB: number, randomMiB: number) {
  const guest = await loadDefaultGuest();
  const dir = mkdtempSync('/tmp/osh-ckb-');
  const mem = mkdtempSync('/dev/shm/osh-ckb-');
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
    const t0 = performance.now();
    await src.qmp.stop();
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
    await src.qmp.execute('migrate', { uri: `exec:cat > ${file}` });
    await waitForMigrationDone(src.qmp);
    const saveMs = performance.now() - t0;
    src.qmp.close();
    const fileBytes = statSync(file).size;
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
    return { stunMs: saveMs, saveMs, fileBytes, runningMs, readAllMs };
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
async function restoreOnce(daemon: RunningDaemon, checkpoint: string, mode: 'eager' | 'lazy'): Promise<{ runningMs: number; readAllMs: number; streamMs?: number }> {
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

export async function checkpointBenchmark(args: string[]): Promise<BenchResult> {
  const sizes = parseSizes(args, [256, 1024, 4096]);
  const notes: string[] = [];
  const home = mkdtempSync('/tmp/osh-bench-home-');
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-mem-');
  // Checkpoint files go to tmpfs too (measuring Offshoot, not the disk): a folder the daemon is allowed to write.
  const checkpointDir = mkdtempSync('/dev/shm/osh-bench-ckpt-');
  const daemon = await startDaemon({ home, memoryDir, allowImages: [checkpointDir] });
  const startedAt = new Date().toISOString();
  const comparisons: Comparison[] = [];
  const busy = Number(option(args, '--busy', '0'));
  const load: number[][] = [loadavg()];
  try {
    const host = await daemon.engine.hostInfo();
    for (let b = 0; b < busy; b++) {
      const vm = await daemon.engine.create({ name: `busy${b}`, memory: '256M', start: true });
      await daemon.engine.tasks.wait(vm.task?.id as string);
      // Detached from the agent's exec: the loop runs until the VM is killed.
      await exec(daemon, `busy${b}`, 'nohup sh -c "while :; do :; done" >/dev/null 2>&1 &');
    }
    if (busy > 0) notes.push(`${busy} guests ran a busy loop beside the whole run`);
    for (const memoryMiB of sizes) {
      const randomMiB = memoryMiB / 2;
      const name = `ck${memoryMiB}`;
      const boot = await daemon.engine.create({ name, memory: `${memoryMiB}M`, start: true });
      await daemon.engine.tasks.wait(boot.task?.id as string);
      await exec(daemon, name, fill(randomMiB));
      const t0 = performance.now();
      const saved = await daemon.engine.tasks.wait((await daemon.engine.checkpoint(name, { name: `${name}-ckpt`, out: join(checkpointDir, `${name}.ckpt`) })).task?.id as string);
      if (saved.state !== 'succeeded') throw new Error(`checkpoint failed: ${saved.message}`);
      const completeMs = performance.now() - t0;
      const result = saved.result as CheckpointResult;
      // The source is not needed any more: free its memory before the restores.
      await daemon.engine.kill(name);
      await daemon.engine.delete(name);
      const eager = await restoreOnce(daemon, `${name}-ckpt`, 'eager');
      const lazy = await restoreOnce(daemon, `${name}-ckpt`, 'lazy').catch((err: Error) => {
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
      parameters: { sizes, busy, load },
      comparisons,
      notes: [
        'both files are written to tmpfs (/dev/shm); Offshoot fsyncs its file, QEMU does not',
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
