// The inventory contract: one suite that every database behind KyselyInventory
// must pass (inventory.sqlite.test.ts, inventory.postgres.test.ts). It covers
// every Inventory and StorageInventory method, values that differ between the
// databases (sizes past 2^31, fractions, booleans, text order), and the
// fleet's coordination: VM versions with compare-and-set, claims with expiry,
// GC pins, task leases with two concurrent claimers, controllers, the event
// bus between two controllers, API tokens, hosts, migration policies and
// their queue, the schema check, and export/import. Expiry runs on a hand-moved clock: no test sleeps for it.
import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { CheckpointRecord, CopyJobRecord, DiskRecord, PoolMember, PoolRecord, TaskRecord, TemplateRecord, VmClaim, VmRecord } from '../vm/index.ts';
import type { Clock } from './clock.ts';
import { NOTIFY_LIMIT } from './event-bus.ts';
import { KyselyInventory } from './inventory.ts';
import type { OpenInventoryOptions } from './inventory.ts';
import { migrationNames } from './migrations.ts';
import { TABLES } from './schema.ts';
import { EXPORTED_TABLES, TRANSIENT_TABLES, exportInventory, importInventory } from './transfer.ts';

/** How the schema test undoes the last migration (to see an older database migrated). */
const ROLLBACKS: Record<string, (db: Kysely<unknown>, dialect: string) => Promise<void>> = {
  '0005-hosts': async (db, dialect) => {
    await sql`drop table hosts`.execute(db);
    for (const t of ['vms', 'checkpoints', 'datastores']) {
      if (dialect === 'sqlite') await sql`drop index if exists vms_host`.execute(db);
      await db.schema.alterTable(t).dropColumn('host').execute();
    }
    await db.schema.alterTable('checkpoints').dropColumn('file').execute();
    for (const c of ['id', 'hosts']) await db.schema.alterTable('datastores').dropColumn(c).execute();
  },
  '0006-coordination': async (db) => {
    await db.schema.alterTable('tasks').dropColumn('cancel_requested_at').execute();
  },
  '0007-fabric': async (db) => {
    await sql`drop table fabric_members`.execute(db);
    await sql`drop table fabric_templates`.execute(db);
  },
  '0008-migration-policies': async (db) => {
    await sql`drop table migration_queue`.execute(db);
    await sql`drop table migration_policies`.execute(db);
  },
};

export interface ContractTarget {
  /** A location (file path or URL) of a new, empty database. */
  freshLocation(): Promise<string>;
}

/** A clock the test moves by hand. */
export class ManualClock {
  now = Date.UTC(2030, 0, 1);
  readonly clock: Clock = () => this.now;
  advance(ms: number): void {
    this.now += ms;
  }
}

const GiB = 2 ** 30;

export function vmRecord(name: string, overrides: Partial<VmRecord> = {}): VmRecord {
  const now = new Date().toISOString();
  return { id: randomUUID(), name, state: 'created', stateReason: null, hostId: 'host-1', spec: { vcpus: 1, memoryMiB: 256, boot: { kind: 'disk' }, disks: [], nics: [], defaultGuest: false }, runtime: null, createdAt: now, updatedAt: now, ...overrides };
}

export function taskRecord(overrides: Partial<TaskRecord> = {}): TaskRecord {
  const now = new Date().toISOString();
  return { id: randomUUID(), kind: 'vm.start', targetId: 'v', targetName: 'a', state: 'running', progress: 0, message: '', result: null, error: null, createdAt: now, updatedAt: now, ...overrides };
}

function checkpointRecord(name: string, overrides: Partial<CheckpointRecord> = {}): CheckpointRecord {
  return { id: randomUUID(), name, vmId: 'v', vmName: 'a', hostId: 'host-1', file: `home:checkpoints/${name}.ckpt`, path: `/cp/${name}.ckpt`, state: 'writing', memoryBytes: 6 * GiB, fileBytes: null, spec: vmRecord('x').spec, createdAt: new Date().toISOString(), ...overrides };
}

function diskRecord(name: string, datastore: string, overrides: Partial<DiskRecord> = {}): DiskRecord {
  return { id: randomUUID(), name, datastore, file: `ds.${datastore}:disks/${name}.qcow2`, format: 'qcow2', contentId: `c-${name}`, parentId: null, virtualSize: 2 ** 40 + 3, readOnly: false, createdAt: new Date().toISOString(), ...overrides };
}

function copyJob(): CopyJobRecord {
  const now = new Date().toISOString();
  return { id: randomUUID(), purpose: { kind: 'move', diskId: 'd1' }, state: 'queued', datastore: 'ds', hostId: 'host-1', history: [], files: [], progress: { fileIndex: 0, bytesDone: 0, bytesTotal: 5 * GiB, chunksDone: 0, chunksTotal: 80, chunksCopied: 0, workers: 0 }, error: null, createdAt: now, updatedAt: now };
}

function pool(name: string): PoolRecord {
  const now = new Date().toISOString();
  return { id: randomUUID(), name, hostId: 'host-1', sourceVmId: 'v', sourceVmName: 'a', datastore: 'ds', size: 2, sourceContentIds: ['c1'], sourceFiles: [], slots: [], createdAt: now, updatedAt: now };
}

export function templateRecord(name: string, overrides: Partial<TemplateRecord> = {}): TemplateRecord {
  const now = new Date().toISOString();
  const spec = vmRecord('x').spec;
  return {
    id: randomUUID(),
    name,
    state: 'ready',
    stateReason: null,
    sourceVmId: randomUUID(),
    sourceVmName: 'src',
    originHostId: 'host-1',
    memoryMiB: 256,
    placements: [{ hostId: 'host-1', state: 'ready', stateReason: null, spec, memoryTemplateId: randomUUID(), files: ['home:bases/a.qcow2'], pool: { ready: 4, warm: false, maxMemoryBytes: 6 * GiB }, poolNote: null, placedAt: now }],
    createdAt: now,
    updatedAt: now,
    ...overrides,
  };
}

export function poolMember(templateId: string, hostId: string, overrides: Partial<PoolMember> = {}): PoolMember {
  const now = new Date().toISOString();
  return { vmId: randomUUID(), templateId, hostId, state: 'ready', stateReason: null, createdAt: now, readyAt: now, claimedAt: null, claimId: null, updatedAt: now, ...overrides };
}

