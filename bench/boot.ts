// Boot benchmark: cold boot of the embedded default guest to a responding
// guest agent, through Offshoot (create + start via the engine, as the API
// does) against the baseline of a hand-written qemu-system-x86_64 command
// booting the same kernel, initrd and disk, timed to the first agent answer.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import { loadDefaultGuest } from '../src/guest/index.ts';
import { QgaClient, createImage, qemuVersion } from '../src/qemu/index.ts';
import { rawGuestArgs } from './qemu-baseline.ts';
import type { BenchResult } from './report.ts';

function option(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
}

async function rawQemuBoot(accel: string, memoryMiB: number): Promise<number> {
  const guest = await loadDefaultGuest();
  const dir = mkdtempSync('/tmp/osh-bench-');
  const mem = mkdtempSync('/dev/shm/osh-bench-');
  try {
    await createImage({ path: join(dir, 'disk.qcow2'), format: 'qcow2', backing: { path: guest.dataDisk, format: 'qcow2' } });
    const qga = join(dir, 'qga.sock');
    const t0 = performance.now();
    // The same CPU model, RAM backend and devices an Offshoot VM has, so the comparison is like for like.
    const qemu = spawn('qemu-system-x86_64', rawGuestArgs({ accel, memoryMiB, guest, disk: join(dir, 'disk.qcow2'), qgaSocket: qga, console: join(dir, 'console.log'), offshootCpu: true, memoryFile: join(mem, 'ram'), offshootDevices: true }), { stdio: 'ignore' });
    try {
      const client = await QgaClient.waitForAgent(qga, { timeoutMs: 120_000 });
      const elapsed = performance.now() - t0;
      client.close();
      return elapsed;
    } finally {
      qemu.kill('SIGKILL');
      await new Promise((r) => qemu.once('exit', r));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(mem, { recursive: true, force: true });
  }
}

export async function bootBenchmark(args: string[]): Promise<BenchResult> {
  const runs = option(args, '--runs', 5);
  const memoryMiB = option(args, '--memory', 256);
  const home = mkdtempSync('/tmp/osh-bench-home-');
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-mem-');
  const daemon = await startDaemon({ home, memoryDir });
  const startedAt = new Date().toISOString();
  try {
    const host = await daemon.engine.hostInfo();
    const offshoot: number[] = [];
    const baseline: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      const { task } = await daemon.engine.create({ name: `boot${i}`, memory: `${memoryMiB}M`, start: true });
      const done = await daemon.engine.tasks.wait(task?.id as string);
      if (done.state !== 'succeeded') throw new Error(`boot failed: ${done.message}`);
      offshoot.push(performance.now() - t0);
      await daemon.engine.kill(`boot${i}`);
      await daemon.engine.delete(`boot${i}`);
      baseline.push(await rawQemuBoot(host.accel, memoryMiB));
      process.stderr.write(`run ${i + 1}/${runs}: offshoot ${offshoot.at(-1)?.toFixed(0)} ms, raw qemu ${baseline.at(-1)?.toFixed(0)} ms\n`);
    }
    return {
      name: 'boot',
      startedAt,
      machine: { cpus: cpus().length, accel: host.accel, qemu: await qemuVersion(), node: process.version },
      parameters: { runs, memoryMiB, guest: 'embedded default guest' },
      comparisons: [
        {
          metric: 'cold boot to guest agent',
          offshoot: { label: 'offshoot create+start', unit: 'ms', samples: offshoot },
          baseline: { label: 'raw qemu-system-x86_64', unit: 'ms', samples: baseline },
        },
      ],
      notes: ['offshoot includes creating the VM record and its qcow2 delta; raw qemu includes creating its qcow2 overlay before the clock starts'],
    };
  } finally {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
    rmSync(memoryDir, { recursive: true, force: true });
  }
}
