// Fleet benchmark, controllers part (issue 11): 100 concurrent requests
// through two `offshoot serve --no-local-host` controllers over one
// PostgreSQL (a temporary cluster), against the same 100 through one
// controller on SQLite (the embedded default), in the same run, each over a
// lab host of its own (`offshoot agent serve` in a network namespace). The
// requests: creates of stopped VMs, deletes of stopped VMs made beforehand,
// and forks of running VMs (one per source, each into one child), all sent at
// once, alternating between the two controllers. Figures: errors (goal 0;
// a fork counts as an error if its task fails), throughput (requests answered
// per second), p50/p99 of the time until each request is answered, and the
// time until every fork task has ended.
//
// Options: --requests N (100), --forks N (2), --memory MiB (128).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { OffshootClient } from '../src/client/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import { createDatabaseOn, startPgCluster } from '../src/store/pg-test-cluster.ts';
import type { PgCluster } from '../src/store/pg-test-cluster.ts';
import type { TaskRecord } from '../src/vm/index.ts';
import type { Comparison } from './report.ts';
import { option } from './tools.ts';

const CLI = join(import.meta.dirname, '..', 'bin', 'offshoot');

interface Controller {
  home: string;
  env: NodeJS.ProcessEnv;
  client: OffshootClient;
}

function cli(env: NodeJS.ProcessEnv, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(CLI, args, { env }, (error, stdout, stderr) => (error ? reject(new Error(`offshoot ${args.join(' ')}: ${stderr}`)) : resolve(stdout)));
  });
}

async function startController(database: string | undefined): Promise<Controller> {
  const home = mkdtempSync('/tmp/osh-bench-ctl-');
  const { OFFSHOOT_URL: _u, OFFSHOOT_TOKEN: _t, ...inherited } = process.env;
  const env: NodeJS.ProcessEnv = { ...inherited, OFFSHOOT_HOME: home, OFFSHOOT_MEMORY_DIR: join(home, 'memory'), ...(database ? { OFFSHOOT_DATABASE_URL: database } : {}) };
  const { url } = JSON.parse(await cli(env, ['serve', '--detach', '--json', '--no-local-host'])) as { url: string };
  return { home, env, client: new OffshootClient({ url, token: readFileSync(join(home, 'token'), 'utf8').trim() }) };
}

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

async function waitTask(client: OffshootClient, id: string): Promise<TaskRecord> {
  for (;;) {
    const task = await client.getTask(id);
    if (task.state !== 'running') return task;
    await new Promise((r) => setTimeout(r, 200));
  }
}

interface Round {
  latencies: number[];
  errors: string[];
  wallMs: number;
  forksEndedMs: number;
}

/** One round: the requests sent at once through the controllers (round-robin). */
async function round(controllers: Controller[], requests: number, forks: number, memory: number, tag: string): Promise<Round> {
  const first = controllers[0] as Controller;
  // The fork sources, running on the lab host, and the VMs the deletes remove.
  const sources: string[] = [];
  for (let i = 0; i < forks; i++) {
    const name = `${tag}-src${i}`;
    const { task } = await first.client.createVm({ name, memory: `${memory}M`, host: 'lab1', start: true });
    const done = await waitTask(first.client, task?.id as string);
    if (done.state !== 'succeeded') throw new Error(`${name} did not start: ${done.message}`);
    sources.push(name);
  }
  const deletes = Math.floor((requests - forks) / 2);
  const creates = requests - forks - deletes;
  for (let i = 0; i < deletes; i++) await first.client.createVm({ name: `${tag}-old${i}`, memory: `${memory}M`, host: 'lab1' });

  const work: Array<(c: OffshootClient) => Promise<unknown>> = [
    ...Array.from({ length: creates }, (_, i) => (c: OffshootClient) => c.createVm({ name: `${tag}-new${i}`, memory: `${memory}M`, host: 'lab1' })),
    ...Array.from({ length: deletes }, (_, i) => (c: OffshootClient) => c.deleteVm(`${tag}-old${i}`)),
    ...sources.map((name) => (c: OffshootClient) => c.forkVm(name, { count: 1, prefix: `${name}-f-` })),
  ];
  // Interleaved, so forks, creates and deletes overlap.
  work.sort((_a, _b) => Math.random() - 0.5);
  const latencies: number[] = [];
  const errors: string[] = [];
  const forkTasks: Array<{ client: OffshootClient; id: string }> = [];
  const t0 = performance.now();
  await Promise.all(
    work.map(async (fn, i) => {
      const client = (controllers[i % controllers.length] as Controller).client;
      const s = performance.now();
      try {
        const answer = (await fn(client)) as { task?: TaskRecord } | undefined;
        if (answer?.task?.kind === 'vm.fork') forkTasks.push({ client, id: answer.task.id });
      } catch (err) {
        errors.push((err as { code?: string }).code ?? (err as Error).message);
      } finally {
        latencies.push(performance.now() - s);
      }
    }),
  );
  const wallMs = performance.now() - t0;
  for (const f of forkTasks) {
    const done = await waitTask(f.client, f.id);
    if (done.state !== 'succeeded') errors.push(`fork ${done.error?.code ?? done.state}`);
  }
  const forksEndedMs = performance.now() - t0;
  // What the round made goes (the children and sources are killed first).
  for (const vm of await first.client.listVms()) {
    if (vm.state !== 'stopped' && vm.state !== 'created' && vm.state !== 'failed') await first.client.killVm(vm.id).catch(() => undefined);
    await first.client.deleteVm(vm.id).catch(() => undefined);
  }
  return { latencies, errors, wallMs, forksEndedMs };
}

