// Fleet benchmark, store part (issue 11): an inventory of 1,000 VM records
// (realistic specs and runtimes) and 10,000 tasks, on SQLite (a temporary
// file) and on PostgreSQL (a temporary cluster with default durability, or
// --database URL, where it creates and drops a database of its own). Measures
// the inventory calls behind `vm list` (all VMs) and `vm show` (one VM by
// name), and `task list` (newest 20 of 10,000), each beside a baseline of the
// same SQL through the bare driver (better-sqlite3 / pg, no Kysely, no row
// mapping) in the same run; p50 and p99 per figure are in the notes. Goal:
// list of 1,000 VMs < 50 ms p99 on both. Then the controllers part
// (fleet-controllers.ts): 100 concurrent requests through two controllers over
// PostgreSQL against one controller on SQLite, each over a lab host.
//
// Options: --vms N (1000), --tasks N (10000), --runs N (200), --database URL;
// --store-only (no controllers part), --requests N (100), --forks N (2).
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import pg from 'pg';
import { KyselyInventory } from '../src/store/index.ts';
import { createDatabaseOn, dropDatabaseOn, startPgCluster } from '../src/store/pg-test-cluster.ts';
import type { PgCluster } from '../src/store/pg-test-cluster.ts';
import type { VmRecord } from '../src/vm/index.ts';
import { controllersBenchmark } from './fleet-controllers.ts';
import type { BenchResult, Comparison } from './report.ts';
import { option } from './tools.ts';

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

/** Times two calls over the same runs, interleaved (alternating which goes first), so load changes on the shared machine hit both alike. */
async function timePair(runs: number, a: () => Promise<unknown>, b: () => Promise<unknown>): Promise<[number[], number[]]> {
  for (let i = 0; i < Math.min(10, runs); i++) await Promise.all([a(), b()]); // warm-up: prepared statements, caches
  const samples: [number[], number[]] = [[], []];
  const time = async (fn: () => Promise<unknown>, into: number[]) => {
    const t0 = performance.now();
    await fn();
    into.push(performance.now() - t0);
  };
  for (let i = 0; i < runs; i++) {
    if (i % 2 === 0) {
      await time(a, samples[0]);
      await time(b, samples[1]);
    } else {
      await time(b, samples[1]);
      await time(a, samples[0]);
    }
  }
  return samples;
}

function vm(i: number): VmRecord {
  const id = randomUUID();
  const now = new Date(Date.UTC(2030, 0, 1) + i * 1000).toISOString();
  const disk = (n: number) => ({ id: `disk${n}`, file: `home:vms/${id}/disk${n}.qcow2`, format: 'qcow2' as const, readOnly: false, owned: true, backing: [`home:bases/${randomUUID()}.qcow2`] });
  return {
    id,
    name: `vm-${String(i).padStart(5, '0')}`,
    state: i % 3 === 0 ? 'running' : 'stopped',
    stateReason: null,
    spec: { vcpus: 2, memoryMiB: 2048, boot: { kind: 'kernel', kernel: 'home:images/guest/vmlinuz', initrd: 'home:images/guest/initrd.img', cmdline: 'console=ttyS0 quiet' }, disks: [disk(0), disk(1)], nics: [{ id: 'nic0', mac: '52:54:00:12:34:56', network: 'user' }], defaultGuest: true },
    hostId: 'bench', runtime: i % 3 === 0 ? { hostId: 'bench', pid: 10_000 + i, accel: 'tcg', instance: id.slice(0, 8), memory: { mode: 'owned', templateId: null }, startedAt: now } : null,
    createdAt: now,
    updatedAt: now,
  };
}

async function populate(inv: KyselyInventory, vms: number, tasks: number): Promise<VmRecord[]> {
  const records: VmRecord[] = [];
  for (let i = 0; i < vms; i++) {
    const r = vm(i);
    records.push(r);
    await inv.insertVm(r);
  }
  const rows = Array.from({ length: tasks }, (_, i) => {
    const target = records[i % records.length] as VmRecord;
    const at = new Date(Date.UTC(2030, 0, 2) + i * 100).toISOString();
    return { id: randomUUID(), kind: 'vm.start', target_id: target.id, target_name: target.name, state: 'succeeded', progress: 1, message: 'started', result: JSON.stringify({ pid: 1000 + i }), error: null, created_at: at, updated_at: at };
  });
  for (let i = 0; i < rows.length; i += 500) await inv.kysely.insertInto('tasks').values(rows.slice(i, i + 500)).execute();
  return records;
}

interface DialectFigures {
  comparisons: Comparison[];
  notes: string[];
}

