// Fork benchmark: for each guest memory size and child count N, forks a
// running default guest and measures the source's stun (paused to running
// again), the time to the first child running, to all N running and to all N
// answering their guest agent (customized), and the host memory of the source
// plus N children (sum of PSS). Baselines in the same run: a cold boot of the
// same guest (time, and its PSS times N+1), and a naive fork that saves the
// whole VM with QEMU's own `migrate` to a file and starts each copy from it.
import { ramFileOf } from '../tests/harness.ts';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../src/api/index.ts';
import type { RunningDaemon } from '../src/api/index.ts';
import { loadDefaultGuest } from '../src/guest/index.ts';
import { mappingPssKiB, processMemoryStats } from '../src/memory/index.ts';
import { QgaClient, createImage, qemuVersion } from '../src/qemu/index.ts';
import { connectQmpWhenReady, rawGuestArgs, waitForMigrationDone } from './qemu-baseline.ts';
import type { ForkResult } from '../src/vm/index.ts';
import type { BenchResult, Comparison } from './report.ts';

function listOption(args: string[], name: string, fallback: number[]): number[] {
  const i = args.indexOf(name);
  return i >= 0 ? (args[i + 1] ?? '').split(',').map(Number) : fallback;
}

/**
 * Host memory of a group of QEMUs sharing one RAM file: the sum of their PSS without the
 * file's mappings, plus the file's resident size (a tmpfs file is memory whether mapped or not).
 */
async function hostMemoryMiB(pids: number[], ramFile: string): Promise<number> {
  let kib = 0;
  for (const pid of pids) kib += (await processMemoryStats(pid)).pssKiB - (await mappingPssKiB(pid, ramFile));
  kib += ((await stat(ramFile)).blocks * 512) / 1024;
  return kib / 1024;
}

async function bootSource(daemon: RunningDaemon, name: string, memoryMiB: number): Promise<number> {
  const t0 = performance.now();
  const { task } = await daemon.engine.create({ name, memory: `${memoryMiB}M`, start: true });
  const done = await daemon.engine.tasks.wait(task?.id as string);
  if (done.state !== 'succeeded') throw new Error(`boot failed: ${done.message}`);
  return performance.now() - t0;
}

/** Naive fork with QEMU's own tools: stop, migrate the whole VM to a file, start N copies from it with -incoming. */
async function naiveFork(accel: string, memoryMiB: number, count: number): Promise<{ stunMs: number; firstMs: number; allMs: number; agentMs: number }> {
  const guest = await loadDefaultGuest();
  const dir = mkdtempSync('/tmp/osh-naive-');
  const mem = mkdtempSync('/dev/shm/osh-naive-');
  const procs: ReturnType<typeof spawn>[] = [];
  const qemu = async (i: number, incoming: boolean) => {
    const disk = join(dir, `disk${i}.qcow2`);
    await createImage({ path: disk, format: 'qcow2', backing: { path: guest.dataDisk, format: 'qcow2' } });
    const qmpPath = join(dir, `qmp${i}.sock`);
    const proc = spawn('qemu-system-x86_64', rawGuestArgs({ accel, memoryMiB, guest, disk, qgaSocket: join(dir, `qga${i}.sock`), console: join(dir, `console${i}.log`), qmpSocket: qmpPath, incoming }), { stdio: 'ignore' });
    procs.push(proc);
    return { qmp: await connectQmpWhenReady(qmpPath), qga: join(dir, `qga${i}.sock`) };
  };
  try {
    const source = await qemu(0, false);
    (await QgaClient.waitForAgent(source.qga, { timeoutMs: 120_000 })).close();
    const file = join(mem, 'state');
    const t0 = performance.now();
    await source.qmp.stop();
    await source.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
    await source.qmp.execute('migrate', { uri: `exec:cat > ${file}` });
    await waitForMigrationDone(source.qmp);
    await source.qmp.cont();
    const stunMs = performance.now() - t0;
    const running: number[] = [];
    const children = [];
    for (let i = 1; i <= count; i++) {
      const child = await qemu(i, true);
      await child.qmp.execute('migrate-incoming', { uri: `exec:cat ${file}` });
      await waitForMigrationDone(child.qmp);
      await child.qmp.cont();
      running.push(performance.now() - t0);
      children.push(child);
    }
    for (const child of children) (await QgaClient.waitForAgent(child.qga, { timeoutMs: 60_000 })).close();
    const agentMs = performance.now() - t0;
    for (const c of [source, ...children]) c.qmp.close();
    return { stunMs, firstMs: running[0] ?? NaN, allMs: running.at(-1) ?? NaN, agentMs };
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.once('exit', r)))));
    rmSync(dir, { recursive: true, force: true });
    rmSync(mem, { recursive: true, force: true });
  }
}