/** Runs a round on a fresh lab host registered with the first controller, then stops the controllers and the lab. */
async function withLab<T>(controllers: Controller[], subnet: string, fn: () => Promise<T>): Promise<T> {
  const prefix = `ofb${randomBytes(2).toString('hex').slice(0, 3)}`;
  const labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  try {
    await labUp(1, { dir: labDir, prefix, subnet }, (controllers[0] as Controller).home);
    return await fn();
  } finally {
    for (const c of controllers) await cli(c.env, ['daemon', 'stop']).catch(() => undefined);
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    rmSync(labDir, { recursive: true, force: true });
    for (const c of controllers) rmSync(c.home, { recursive: true, force: true });
  }
}

export async function controllersBenchmark(args: string[]): Promise<{ comparisons: Comparison[]; notes: string[] }> {
  const requests = Number(option(args, '--requests', '100'));
  const forks = Number(option(args, '--forks', '2'));
  const memory = Number(option(args, '--memory', '128'));
  const net = 20 + Math.floor(Math.random() * 40);

  // Baseline: one controller on SQLite.
  const single = await startController(undefined);
  const baseline = await withLab([single], `10.214.${net}.0/24`, () => round([single], requests, forks, memory, 'one'));

  // Two controllers over one PostgreSQL.
  let cluster: PgCluster | undefined;
  let fleet: Round;
  try {
    cluster = await startPgCluster();
    const url = await createDatabaseOn(cluster.url, `offshoot_fleetbench_ctl_${process.pid}`);
    const pair = [await startController(url), await startController(url)];
    fleet = await withLab(pair, `10.214.${net + 1}.0/24`, () => round(pair, requests, forks, memory, 'two'));
  } finally {
    await cluster?.stop();
  }

  const describe = (r: Round) =>
    `${r.errors.length} errors${r.errors.length ? ` (${[...new Set(r.errors)].join(', ')})` : ''}, ${((requests / r.wallMs) * 1000).toFixed(1)} requests/s, answered p50 ${percentile(r.latencies, 50).toFixed(0)} ms p99 ${percentile(r.latencies, 99).toFixed(0)} ms, all answered in ${r.wallMs.toFixed(0)} ms, forks ended after ${r.forksEndedMs.toFixed(0)} ms`;
  return {
    comparisons: [{ metric: `${requests} concurrent requests (creates, deletes, ${forks} forks), time to answer`, offshoot: { label: 'two controllers, PostgreSQL', unit: 'ms', samples: fleet.latencies }, baseline: { label: 'one controller, SQLite', unit: 'ms', samples: baseline.latencies } }],
    notes: [`two controllers over PostgreSQL: ${describe(fleet)}`, `one controller on SQLite (baseline): ${describe(baseline)}`, 'goal: 0 errors'],
  };
}
