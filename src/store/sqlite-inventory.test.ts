import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TaskRecord, VmRecord } from '../vm/index.ts';
import { SqliteInventory } from './sqlite-inventory.ts';

function vm(id: string, name: string): VmRecord {
  const now = new Date().toISOString();
  return {
    id,
    name,
    state: 'created',
    stateReason: null,
    spec: { vcpus: 1, memoryMiB: 256, boot: { kind: 'disk' }, disks: [], nics: [], defaultGuest: false },
    runtime: null,
    createdAt: now,
    updatedAt: now,
  };
}

describe('SqliteInventory (real SQLite file)', () => {
  let dir: string;
  let path: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'offshoot-inv-'));
    path = join(dir, 'inventory.sqlite');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('stores, updates and survives a reopen (migrations run once)', async () => {
    const inv = await SqliteInventory.open(path);
    await inv.insertVm(vm('11111111-1111-1111-1111-111111111111', 'a'));
    const updated = await inv.updateVm('11111111-1111-1111-1111-111111111111', { state: 'starting', runtime: { hostId: 'h', pid: 42, accel: 'tcg', dir: '/x', instance: 'a', memory: { mode: 'owned', file: '/m', templateId: null }, startedAt: 'now' } });
    expect(updated.state).toBe('starting');
    expect(updated.runtime?.pid).toBe(42);
    await inv.close();
    const again = await SqliteInventory.open(path);
    const found = await again.findVmByName('a');
    expect(found?.runtime?.pid).toBe(42);
    expect(await again.listVms()).toHaveLength(1);
    await again.close();
  });

  it('refuses a duplicate name with ALREADY_EXISTS', async () => {
    const inv = await SqliteInventory.open(path);
    await inv.insertVm(vm('11111111-1111-1111-1111-111111111111', 'a'));
    await expect(inv.insertVm(vm('22222222-2222-2222-2222-222222222222', 'a'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await inv.close();
  });

  it('keeps tasks newest first with JSON result and error', async () => {
    const inv = await SqliteInventory.open(path);
    const base: TaskRecord = { id: 't1', kind: 'vm.start', targetId: 'v', targetName: 'a', state: 'running', progress: 0, message: '', result: null, error: null, createdAt: 'x', updatedAt: 'x' };
    await inv.insertTask(base);
    await inv.insertTask({ ...base, id: 't2' });
    await inv.updateTask('t1', { state: 'failed', error: { code: 'X', message: 'boom', details: { a: 1 } } });
    const tasks = await inv.listTasks();
    expect(tasks.map((t) => t.id)).toEqual(['t2', 't1']);
    expect(tasks[1]?.error).toEqual({ code: 'X', message: 'boom', details: { a: 1 } });
    await expect(inv.updateTask('nope', { progress: 1 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await inv.close();
  });
});