export async function forkBenchmark(args: string[]): Promise<BenchResult> {
  const sizes = listOption(args, '--memory', [256, 1024]);
  const counts = listOption(args, '--counts', [1, 4, 16]);
  const runs = listOption(args, '--runs', [3])[0] ?? 3;
  const home = mkdtempSync('/tmp/osh-bench-home-');
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-mem-');
  const daemon = await startDaemon({ home, memoryDir });
  const startedAt = new Date().toISOString();
  const comparisons: Comparison[] = [];
  const notes: string[] = [];
  try {
    const host = await daemon.engine.hostInfo();
    for (const memoryMiB of sizes) {
      for (const count of counts) {
        const s = { stun: [] as number[], first: [] as number[], all: [] as number[], agent: [] as number[], pss: [] as number[], boot: [] as number[], bootPss: [] as number[] };
        const n = { stun: [] as number[], first: [] as number[], all: [] as number[], agent: [] as number[] };
        const repeat = count >= 16 ? 1 : runs;
        for (let r = 0; r < repeat; r++) {
          const name = `b${memoryMiB}n${count}r${r}`;
          s.boot.push(await bootSource(daemon, name, memoryMiB));
          const source = await daemon.engine.resolve(name);
          s.bootPss.push(await hostMemoryMiB([source.runtime?.pid as number], ramFileOf(memoryDir, source)));
          const { task } = await daemon.engine.fork(name, { count });
          const done = await daemon.engine.tasks.wait(task?.id as string);
          if (done.state !== 'succeeded') throw new Error(`fork failed: ${done.message}`);
          const result = done.result as ForkResult;
          s.stun.push(result.timings.stunMs);
          s.first.push(result.timings.firstChildMs);
          s.all.push(result.timings.allChildrenMs);
          s.agent.push(result.timings.customizedMs);
          const forked = await Promise.all([name, ...result.children.map((c) => c.name)].map((vm) => daemon.engine.resolve(vm)));
          const pss = await hostMemoryMiB(forked.map((vm) => vm.runtime?.pid as number), ramFileOf(memoryDir, forked[0] as (typeof forked)[number]));
          s.pss.push(pss);
          for (const vm of [...result.children.map((c) => c.name), name]) {
            await daemon.engine.kill(vm);
            await daemon.engine.delete(vm);
          }
          const naive = await naiveFork(host.accel, memoryMiB, count);
          n.stun.push(naive.stunMs);
          n.first.push(naive.firstMs);
          n.all.push(naive.allMs);
          n.agent.push(naive.agentMs);
          process.stderr.write(`${memoryMiB} MiB, N=${count}, run ${r + 1}/${repeat}: stun ${result.timings.stunMs.toFixed(0)} ms (naive ${naive.stunMs.toFixed(0)}), all running ${result.timings.allChildrenMs.toFixed(0)} ms (naive ${naive.allMs.toFixed(0)}), PSS ${pss.toFixed(0)} MiB (cold ${((s.bootPss.at(-1) ?? 0) * (count + 1)).toFixed(0)})\n`);
        }
        const label = `${memoryMiB} MiB, N=${count}`;
        comparisons.push(
          { metric: `${label}: source stun`, offshoot: { label: 'offshoot fork', unit: 'ms', samples: s.stun }, baseline: { label: 'naive migrate-to-file fork', unit: 'ms', samples: n.stun } },
          { metric: `${label}: first child running`, offshoot: { label: 'offshoot fork', unit: 'ms', samples: s.first }, baseline: { label: 'cold boot', unit: 'ms', samples: s.boot } },
          { metric: `${label}: all children running`, offshoot: { label: 'offshoot fork', unit: 'ms', samples: s.all }, baseline: { label: 'naive migrate-to-file fork', unit: 'ms', samples: n.all } },
          { metric: `${label}: all answering the agent`, offshoot: { label: 'offshoot fork (customized)', unit: 'ms', samples: s.agent }, baseline: { label: 'naive fork', unit: 'ms', samples: n.agent } },
          { metric: `${label}: host memory, source + N`, offshoot: { label: 'offshoot fork (PSS + template)', unit: 'MiB', samples: s.pss }, baseline: { label: `(N+1) x cold-booted guest`, unit: 'MiB', samples: s.bootPss.map((p) => p * (count + 1)) } },
        );
      }
    }
    notes.push('cold boot = create + start of the default guest to a responding agent (the source of each run)');
    notes.push('naive fork children start one after another from the saved file; each run uses a fresh source guest');
    return {
      name: 'fork',
      startedAt,
      machine: { cpus: cpus().length, accel: host.accel, qemu: await qemuVersion(), node: process.version },
      parameters: { sizes, counts, runs },
      comparisons,
      notes,
    };
  } finally {
    for (const vm of await daemon.engine.list()) await daemon.engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
    rmSync(memoryDir, { recursive: true, force: true });
  }
}
