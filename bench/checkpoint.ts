// Checkpoint benchmark: a default guest with half its memory random (in a
// tmpfs) and half zero is checkpointed live and restored eagerly. Offshoot's
// figures beside QEMU's own save (`migrate` to a file, as `virsh save` does,
// uncapped) and restore (`-incoming` from that file), same guest, same run:
// stun, time until the file is complete, GB/s of guest memory, file size;
// restore time until the VM runs and until the guest has read its random
// data once.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import type { RunningDaemon } from '../src/api/index.ts';
import { loadDefaultGuest } from '../src/guest/index.ts';
import { QgaClient, createImage, qemuVersion } from '../src/qemu/index.ts';
import { connectQmpWhenReady, rawGuestArgs, waitForMigrationDone } from './qemu-baseline.ts';
import type { CheckpointResult, VmRecord } from '../src/vm/index.ts';
import type { BenchResult, Comparison } from './report.ts';

function listOption(args: string[], name: string, fallback: number[]): number[] {
  const i = args.indexOf(name);
  return i >= 0 ? (args[i + 1] ?? '').split(',').map(Number) : fallback;
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

export async function checkpointBenchmark(args: string[]): Promise<BenchResult> {
  const sizes = listOption(args, '--memory', [256, 1024]);
  const home = mkdtempSync('/tmp/osh-bench-home-');
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-mem-');
  const daemon = await startDaemon({ home, memoryDir });
  const startedAt = new Date().toISOString();
  const comparisons: Comparison[] = [];
  try {
    const host = await daemon.agent.hostInfo();
    for (const memoryMiB of sizes) {
      const randomMiB = memoryMiB / 2;
      const name = `ck${memoryMiB}`;
      const boot = await daemon.engine.create({ name, memory: `${memoryMiB}M`, start: true });
      await daemon.engine.tasks.wait(boot.task?.id as string);
      await exec(daemon, name, fill(randomMiB));
      const t0 = performance.now();
      const saved = await daemon.engine.tasks.wait((await daemon.engine.checkpoint(name, { name: `${name}-ckpt`, out: join(memoryDir, `${name}.ckpt`) })).task?.id as string);
      if (saved.state !== 'succeeded') throw new Error(`checkpoint failed: ${saved.message}`);
      const completeMs = performance.now() - t0;
      const result = saved.result as CheckpointResult;
      const t1 = performance.now();
      const restored = await daemon.engine.tasks.wait((await daemon.engine.restore({ checkpoint: `${name}-ckpt` })).task?.id as string);
      if (restored.state !== 'succeeded') throw new Error(`restore failed: ${restored.message}`);
      const { vm, runningMs } = restored.result as { vm: VmRecord; runningMs: number };
      await exec(daemon, vm.name, 'md5sum /mnt/ram/blob >/dev/null');
      const readAllMs = performance.now() - t1;
      for (const v of [vm.name, name]) {
        await daemon.engine.kill(v);
        await daemon.engine.delete(v);
      }
      await daemon.engine.deleteCheckpoint(`${name}-ckpt`);
      const q = await qemuSaveRestore(host.accel, memoryMiB, randomMiB);
      const gb = (memoryMiB * 2 ** 20) / 1e9;
      process.stderr.write(`${memoryMiB} MiB: stun ${result.stunMs.toFixed(0)} ms (qemu ${q.stunMs.toFixed(0)}), file complete ${completeMs.toFixed(0)} ms, ${(result.fileBytes / 2 ** 20).toFixed(0)} MiB (qemu ${(q.fileBytes / 2 ** 20).toFixed(0)}), restore running ${runningMs.toFixed(0)} ms (qemu ${q.runningMs.toFixed(0)})\n`);
      const label = `${memoryMiB} MiB (${randomMiB} MiB random)`;
      comparisons.push(
        { metric: `${label}: save stun`, offshoot: { label: 'offshoot live checkpoint', unit: 'ms', samples: [result.stunMs] }, baseline: { label: 'qemu migrate to file', unit: 'ms', samples: [q.stunMs] } },
        { metric: `${label}: file complete`, offshoot: { label: 'offshoot live checkpoint', unit: 'ms', samples: [completeMs] }, baseline: { label: 'qemu migrate to file', unit: 'ms', samples: [q.saveMs] } },
        { metric: `${label}: save throughput`, offshoot: { label: 'offshoot (guest memory / write time)', unit: 'GB/s', samples: [gb / (result.writeMs / 1000)] }, baseline: { label: 'qemu migrate to file', unit: 'GB/s', samples: [gb / (q.saveMs / 1000)] } },
        { metric: `${label}: file size`, offshoot: { label: 'offshoot checkpoint', unit: 'MiB', samples: [result.fileBytes / 2 ** 20] }, baseline: { label: 'qemu migration stream', unit: 'MiB', samples: [q.fileBytes / 2 ** 20] } },
        { metric: `${label}: restore until running`, offshoot: { label: 'offshoot eager restore', unit: 'ms', samples: [runningMs] }, baseline: { label: 'qemu -incoming from file', unit: 'ms', samples: [q.runningMs] } },
        { metric: `${label}: restore until random data read`, offshoot: { label: 'offshoot eager restore', unit: 'ms', samples: [readAllMs] }, baseline: { label: 'qemu -incoming from file', unit: 'ms', samples: [q.readAllMs] } },
      );
    }
    return {
      name: 'checkpoint',
      startedAt,
      machine: { cpus: cpus().length, accel: host.accel, qemu: await qemuVersion(), node: process.version },
      parameters: { sizes },
      comparisons,
      notes: ['both files are written to tmpfs (/dev/shm); Offshoot fsyncs its file, QEMU does not', 'one run per size; lazy restore is not implemented, so only eager restore is measured', 'offshoot "restore until running" includes creating the VM, its disk delta and loading all memory; "until random data read" adds an md5sum of the tmpfs data in the guest'],
    };
  } finally {
    for (const vm of await daemon.engine.list()) await daemon.engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
    rmSync(memoryDir, { recursive: true, force: true });
  }
}