async function measure(label: string, inv: KyselyInventory, raw: { list(): Promise<unknown[]>; show(name: string): Promise<unknown>; tasks(): Promise<unknown[]> }, records: VmRecord[], runs: number): Promise<DialectFigures> {
  let k = 0;
  const pick = () => (records[(k++ * 7919) % records.length] as VmRecord).name;
  const figures: [string, number[], number[]][] = [];
  const listed = await inv.listVms();
  if (listed.length !== records.length) throw new Error(`${label}: listVms returned ${listed.length} of ${records.length}`);
  figures.push([`vm list (${records.length} VMs)`, ...(await timePair(runs, () => inv.listVms(), () => raw.list()))]);
  figures.push(['vm show (by name)', ...(await timePair(runs, () => inv.findVmByName(pick()), () => raw.show(pick())))]);
  figures.push(['task list (newest 20)', ...(await timePair(runs, () => inv.listTasks({ limit: 20 }), () => raw.tasks()))]);
  const comparisons: Comparison[] = figures.map(([metric, offshoot, baseline]) => ({ metric: `${metric} ${label}`, offshoot: { label: 'inventory', unit: 'ms', samples: offshoot }, baseline: { label: `bare ${label} driver`, unit: 'ms', samples: baseline } }));
  const notes = figures.map(([metric, offshoot, baseline]) => `${label} ${metric}: inventory p50 ${percentile(offshoot, 50).toFixed(2)} ms p99 ${percentile(offshoot, 99).toFixed(2)} ms; bare driver p50 ${percentile(baseline, 50).toFixed(2)} ms p99 ${percentile(baseline, 99).toFixed(2)} ms`);
  return { comparisons, notes };
}

export async function fleetBenchmark(args: string[]): Promise<BenchResult> {
  const vms = Number(option(args, '--vms', '1000'));
  const tasks = Number(option(args, '--tasks', '10000'));
  const runs = Number(option(args, '--runs', '200'));
  const given = option(args, '--database', '');
  const startedAt = new Date().toISOString();
  const load = loadavg()[0];
  const comparisons: Comparison[] = [];
  const notes: string[] = [];

  // SQLite: a temporary file, as a home has.
  const dir = mkdtempSync('/tmp/offshoot-fleetbench-');
  try {
    const file = join(dir, 'inventory.sqlite');
    const inv = await KyselyInventory.open(file);
    const records = await populate(inv, vms, tasks);
    const db = new BetterSqlite3(file, { readonly: true });
    const list = db.prepare('select * from vms order by created_at, name');
    const show = db.prepare('select * from vms where name = ?');
    const latest = db.prepare('select * from tasks order by seq desc limit 20');
    const figures = await measure('sqlite', inv, { list: async () => list.all(), show: async (n) => show.get(n), tasks: async () => latest.all() }, records, runs);
    comparisons.push(...figures.comparisons);
    notes.push(...figures.notes);
    db.close();
    await inv.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  // PostgreSQL: a temporary cluster (default settings: fsync on) or the given server.
  let cluster: PgCluster | undefined;
  let server: string | undefined;
  const dbName = `offshoot_fleetbench_${process.pid}`;
  try {
    cluster = given ? undefined : await startPgCluster();
    server = given || (cluster as PgCluster).url;
    const url = new URL(await createDatabaseOn(server, dbName));
    const inv = await KyselyInventory.open(url.toString());
    const records = await populate(inv, vms, tasks);
    const client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    const figures = await measure(
      'postgres',
      inv,
      {
        list: async () => (await client.query('select * from vms order by created_at collate "C", name collate "C"')).rows,
        show: async (n) => (await client.query('select * from vms where name = $1', [n])).rows[0],
        tasks: async () => (await client.query('select * from tasks order by seq desc limit 20')).rows,
      },
      records,
      runs,
    );
    comparisons.push(...figures.comparisons);
    notes.push(...figures.notes);
    await client.end();
    await inv.close();
  } finally {
    if (given && server) await dropDatabaseOn(server, dbName).catch(() => {});
    await cluster?.stop();
  }
  notes.push(`goal: vm list of ${vms} VMs < 50 ms p99 on both databases`);
  if (!args.includes('--store-only')) {
    const controllers = await controllersBenchmark(args);
    comparisons.push(...controllers.comparisons);
    notes.push(...controllers.notes);
  }
  notes.push(`load average at start ${load?.toFixed(2)}, at end ${loadavg()[0]?.toFixed(2)} (${cpus().length} cpus; the machine is shared)`);
  return { name: 'fleet', startedAt, machine: { cpus: cpus().length, accel: 'n/a', qemu: 'n/a', node: process.version }, parameters: { vms, tasks, runs, database: given ? 'given' : 'temporary cluster', controllers: !args.includes('--store-only') }, comparisons, notes };
}
