// `npm run bench -- hosts [--runs 30] [--forks 3] [--memory 256]`: what the
// agent protocol over HTTP costs. A control plane with its own host (the
// agent in process) and one lab host (`offshoot agent serve` in a network
// namespace, reached over HTTP): the same calls to a VM on each, measured in
// the same run. Per call: a `vm exec` of /bin/true (a guest-agent round trip)
// and a VM status read (one QMP round trip on the host), through the engine's
// client for the VM's host; then a fork of a 256 MiB guest into one child on
// each (stun and total). Goal (issue 10): the HTTP agent adds < 5 ms per call
// and < 10 % to a fork.
import { randomBytes } from 'node:crypto';
import { cpus } from 'node:os';
import { mkdtempSync, rmSync } from 'node:fs';
import { startDaemon } from '../src/api/index.ts';
import { silentLogger } from '../src/common/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import { qemuVersion } from '../src/qemu/index.ts';
import type { ForkResult } from '../src/vm/index.ts';
import type { BenchResult, Comparison } from './report.ts';
import { option } from './tools.ts';

export async function hostsBenchmark(args: string[]): Promise<BenchResult> {
  const runs = Number(option(args, '--runs', '30'));
  const forks = Number(option(args, '--forks', '3'));
  const memory = Number(option(args, '--memory', '256'));
  const home = mkdtempSync('/tmp/osh-bench-hosts-');
  const memoryDir = mkdtempSync('/dev/shm/osh-bench-hosts-');
  const prefix = `obh${randomBytes(2).toString('hex').slice(0, 3)}`;
  const labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  const daemon = await startDaemon({ home, memoryDir, logger: silentLogger });
  const startedAt = new Date().toISOString();
  const notes: string[] = [];
  try {
    const lab = await labUp(1, { dir: labDir, prefix, subnet: `10.213.${230 + Math.floor(Math.random() * 20)}.0/24` }, home);
    const engine = daemon.engine;
    const local = engine.fleet.localHostId as string;
    const remote = (await engine.fleet.resolve('lab1')).id;
    const started = async (name: string, host: string) => {
      const { task } = await engine.create({ name, memory: `${memory}M`, host, start: true });
      const done = await engine.tasks.wait(task?.id as string);
      if (done.state !== 'succeeded') throw new Error(`${name} did not start: ${done.message}`);
      return engine.resolve(name);
    };
    const vms = { local: await started('bench-local', local), remote: await started('bench-remote', remote) };
    const time = async (fn: () => Promise<unknown>) => {
      const t0 = performance.now();
      await fn();
      return performance.now() - t0;
    };
    const samples = { execLocal: [] as number[], execRemote: [] as number[], statusLocal: [] as number[], statusRemote: [] as number[] };
    for (let i = 0; i < runs; i++) {
      samples.execLocal.push(await time(() => engine.exec('bench-local', { path: '/bin/true', args: [] })));
      samples.execRemote.push(await time(() => engine.exec('bench-remote', { path: '/bin/true', args: [] })));
      samples.statusLocal.push(await time(() => engine.agentOf(vms.local).vmStatus({ vmId: vms.local.id })));
      samples.statusRemote.push(await time(() => engine.agentOf(vms.remote).vmStatus({ vmId: vms.remote.id })));
    }
    const fork = { localTotal: [] as number[], remoteTotal: [] as number[], localStun: [] as number[], remoteStun: [] as number[] };
    for (let i = 0; i < forks; i++) {
      for (const [where, name] of [['local', 'bench-local'], ['remote', 'bench-remote']] as const) {
        const t0 = performance.now();
        const { task } = await engine.fork(name, { count: 1, prefix: `${name}-f${i}-` });
        const done = await engine.tasks.wait(task?.id as string);
        const total = performance.now() - t0;
        if (done.state !== 'succeeded') throw new Error(`fork of ${name} failed: ${done.message}`);
        const result = done.result as ForkResult;
        fork[`${where}Total`].push(total);
        fork[`${where}Stun`].push(result.timings.stunMs);
        for (const child of result.children) {
          await engine.kill(child.name);
          await engine.delete(child.name);
        }
      }
    }
    const ms = (label: string, s: number[]) => ({ label, unit: 'ms' as const, samples: s });
    const comparisons: Comparison[] = [
      { metric: 'vm exec /bin/true', offshoot: ms('lab host, HTTP agent', samples.execRemote), baseline: ms('own host, agent in process', samples.execLocal) },
      { metric: 'VM status (one QMP round trip)', offshoot: ms('lab host, HTTP agent', samples.statusRemote), baseline: ms('own host, agent in process', samples.statusLocal) },
      { metric: `fork ${memory} MiB into 1, total`, offshoot: ms('lab host, HTTP agent', fork.remoteTotal), baseline: ms('own host, agent in process', fork.localTotal) },
      { metric: `fork ${memory} MiB into 1, stun`, offshoot: ms('lab host, HTTP agent', fork.remoteStun), baseline: ms('own host, agent in process', fork.localStun) },
    ];
    const median = (s: number[]) => [...s].sort((a, b) => a - b)[Math.floor(s.length / 2)] as number;
    notes.push(`protocol overhead per call (median difference): exec ${(median(samples.execRemote) - median(samples.execLocal)).toFixed(2)} ms, status ${(median(samples.statusRemote) - median(samples.statusLocal)).toFixed(2)} ms`);
    notes.push(`fork total over HTTP: ${((median(fork.remoteTotal) / median(fork.localTotal) - 1) * 100).toFixed(1)} % more than in process`);
    notes.push(`load average at the end: ${(await import('node:os')).loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    for (const name of ['bench-local', 'bench-remote']) {
      await engine.kill(name);
      await engine.delete(name);
    }
    void lab;
    return { name: 'hosts', startedAt, machine: { cpus: cpus().length, accel: (await engine.hostInfo()).accel, qemu: await qemuVersion(), node: process.version }, parameters: { runs, forks, memoryMiB: memory }, comparisons, notes };
  } finally {
    for (const vm of await daemon.engine.list()) await daemon.engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    for (const d of [home, memoryDir, labDir]) rmSync(d, { recursive: true, force: true });
  }
}