export function inventoryContract(label: string, target: ContractTarget): void {
  describe(`inventory contract: ${label}`, () => {
    const opened: KyselyInventory[] = [];
    let time: ManualClock;

    /** A new database and a first inventory (controller) on it; `again` opens another on the same database. */
    async function fresh(options: OpenInventoryOptions = {}) {
      time = new ManualClock();
      const location = await target.freshLocation();
      const open = async (more: OpenInventoryOptions = {}) => {
        const inv = await KyselyInventory.open(location, { clock: time.clock, ...options, ...more });
        opened.push(inv);
        return inv;
      };
      return { inv: await open(), again: open, location };
    }

    afterEach(async () => {
      for (const inv of opened.splice(0)) await inv.close();
    });

    describe('VMs', () => {
      it('inserts, finds, lists, updates and deletes, keeping JSON and timestamps', async () => {
        const { inv } = await fresh();
        const a = vmRecord('a', { createdAt: '2030-01-01T00:00:01.000Z' });
        await inv.insertVm(a);
        const runtime = { hostId: 'h', pid: 42, accel: 'tcg' as const, dir: '/x', instance: 'a', memory: { mode: 'owned' as const, file: '/m', templateId: null }, startedAt: 'now' };
        const updated = await inv.updateVm(a.id, { state: 'starting', stateReason: 'boot', runtime, updatedAt: '2030-01-01T00:00:02.000Z' });
        expect(updated).toEqual({ ...a, state: 'starting', stateReason: 'boot', runtime, updatedAt: '2030-01-01T00:00:02.000Z', version: 1 });
        expect(await inv.getVm(a.id)).toEqual(updated);
        expect(await inv.findVmByName('a')).toEqual(updated);
        expect(await inv.findVmByName('nope')).toBeUndefined();
        expect(await inv.getVm(randomUUID())).toBeUndefined();
        await expect(inv.updateVm(randomUUID(), { state: 'stopped' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
        await inv.deleteVm(a.id);
        expect(await inv.listVms()).toEqual([]);
      });

      it('refuses a duplicate name on insert and on rename with ALREADY_EXISTS', async () => {
        const { inv } = await fresh();
        await inv.insertVm(vmRecord('a'));
        const b = vmRecord('b');
        await inv.insertVm(b);
        await expect(inv.insertVm(vmRecord('a'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        await expect(inv.updateVm(b.id, { name: 'a' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        expect((await inv.getVm(b.id))?.name).toBe('b');
      });

      it('lists by creation time, then name in byte order on both databases', async () => {
        const { inv } = await fresh();
        const t = '2030-01-01T00:00:00.000Z';
        for (const name of ['b', 'B', 'a-1', 'a_1', 'a1', 'Z']) await inv.insertVm(vmRecord(name, { createdAt: t }));
        await inv.insertVm(vmRecord('0-first', { createdAt: '2029-12-31T23:59:59.000Z' }));
        expect((await inv.listVms()).map((v) => v.name)).toEqual(['0-first', 'B', 'Z', 'a-1', 'a1', 'a_1', 'b']);
      });

      it('bumps the version on every update and compares-and-sets with expectVersion', async () => {
        const { inv } = await fresh();
        const a = vmRecord('a');
        await inv.insertVm(a);
        expect((await inv.getVm(a.id))?.version).toBe(0);
        expect((await inv.updateVm(a.id, { state: 'starting' })).version).toBe(1);
        expect((await inv.updateVm(a.id, { state: 'running' }, { expectVersion: 1 })).version).toBe(2);
        const conflict = inv.updateVm(a.id, { state: 'stopped' }, { expectVersion: 1 });
        await expect(conflict).rejects.toMatchObject({ code: 'VERSION_CONFLICT', status: 409, details: { kind: 'VM', id: a.id, expected: 1, actual: 2 } });
        expect((await inv.getVm(a.id))?.state).toBe('running');
        await expect(inv.updateVm(randomUUID(), { state: 'stopped' }, { expectVersion: 0 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
      });

      it('lets exactly one of two controllers win a compare-and-set on the same version', async () => {
        const { inv, again } = await fresh();
        const other = await again();
        const a = vmRecord('a');
        await inv.insertVm(a);
        const results = await Promise.allSettled([inv.updateVm(a.id, { stateReason: 'one' }, { expectVersion: 0 }), other.updateVm(a.id, { stateReason: 'two' }, { expectVersion: 0 })]);
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        expect(results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason.code)).toEqual(['VERSION_CONFLICT']);
        expect((await inv.getVm(a.id))?.version).toBe(1);
      });

      it('deletes with compare-and-set: a VM that moved on is kept (VERSION_CONFLICT), a gone one is no error', async () => {
        const { inv } = await fresh();
        const a = vmRecord('a');
        await inv.insertVm(a);
        await inv.updateVm(a.id, { state: 'starting' });
        await expect(inv.deleteVm(a.id, { expectVersion: 0 })).rejects.toMatchObject({ code: 'VERSION_CONFLICT', details: { expected: 0, actual: 1 } });
        expect((await inv.getVm(a.id))?.state).toBe('starting');
        await inv.deleteVm(a.id, { expectVersion: 1 });
        expect(await inv.getVm(a.id)).toBeUndefined();
        await inv.deleteVm(a.id, { expectVersion: 1 });
      });
    });

    describe('tasks', () => {
      it('keeps tasks newest first with filters, JSON result and error, exact fractions', async () => {
        const { inv } = await fresh();
        const t1 = taskRecord({ targetId: 'v1' });
        const t2 = taskRecord({ targetId: 'v2' });
        const t3 = taskRecord({ targetId: 'v1', state: 'succeeded' });
        for (const t of [t1, t2, t3]) await inv.insertTask(t);
        const failed = await inv.updateTask(t1.id, { state: 'failed', progress: 0.1 + 0.2, message: 'boom', error: { code: 'X', message: 'boom', details: { a: 1 } } });
        expect(failed.progress).toBe(0.1 + 0.2);
        await inv.updateTask(t2.id, { result: { children: ['x'], bytes: 3 * GiB } });
        expect((await inv.listTasks()).map((t) => t.id)).toEqual([t3.id, t2.id, t1.id]);
        expect((await inv.listTasks({ limit: 2 })).map((t) => t.id)).toEqual([t3.id, t2.id]);
        expect((await inv.listTasks({ targetId: 'v1' })).map((t) => t.id)).toEqual([t3.id, t1.id]);
        expect((await inv.listTasks({ state: 'running' })).map((t) => t.id)).toEqual([t2.id]);
        expect(await inv.getTask(t1.id)).toEqual({ ...t1, state: 'failed', progress: 0.1 + 0.2, message: 'boom', error: { code: 'X', message: 'boom', details: { a: 1 } }, updatedAt: failed.updatedAt });
        expect((await inv.getTask(t2.id))?.result).toEqual({ children: ['x'], bytes: 3 * GiB });
        await expect(inv.updateTask('nope', { progress: 1 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
        await expect(inv.insertTask(t1)).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        expect(await inv.getTask('nope')).toBeUndefined();
      });
    });

    describe('checkpoints', () => {
      it('stores sizes past 2^32 and finds by id, name or path', async () => {
        const { inv } = await fresh();
        const c = checkpointRecord('c1');
        await inv.insertCheckpoint(c);
        await inv.insertCheckpoint(checkpointRecord('c2', { createdAt: '2031-01-01T00:00:00.000Z' }));
        await expect(inv.insertCheckpoint(checkpointRecord('c1'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        const done = await inv.updateCheckpoint(c.id, { state: 'complete', fileBytes: 5_000_000_000_123 });
        expect(done).toEqual({ ...c, state: 'complete', fileBytes: 5_000_000_000_123 });
        for (const ref of [c.id, c.name, c.path]) expect(await inv.findCheckpoint(ref)).toEqual(done);
        expect(await inv.findCheckpoint('nope')).toBeUndefined();
        expect((await inv.listCheckpoints()).map((x) => x.name)).toEqual(['c1', 'c2']);
        await expect(inv.updateCheckpoint('nope', { state: 'failed' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
        await inv.deleteCheckpoint(c.id);
        expect((await inv.listCheckpoints()).map((x) => x.name)).toEqual(['c2']);
      });
    });

    describe('storage records', () => {
      it('datastores and disks: sizes past 2^40, booleans, replace, cascade on delete', async () => {
        const { inv } = await fresh();
        const s = inv.storage;
        const dsRecord = { id: 'dst-1', name: 'ds', hosts: [{ hostId: 'h1', path: '/ds/ds' }], createdAt: 't' };
        await s.insertDatastore(dsRecord);
        await s.insertDatastore({ id: 'dst-2', name: 'b', hosts: [{ hostId: 'h1', path: '/ds/b' }], createdAt: 't' });
        await expect(s.insertDatastore({ id: 'dst-3', name: 'ds', hosts: [{ hostId: 'h1', path: '/other' }], createdAt: 't' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        await expect(s.insertDatastore({ id: 'dst-4', name: 'x', hosts: [{ hostId: 'h1', path: '/ds/ds' }], createdAt: 't' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        // The same folder path on another host is another datastore.
        await s.insertDatastore({ id: 'dst-5', name: 'y', hosts: [{ hostId: 'h2', path: '/ds/ds' }], createdAt: 't' });
        expect(await s.getDatastore('ds')).toEqual(dsRecord);
        const shared = await s.updateDatastore('y', { hosts: [{ hostId: 'h2', path: '/ds/ds' }, { hostId: 'h3', path: '/mnt/ds' }] });
        expect(shared.hosts.map((h) => h.hostId)).toEqual(['h2', 'h3']);
        await s.deleteDatastore('y');
        expect((await s.listDatastores()).map((d) => d.name)).toEqual(['b', 'ds']);
        const base = diskRecord('base', 'ds', { readOnly: true, createdAt: '2030-01-01T00:00:00.000Z' });
        const top = diskRecord('top', 'ds', { parentId: base.id, createdAt: '2030-01-01T00:00:01.000Z' });
        await s.insertDisk(base);
        await s.insertDisk(top);
        await s.insertDisk(diskRecord('other', 'b'));
        await expect(s.insertDisk(diskRecord('base', 'ds'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        expect(await s.getDisk(base.id)).toEqual(base);
        expect((await s.getDisk(top.id))?.readOnly).toBe(false);
        expect(await s.listDisks('ds')).toEqual([base, top]);
        expect(await s.listDisks()).toHaveLength(3);
        const grown = await s.updateDisk(top.id, { virtualSize: 2 ** 52, readOnly: true });
        expect(grown).toEqual({ ...top, virtualSize: 2 ** 52, readOnly: true });
        expect(await s.getDisk(top.id)).toEqual(grown);
        await expect(s.updateDisk('nope', { readOnly: true })).rejects.toMatchObject({ code: 'NOT_FOUND' });
        const rescanned = [diskRecord('r1', 'ds')];
        await s.replaceDisks('ds', rescanned);
        expect(await s.listDisks('ds')).toEqual(rescanned);
        await s.deleteDisk(rescanned[0]!.id);
        expect(await s.listDisks('ds')).toEqual([]);
        await s.deleteDatastore('b');
        expect(await s.getDatastore('b')).toBeUndefined();
        expect(await s.listDisks()).toEqual([]);
      });

      it('copy jobs and pools as documents', async () => {
        const { inv } = await fresh();
        const s = inv.storage;
        const job = copyJob();
        await s.insertCopyJob(job);
        const running = await s.updateCopyJob(job.id, { state: 'running', progress: { ...job.progress, bytesDone: 4 * GiB } });
        expect(running.state).toBe('running');
        expect(await s.getCopyJob(job.id)).toEqual(running);
        expect(await s.listCopyJobs()).toEqual([running]);
        await expect(s.updateCopyJob('nope', { state: 'failed' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
        const p = pool('p1');
        await s.insertPool(p);
        await expect(s.insertPool(pool('p1'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        const resized = await s.updatePool(p.id, { size: 5 });
        expect(await s.getPool('p1')).toEqual(resized);
        expect(await s.getPool(p.id)).toEqual(resized);
        expect(await s.listPools()).toEqual([resized]);
        await s.deletePool(p.id);
        expect(await s.getPool('p1')).toBeUndefined();
        await expect(s.updatePool(p.id, { size: 1 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
      });
    });

    describe('VM claims', () => {
      it('refuses a live claim with BUSY naming holder and operation; an expired one is taken over', async () => {
        const { inv } = await fresh();
        const claim = await inv.claims.acquire('vm1', 'ctl-a', 'fork', 30_000);
        expect(claim).toMatchObject({ vmId: 'vm1', owner: 'ctl-a', operation: 'fork', expiresAt: time.now + 30_000 });
        await expect(inv.claims.acquire('vm1', 'ctl-b', 'delete', 30_000)).rejects.toMatchObject({ code: 'BUSY', status: 409, details: { vmId: 'vm1', holder: 'ctl-a', operation: 'fork' } });
        await expect(inv.claims.acquire('vm1', 'ctl-a', 'stop', 30_000)).rejects.toMatchObject({ code: 'BUSY' });
        expect(await inv.claims.acquire('vm2', 'ctl-b', 'start', 30_000)).toMatchObject({ owner: 'ctl-b' });
        time.advance(29_999);
        await expect(inv.claims.acquire('vm1', 'ctl-b', 'delete', 30_000)).rejects.toMatchObject({ code: 'BUSY' });
        time.advance(1);
        const taken = await inv.claims.acquire('vm1', 'ctl-b', 'delete', 30_000);
        expect(taken).toMatchObject({ owner: 'ctl-b', operation: 'delete' });
        // The old holder finds out, and its late release does not free the new claim.
        await expect(inv.claims.renew(claim, 30_000)).rejects.toMatchObject({ code: 'LEASE_LOST', details: { holder: 'ctl-b (delete)' } });
        await inv.claims.release(claim);
        expect(await inv.claims.get('vm1')).toEqual(taken);
      });

      it('renews to stay live and releases to free', async () => {
        const { inv } = await fresh();
        const claim = await inv.claims.acquire('vm1', 'ctl-a', 'fork', 10_000);
        time.advance(9_000);
        const renewed = await inv.claims.renew(claim, 10_000);
        expect(renewed.expiresAt).toBe(time.now + 10_000);
        time.advance(9_000);
        await expect(inv.claims.acquire('vm1', 'ctl-b', 'stop', 10_000)).rejects.toMatchObject({ code: 'BUSY' });
        await inv.claims.release(renewed);
        expect(await inv.claims.get('vm1')).toBeUndefined();
        expect(await inv.claims.acquire('vm1', 'ctl-b', 'stop', 10_000)).toMatchObject({ owner: 'ctl-b' });
        await expect(inv.claims.acquire('vm3', 'ctl-b', 'stop', 0)).rejects.toMatchObject({ code: 'INVALID_INPUT' });
        await inv.claims.acquire('vm4', 'ctl-b', 'start', 10_000);
        await inv.claims.acquire('vm5', 'ctl-c', 'start', 10_000);
        expect(await inv.claims.releaseOwnedBy('ctl-b')).toBe(2);
        expect(await inv.claims.get('vm1')).toBeUndefined();
        expect(await inv.claims.get('vm5')).toMatchObject({ owner: 'ctl-c' });
      });

      it('gives a VM to one of two controllers racing for it', async () => {
        const { inv, again } = await fresh();
        const other = await again();
        for (let round = 0; round < 5; round++) {
          const vmId = `race-${round}`;
          const results = await Promise.allSettled([inv.claims.acquire(vmId, 'ctl-a', 'fork', 30_000), other.claims.acquire(vmId, 'ctl-b', 'fork', 30_000)]);
          const won = results.filter((r): r is PromiseFulfilledResult<VmClaim> => r.status === 'fulfilled');
          expect(won).toHaveLength(1);
          expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toMatchObject({ code: 'BUSY', details: { holder: won[0]!.value.owner } });
        }
      });
    });

    describe('fabric', () => {
      it('stores templates as documents, unique by name, updated read-modify-write with a version', async () => {
        const { inv } = await fresh();
        const t = templateRecord('web', { createdAt: '2030-01-01T00:00:01.000Z' });
        await inv.fabric.insertTemplate(t);
        await expect(inv.fabric.insertTemplate(templateRecord('web'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        await inv.fabric.insertTemplate(templateRecord('api', { createdAt: '2030-01-01T00:00:02.000Z' }));
        expect(await inv.fabric.findTemplate('web')).toEqual({ ...t, version: 0 });
        expect(await inv.fabric.findTemplate(t.id)).toEqual({ ...t, version: 0 });
        expect((await inv.fabric.listTemplates()).map((x) => x.name)).toEqual(['web', 'api']);
        const updated = await inv.fabric.updateTemplate(t.id, (cur) => ({ ...cur, state: 'broken', stateReason: 'its memory is gone', placements: cur.placements.map((p) => ({ ...p, pool: { ...p.pool, ready: 16, maxMemoryBytes: 5 * GiB + 1 } })) }));
        expect(updated).toMatchObject({ state: 'broken', stateReason: 'its memory is gone', version: 1 });
        expect(updated.placements[0]?.pool).toEqual({ ready: 16, warm: false, maxMemoryBytes: 5 * GiB + 1 });
        expect(await inv.fabric.getTemplate(t.id)).toEqual(updated);
        await expect(inv.fabric.updateTemplate(randomUUID(), (x) => x)).rejects.toMatchObject({ code: 'NOT_FOUND' });
        await inv.fabric.deleteTemplate(t.id);
        expect(await inv.fabric.findTemplate('web')).toBeUndefined();
      });

      it('moves a pool child only by compare-and-set, and claims the oldest ready child on the given hosts', async () => {
        const { inv } = await fresh();
        const filling = poolMember('t1', 'h1', { state: 'filling', readyAt: null });
        const older = poolMember('t1', 'h2', { readyAt: '2030-01-01T00:00:01.000Z' });
        const newer = poolMember('t1', 'h1', { readyAt: '2030-01-01T00:00:02.000Z' });
        for (const m of [filling, older, newer, poolMember('t2', 'h1')]) await inv.fabric.insertMember(m);
        await expect(inv.fabric.insertMember(filling)).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        expect((await inv.fabric.listMembers({ templateId: 't1', state: 'ready' })).map((m) => m.vmId).sort()).toEqual([older.vmId, newer.vmId].sort());
        expect(await inv.fabric.listMembers({ templateId: 't1', hostId: 'h1' })).toHaveLength(2);
        expect(await inv.fabric.transitionMember(filling.vmId, ['ready'], 'claimed')).toBeUndefined();
        expect(await inv.fabric.transitionMember(filling.vmId, ['filling'], 'ready', { readyAt: '2030-01-01T00:00:03.000Z' })).toMatchObject({ state: 'ready', readyAt: '2030-01-01T00:00:03.000Z' });
        expect(await inv.fabric.claimMember('t1', ['h1'], 'c1')).toMatchObject({ vmId: newer.vmId, state: 'claimed', claimId: 'c1' });
        expect(await inv.fabric.claimMember('t1', ['h1', 'h2'], 'c2')).toMatchObject({ vmId: older.vmId, claimId: 'c2' });
        expect(await inv.fabric.claimMember('t1', ['h1', 'h2'], 'c3')).toMatchObject({ vmId: filling.vmId });
        expect(await inv.fabric.claimMember('t1', ['h1', 'h2'], 'c4')).toBeUndefined();
        expect(await inv.fabric.claimMember('t1', [], 'c5')).toBeUndefined();
        expect(await inv.fabric.transitionMember(newer.vmId, ['ready'], 'retiring')).toBeUndefined();
        await inv.fabric.deleteMember(newer.vmId);
        expect(await inv.fabric.getMember(newer.vmId)).toBeUndefined();
      });

      it('never gives one child to two claims, from two controllers claiming at once', async () => {
        const { inv, again } = await fresh();
        const other = await again();
        const ready = Array.from({ length: 8 }, (_, i) => poolMember('t', i % 2 ? 'h1' : 'h2', { readyAt: `2030-01-01T00:00:0${i}.000Z` }));
        for (const m of ready) await inv.fabric.insertMember(m);
        const claims = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? inv : other).fabric.claimMember('t', ['h1', 'h2'], `claim-${i}`)));
        const got = claims.filter((c): c is PoolMember => c !== undefined);
        expect(got).toHaveLength(8);
        expect(new Set(got.map((c) => c.vmId)).size).toBe(8);
        const stored = await inv.fabric.listMembers({ templateId: 't' });
        expect(stored.every((m) => m.state === 'claimed')).toBe(true);
        // Each stored claim id is the claim that got that child.
        for (const c of got) expect(stored.find((m) => m.vmId === c.vmId)?.claimId).toBe(c.claimId);
      });
    });

    describe('GC pins', () => {
      it('keeps a path pinned while any holder pins it; adopts and drops by owner', async () => {
        const { inv } = await fresh();
        const pins = inv.pins;
        await pins.add('pool:p1', ['/a', '/b'], null);
        await pins.add('copy-job:j1', ['/b', '/c', '/c'], 'ctl-a');
        await pins.add('task:t1', ['/d'], 'ctl-a');
        await pins.add('pool:p1', ['/a'], null);
        expect([...(await pins.paths())].sort()).toEqual(['/a', '/b', '/c', '/d']);
        await pins.remove('copy-job:j1', ['/b']);
        expect([...(await pins.paths())].sort()).toEqual(['/a', '/b', '/c', '/d']);
        await pins.remove('copy-job:j1');
        expect([...(await pins.paths())].sort()).toEqual(['/a', '/b', '/d']);
        expect((await pins.list({ holder: 'pool:p1' })).map((p) => [p.path, p.owner])).toEqual([['/a', null], ['/b', null]]);
        expect(await pins.adopt('task:t1', 'ctl-b')).toBe(1);
        expect((await pins.list({ owner: 'ctl-b' })).map((p) => p.path)).toEqual(['/d']);
        await pins.add('copy-job:j2', ['/e'], 'ctl-a');
        expect(await pins.removeOwnedBy('ctl-a')).toBe(1);
        expect([...(await pins.paths())].sort()).toEqual(['/a', '/b', '/d']);
      });
    });

    describe('task leases', () => {
      it('leases, renews, refuses another owner, and hands expired tasks over', async () => {
        const { inv } = await fresh();
        const t = taskRecord();
        await inv.insertTask(t);
        expect(await inv.leases.acquire(t.id, 'ctl-a', 10_000)).toEqual({ taskId: t.id, owner: 'ctl-a', expiresAt: time.now + 10_000 });
        await expect(inv.leases.acquire(t.id, 'ctl-b', 10_000)).rejects.toMatchObject({ code: 'LEASE_LOST', details: { holder: 'ctl-a' } });
        expect(await inv.leases.claimExpiredTasks('ctl-b', 10_000)).toEqual([]);
        time.advance(8_000);
        expect(await inv.leases.renewAll('ctl-a', 10_000)).toBe(1);
        time.advance(8_000);
        expect(await inv.leases.claimExpiredTasks('ctl-b', 10_000)).toEqual([]);
        time.advance(2_001);
        const taken = await inv.leases.claimExpiredTasks('ctl-b', 10_000);
        expect(taken.map((x) => x.id)).toEqual([t.id]);
        expect(taken[0]).toEqual(t);
        expect(await inv.leases.get(t.id)).toEqual({ taskId: t.id, owner: 'ctl-b', expiresAt: time.now + 10_000 });
        await expect(inv.leases.renew(t.id, 'ctl-a', 10_000)).rejects.toMatchObject({ code: 'LEASE_LOST', details: { holder: 'ctl-b' } });
        expect(await inv.leases.renewAll('ctl-a', 10_000)).toBe(0);
        await inv.leases.release(t.id, 'ctl-a');
        expect((await inv.leases.get(t.id))?.owner).toBe('ctl-b');
        await inv.leases.release(t.id, 'ctl-b');
        expect(await inv.leases.get(t.id)).toBeUndefined();
        await expect(inv.leases.acquire('nope', 'ctl-a', 1000)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      });

      it('inserts a task leased in the same statement, fences updates by owner, and ends the lease with the task', async () => {
        const { inv } = await fresh();
        const t = taskRecord();
        await inv.insertTask(t, { lease: { owner: 'ctl-a', ttlMs: 10_000 } });
        expect(await inv.leases.get(t.id)).toEqual({ taskId: t.id, owner: 'ctl-a', expiresAt: time.now + 10_000 });
        expect(await inv.leases.list()).toEqual([{ taskId: t.id, owner: 'ctl-a', expiresAt: time.now + 10_000 }]);
        expect(await inv.leases.claimExpiredTasks('ctl-b', 10_000)).toEqual([]);
        expect((await inv.updateTask(t.id, { progress: 0.5 }, { owner: 'ctl-a' })).progress).toBe(0.5);
        time.advance(10_000);
        expect((await inv.leases.claimExpiredTasks('ctl-b', 10_000)).map((x) => x.id)).toEqual([t.id]);
        // The old owner is fenced off: its writes are refused and change nothing.
        await expect(inv.updateTask(t.id, { state: 'succeeded' }, { owner: 'ctl-a' })).rejects.toMatchObject({ code: 'LEASE_LOST', details: { holder: 'ctl-b' } });
        expect((await inv.getTask(t.id))?.state).toBe('running');
        await expect(inv.updateTask(randomUUID(), { progress: 1 }, { owner: 'ctl-a' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
        expect((await inv.updateTask(t.id, { state: 'failed' }, { owner: 'ctl-b' })).state).toBe('failed');
        expect(await inv.leases.get(t.id)).toBeUndefined();
        expect(await inv.leases.list()).toEqual([]);
      });

      it('carries a cancel request to the owner of a running task only', async () => {
        const { inv } = await fresh();
        const a = taskRecord();
        const b = taskRecord();
        await inv.insertTask(a, { lease: { owner: 'ctl-a', ttlMs: 10_000 } });
        await inv.insertTask(b, { lease: { owner: 'ctl-b', ttlMs: 10_000 } });
        expect(await inv.leases.cancelRequested('ctl-a')).toEqual([]);
        expect(await inv.leases.requestCancel(a.id)).toBe(true);
        expect(await inv.leases.cancelRequested('ctl-a')).toEqual([a.id]);
        expect(await inv.leases.cancelRequested('ctl-b')).toEqual([]);
        await inv.updateTask(a.id, { state: 'failed' });
        expect(await inv.leases.cancelRequested('ctl-a')).toEqual([]);
        expect(await inv.leases.requestCancel(a.id)).toBe(false);
        expect(await inv.leases.requestCancel(randomUUID())).toBe(false);
      });

      it('takes over unleased running tasks but never finished ones', async () => {
        const { inv } = await fresh();
        const running = taskRecord();
        const done = taskRecord({ state: 'succeeded' });
        await inv.insertTask(running);
        await inv.insertTask(done);
        await expect(inv.leases.acquire(done.id, 'ctl-a', 1000)).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
        expect((await inv.leases.claimExpiredTasks('ctl-a', 10_000)).map((x) => x.id)).toEqual([running.id]);
        await inv.updateTask(running.id, { state: 'failed' });
        time.advance(60_000);
        expect(await inv.leases.claimExpiredTasks('ctl-b', 10_000)).toEqual([]);
      });

      it('gives two concurrent claimers disjoint sets of expired tasks', async () => {
        const { inv, again } = await fresh();
        const other = await again();
        const ids: string[] = [];
        for (let i = 0; i < 60; i++) {
          const t = taskRecord({ targetName: `t${i}` });
          await inv.insertTask(t);
          await inv.leases.acquire(t.id, 'ctl-dead', 5_000);
          ids.push(t.id);
        }
        time.advance(5_000);
        const claimsOf = async (who: KyselyInventory, owner: string) => {
          const mine: string[] = [];
          for (;;) {
            const batch = await who.leases.claimExpiredTasks(owner, 60_000, 7);
            if (batch.length === 0) return mine;
            mine.push(...batch.map((x) => x.id));
          }
        };
        const [a, b] = await Promise.all([claimsOf(inv, 'ctl-a'), claimsOf(other, 'ctl-b')]);
        expect(a.filter((id) => b.includes(id))).toEqual([]);
        expect([...a, ...b].sort()).toEqual([...ids].sort());
        expect(a.length).toBeGreaterThan(0);
        for (const id of a) expect((await inv.leases.get(id))?.owner).toBe('ctl-a');
        for (const id of b) expect((await inv.leases.get(id))?.owner).toBe('ctl-b');
      });
    });

    describe('controllers', () => {
      it('register, heartbeat, list live, reap the expired with their pins', async () => {
        const { inv } = await fresh();
        await inv.controllers.register('ctl-a', 'http://127.0.0.1:1', 10_000);
        await inv.controllers.register('ctl-b', null, 10_000);
        await inv.pins.add('task:1', ['/x'], 'ctl-a');
        await inv.pins.add('pool:1', ['/y'], null);
        time.advance(6_000);
        await inv.controllers.heartbeat('ctl-b', 10_000);
        expect((await inv.controllers.live()).map((c) => c.id)).toEqual(['ctl-a', 'ctl-b']);
        time.advance(4_000);
        expect((await inv.controllers.live()).map((c) => c.id)).toEqual(['ctl-b']);
        expect(await inv.controllers.reapExpired()).toEqual(['ctl-a']);
        expect((await inv.controllers.list()).map((c) => c.id)).toEqual(['ctl-b']);
        expect([...(await inv.pins.paths())]).toEqual(['/y']);
        await expect(inv.controllers.heartbeat('ctl-a', 10_000)).rejects.toMatchObject({ code: 'LEASE_LOST' });
        await inv.controllers.deregister('ctl-b');
        expect(await inv.controllers.list()).toEqual([]);
      });

      it('keeps a controller alive by heartbeat, tells it when it was reaped, and deregisters it', async () => {
        const { inv } = await fresh();
        let lost = 0;
        const alive = await inv.controllers.keepAlive('ctl-k', 'http://k', 150, { onLost: () => lost++ });
        expect((await inv.controllers.live()).map((c) => c.id)).toEqual(['ctl-k']);
        time.advance(150);
        expect(await inv.controllers.reapExpired()).toEqual(['ctl-k']);
        await vi.waitFor(async () => expect((await inv.controllers.live()).map((c) => c.id)).toEqual(['ctl-k']), { timeout: 3_000, interval: 20 });
        expect(lost).toBe(1);
        await alive.stop();
        expect(await inv.controllers.list()).toEqual([]);
      });
    });

    describe('event bus', () => {
      it('delivers an event published by one controller to every controller once, large ones too, in order', async () => {
        const { inv, again } = await fresh();
        const other = await again();
        const busA = await inv.openEventBus<{ n: number; fill?: string }>('ctl-a');
        const busB = await other.openEventBus<{ n: number; fill?: string }>('ctl-b');
        const gotA: number[] = [];
        const gotB: { n: number; size: number }[] = [];
        busA.subscribe((e) => gotA.push(e.n));
        busB.subscribe((e) => gotB.push({ n: e.n, size: e.fill?.length ?? 0 }));
        await busA.publish({ n: 1 });
        await busA.publish({ n: 2, fill: 'x'.repeat(NOTIFY_LIMIT * 3) });
        await busA.publish({ n: 3 });
        await vi.waitFor(() => expect(gotB).toHaveLength(3), { timeout: 5_000, interval: 20 });
        expect(gotB).toEqual([{ n: 1, size: 0 }, { n: 2, size: NOTIFY_LIMIT * 3 }, { n: 3, size: 0 }]);
        await busB.publish({ n: 4 });
        await vi.waitFor(() => expect(gotA).toEqual([1, 2, 3, 4]), { timeout: 5_000, interval: 20 });
        // No echo: each controller saw each event once.
        await new Promise((r) => setTimeout(r, 100));
        expect(gotA).toEqual([1, 2, 3, 4]);
        expect(gotB.map((e) => e.n)).toEqual([1, 2, 3, 4]);
        await busA.close();
        await busB.close();
      });
    });

    describe('API tokens', () => {
      it('imports the token file once, verifies by hash, creates and revokes', async () => {
        const { inv } = await fresh();
        const fileToken = 'f'.repeat(43);
        const first = await inv.tokens.ensure('home-token', fileToken);
        expect(await inv.tokens.ensure('home-token-again', fileToken)).toEqual(first);
        expect(await inv.tokens.verify(fileToken)).toEqual(first);
        expect(await inv.tokens.verify('g'.repeat(43))).toBeUndefined();
        expect(await inv.tokens.verify('')).toBeUndefined();
        const created = await inv.tokens.create('ci');
        expect((await inv.tokens.verify(created.token))?.name).toBe('ci');
        await expect(inv.tokens.create('ci')).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        const stored = await inv.kysely.selectFrom('api_tokens').selectAll().execute();
        expect(JSON.stringify(stored)).not.toContain(fileToken);
        expect(JSON.stringify(stored)).not.toContain(created.token);
        expect((await inv.tokens.list()).map((t) => t.name)).toEqual(['ci', 'home-token']);
        expect(await inv.tokens.revoke('ci')).toBe(true);
        expect(await inv.tokens.revoke('ci')).toBe(false);
        expect(await inv.tokens.verify(created.token)).toBeUndefined();
      });
    });

    describe('hosts', () => {
      it('stores hosts by id and name, with their epoch, credential, capabilities and facts', async () => {
        const { inv } = await fresh();
        const host = { id: 'h-1', name: 'lab1', url: 'http://10.0.0.1:7070', state: 'ready' as const, stateReason: null, epoch: 1, token: 't'.repeat(43), protocolVersion: 1, capabilities: ['vm', 'fork'], facts: { hostname: 'lab1', accel: 'tcg' as const, accelReason: 'x', qemuVersion: '7.2', agentVersion: '0.1.0', agentInstance: 'i', memory: { totalBytes: 2 ** 34, freeBytes: 2 ** 33, templatesBytes: 0 }, confinement: { user: null, sandbox: false, reason: 'x' } }, lastSeenAt: null, leaseExpiresAt: null, createdAt: 't', updatedAt: 't' };
        await inv.hosts.insertHost(host);
        await expect(inv.hosts.insertHost({ ...host, id: 'h-2' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
        expect(await inv.hosts.getHost('h-1')).toEqual(host);
        expect(await inv.hosts.findHostByName('lab1')).toEqual(host);
        expect(await inv.hosts.updateHost('h-1', { state: 'unreachable', epoch: 2, stateReason: 'missed its lease' })).toEqual({ ...host, state: 'unreachable', epoch: 2, stateReason: 'missed its lease' });
        await expect(inv.hosts.updateHost('nope', { state: 'ready' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
        await inv.hosts.insertHost({ ...host, id: 'h-0', name: 'Lab0', token: null, facts: null });
        expect((await inv.hosts.listHosts()).map((h) => h.name)).toEqual(['Lab0', 'lab1']);
        await inv.hosts.deleteHost('h-1');
        expect(await inv.hosts.getHost('h-1')).toBeUndefined();
      });
    });

    describe('migration policies and queue', () => {
      it('keeps one policy per scope, replaced whole, an empty one deleting the row; unknown fields are dropped on read', async () => {
        const { inv, again } = await fresh();
        const other = await again();
        expect(await inv.migrationControl.getPolicy('fleet')).toBeUndefined();
        await inv.migrationControl.putPolicy('fleet', { maxBandwidthBytesPerSecond: 5 * 2 ** 40 + 7, postcopy: 'never', autoConverge: true });
        await inv.migrationControl.putPolicy('h-1', { maxOutgoing: 1, maxIncoming: 2, downtimeLimitMs: 50 });
        // Another controller reads what this one wrote.
        expect((await other.migrationControl.getPolicy('fleet'))?.policy).toEqual({ maxBandwidthBytesPerSecond: 5 * 2 ** 40 + 7, postcopy: 'never', autoConverge: true });
        await other.migrationControl.putPolicy('h-1', { maxOutgoing: 3 });
        expect((await inv.migrationControl.getPolicy('h-1'))?.policy).toEqual({ maxOutgoing: 3 });
        expect((await inv.migrationControl.listPolicies()).map((p) => p.scope)).toEqual(['fleet', 'h-1']);
        await inv.migrationControl.putPolicy('h-1', {});
        expect(await inv.migrationControl.getPolicy('h-1')).toBeUndefined();
        await inv.kysely.updateTable('migration_policies').set({ doc: JSON.stringify({ maxOutgoing: 2, fromTheFuture: 1, postcopy: 'sometimes' }) }).where('scope', '=', 'fleet').execute();
        expect((await inv.migrationControl.getPolicy('fleet'))?.policy).toEqual({ maxOutgoing: 2 });
        expect(await inv.migrationControl.deletePolicy('fleet')).toBe(true);
        expect(await inv.migrationControl.deletePolicy('fleet')).toBe(false);
      });

      it('queues in arrival order across controllers, and forgets entries whose task ended', async () => {
        const { inv, again } = await fresh();
        const other = await again();
        const tasks = [taskRecord(), taskRecord(), taskRecord()];
        for (const t of tasks) await inv.insertTask(t);
        await inv.migrationControl.enqueue(tasks[0]!.id, 'ctl-a', { out: { 'h-1': 1 }, in: { 'h-2': 1 } });
        await other.migrationControl.enqueue(tasks[1]!.id, 'ctl-b', { out: { 'h-1': 2 }, in: { 'h-2': 2 } });
        await inv.migrationControl.enqueue(tasks[2]!.id, 'ctl-a', { out: { 'h-3': 1 }, in: { 'h-2': 1 } });
        await expect(inv.migrationControl.enqueue(tasks[2]!.id, 'ctl-a', { out: {}, in: {} })).rejects.toThrow();
        const queue = await other.migrationControl.queued();
        expect(queue.map((e) => [e.taskId, e.owner])).toEqual(tasks.map((t, i) => [t.id, i === 1 ? 'ctl-b' : 'ctl-a']));
        expect(queue[1]?.needs).toEqual({ out: { 'h-1': 2 }, in: { 'h-2': 2 } });
        // The first task ended (its controller died before dequeuing): it no longer counts, and its row goes.
        await inv.updateTask(tasks[0]!.id, { state: 'failed' });
        expect((await inv.migrationControl.queued()).map((e) => e.taskId)).toEqual([tasks[1]!.id, tasks[2]!.id]);
        expect((await inv.kysely.selectFrom('migration_queue').select('task_id').execute()).length).toBe(2);
        await other.migrationControl.dequeue(tasks[1]!.id);
        expect((await inv.migrationControl.queued()).map((e) => e.taskId)).toEqual([tasks[2]!.id]);
      });
    });

    describe('schema version', () => {
      it('is at the code version and does not migrate twice', async () => {
        const { inv, again } = await fresh();
        const names = migrationNames(inv.dialect);
        expect(inv.schema).toMatchObject({ database: names.length, code: names.length, codeMigration: names[names.length - 1] });
        const second = await again();
        expect(second.schema.database).toBe(names.length);
        const ran = await sql<{ name: string }>`select name from kysely_migration`.execute(inv.kysely);
        expect(ran.rows.map((r) => r.name).sort()).toEqual(names);
      });

      it('refuses a database newer than the code, naming both versions', async () => {
        const { inv, location } = await fresh();
        const code = inv.schema.code;
        await sql`insert into kysely_migration (name, timestamp) values ('9999-from-the-future', '2031-01-01T00:00:00.000Z')`.execute(inv.kysely);
        const opening = KyselyInventory.open(location, { clock: time.clock });
        await expect(opening).rejects.toMatchObject({ code: 'INVENTORY_SCHEMA_MISMATCH', details: { databaseVersion: code + 1, databaseMigration: '9999-from-the-future', codeVersion: code } });
        await expect(opening).rejects.toThrow(new RegExp(`version ${code + 1} .*newer than this controller's version ${code}`));
      });

      it('migrates an older database unless told not to or other controllers live on it', async () => {
        const { inv, location } = await fresh();
        const names = migrationNames(inv.dialect);
        await inv.close();
        opened.splice(opened.indexOf(inv), 1);
        // Roll the database back to the schema before the last migration (its `down`), with a live controller on it.
        const { connect } = await import('./connect.ts');
        const handle = await connect(location);
        const last = names[names.length - 1] as string;
        const rollBack = ROLLBACKS[last];
        if (!rollBack) throw new Error(`the contract knows no rollback of migration ${last}: add one to ROLLBACKS`);
        await rollBack(handle.db as unknown as Kysely<unknown>, handle.dialect.name);
        await sql`delete from kysely_migration where name = ${last}`.execute(handle.db);
        await handle.db.insertInto('controllers').values({ id: 'old-ctl', url: null, started_at: 't', heartbeat_at: time.now, lease_expires_at: time.now + 10_000 }).execute();
        await handle.close();
        const older = { databaseVersion: names.length - 1, codeVersion: names.length };
        await expect(KyselyInventory.open(location, { clock: time.clock, migrate: 'never' })).rejects.toMatchObject({ code: 'INVENTORY_SCHEMA_MISMATCH', details: older });
        await expect(KyselyInventory.open(location, { clock: time.clock, migrate: 'unless-live' })).rejects.toMatchObject({ code: 'INVENTORY_SCHEMA_MISMATCH', details: { ...older, liveControllers: ['old-ctl'] } });
        time.advance(10_000);
        const upgraded = await KyselyInventory.open(location, { clock: time.clock, migrate: 'unless-live' });
        opened.push(upgraded);
        expect(upgraded.schema.database).toBe(names.length);
        expect(await upgraded.leases.cancelRequested('old-ctl')).toEqual([]);
        expect(await upgraded.hosts.listHosts()).toEqual([]);
        expect(await upgraded.fabric.listTemplates()).toEqual([]);
        expect(await upgraded.migrationControl.listPolicies()).toEqual([]);
      });

      it('refuses to migrate an empty database when told not to', async () => {
        const location = await target.freshLocation();
        await expect(KyselyInventory.open(location, { migrate: 'never' })).rejects.toMatchObject({ code: 'INVENTORY_SCHEMA_MISMATCH', details: { databaseVersion: 0, databaseMigration: null } });
      });
    });

    describe('export and import', () => {
      it('round-trips every durable table into an empty inventory and refuses a non-empty one', async () => {
        const { inv } = await fresh();
        const vm = vmRecord('a');
        await inv.insertVm(vm);
        await inv.updateVm(vm.id, { state: 'starting' });
        for (let i = 0; i < 3; i++) await inv.insertTask(taskRecord({ targetName: `t${i}` }));
        await inv.insertCheckpoint(checkpointRecord('c'));
        await inv.storage.insertDatastore({ id: 'dst-1', name: 'ds', hosts: [{ hostId: 'h1', path: '/ds' }], createdAt: 't' });
        await inv.storage.insertDisk(diskRecord('d', 'ds'));
        await inv.storage.insertCopyJob(copyJob());
        await inv.storage.insertPool(pool('p'));
        await inv.pins.add('pool:p', ['/ds/d.qcow2'], null);
        await inv.tokens.ensure('home', 'h'.repeat(43));
        await inv.hosts.insertHost({ id: 'h-1', name: 'lab1', url: 'http://x', state: 'ready', stateReason: null, epoch: 3, token: null, protocolVersion: 1, capabilities: [], facts: null, lastSeenAt: null, leaseExpiresAt: null, createdAt: 't', updatedAt: 't' });
        const template = templateRecord('tpl');
        await inv.fabric.insertTemplate(template);
        await inv.fabric.insertMember(poolMember(template.id, 'h-1'));
        await inv.controllers.register('ctl', null, 1000);
        await inv.migrationControl.putPolicy('fleet', { maxOutgoing: 2 });
        const exported = await exportInventory(inv);
        expect(Object.keys(exported.tables).sort()).toEqual([...EXPORTED_TABLES].sort());
        const target2 = await KyselyInventory.open(await target.freshLocation(), { clock: time.clock });
        opened.push(target2);
        const counts = await importInventory(target2, JSON.parse(JSON.stringify(exported)));
        expect(counts).toMatchObject({ vms: 1, tasks: 3, api_tokens: 1 });
        expect((await exportInventory(target2)).tables).toEqual(exported.tables);
        expect(await target2.getVm(vm.id)).toEqual(await inv.getVm(vm.id));
        expect(await target2.listTasks()).toEqual(await inv.listTasks());
        expect(await target2.tokens.verify('h'.repeat(43))).toBeDefined();
        expect(await target2.fabric.findTemplate('tpl')).toEqual(await inv.fabric.findTemplate('tpl'));
        expect(await target2.fabric.listMembers()).toEqual(await inv.fabric.listMembers());
        expect(await target2.migrationControl.listPolicies()).toEqual(await inv.migrationControl.listPolicies());
        // New rows continue after the imported ones.
        const next = taskRecord();
        await target2.insertTask(next);
        expect((await target2.listTasks())[0]?.id).toBe(next.id);
        await expect(importInventory(target2, exported)).rejects.toMatchObject({ code: 'INVENTORY_IMPORT_REFUSED' });
        await expect(importInventory(target2, { format: 'other' })).rejects.toMatchObject({ code: 'INVENTORY_IMPORT_REFUSED' });
        expect([...EXPORTED_TABLES, ...TRANSIENT_TABLES].sort()).toEqual([...TABLES].sort());
      });

      it('refuses rows with unknown columns before writing anything', async () => {
        const { inv } = await fresh();
        const exported = await exportInventory(inv);
        exported.tables.vms = [{ id: 'x', bogus: 1 }];
        await expect(importInventory(inv, exported)).rejects.toMatchObject({ code: 'INVENTORY_IMPORT_REFUSED', details: { table: 'vms', column: 'bogus' } });
        expect(await inv.listVms()).toEqual([]);
      });
    });
  });
}
