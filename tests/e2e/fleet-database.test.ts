// A home's SQLite inventory moved into PostgreSQL with the real CLI
// (`offshoot inventory export`, `import --database`), compared table by table,
// then a daemon started on that database (`database` option, as `serve
// --database` does) serving the same VMs with the home's token, registered as
// a controller; the database stopped under it (503 INVENTORY_UNAVAILABLE) and
// started again (it recovers by itself); and a daemon refused on a database
// whose schema is newer than its code. Uses a PostgreSQL cluster of its own,
// since it stops it.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import { KyselyInventory } from '../../src/store/index.ts';
import { postgresDialect } from '../../src/store/dialect.ts';
import { migrationNames } from '../../src/store/migrations.ts';
import { startPgCluster } from '../../src/store/pg-test-cluster.ts';
import type { PgCluster } from '../../src/store/pg-test-cluster.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, eventually, makeTestHome } from '../harness.ts';

/** The schema version this code expects (the number of its migrations), and their names. */
const MIGRATIONS = migrationNames(postgresDialect);
const CODE_VERSION = MIGRATIONS.length;

describe('fleet database: SQLite home to PostgreSQL', () => {
  let cluster: PgCluster;
  let t: TestHome;
  let daemon: RunningDaemon | undefined;
  beforeAll(async () => {
    cluster = await startPgCluster({ settings: { fsync: 'off' } });
    t = makeTestHome();
  });
  afterAll(async () => {
    if (daemon) await closeTestDaemon(daemon, t);
    else await t.cleanup();
    await cluster?.stop();
  });

  const call = async (method: string, path: string, body?: unknown) => {
    const d = daemon as RunningDaemon;
    const res = await fetch(`${d.url}${path}`, { method, headers: { authorization: `Bearer ${d.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> & { code?: string } };
  };

  it('exports the home, imports into PostgreSQL with nothing lost, and serves it from a daemon there', async () => {
    // A home used on one machine: a daemon on SQLite with a VM, then stopped.
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    const created = await call('POST', '/vms', { name: 'kept' });
    expect(created.status).toBe(201);
    const token = daemon.token;
    await daemon.close();
    daemon = undefined;
    const sqlite = await KyselyInventory.open(join(t.home, 'inventory.sqlite'));
    await sqlite.insertCheckpoint({ id: 'c1', name: 'big', vmId: 'v', vmName: 'kept', hostId: 'h1', file: 'home:checkpoints/big.ckpt', path: '/x/big.ckpt', state: 'complete', memoryBytes: 12 * 2 ** 30, fileBytes: 7 * 2 ** 32 + 5, spec: (await sqlite.findVmByName('kept'))!.spec, createdAt: new Date().toISOString() });
    await sqlite.close();

    const url = await cluster.createDatabase('offshoot_fleet');
    const exported = join(t.home, 'export.json');
    const out = await t.cli(['inventory', 'export', exported, '--json']);
    expect(out.code, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout)).toMatchObject({ from: { dialect: 'sqlite' }, rows: { vms: 1, checkpoints: 1, api_tokens: 1 } });
    const imported = await t.cli(['inventory', 'import', exported, '--database', url, '--json']);
    expect(imported.code, imported.stderr).toBe(0);
    expect(JSON.parse(imported.stdout)).toMatchObject({ into: { dialect: 'postgres' }, rows: { vms: 1, checkpoints: 1 } });
    const again = await t.cli(['inventory', 'import', exported, '--database', url]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('INVENTORY_IMPORT_REFUSED');
    const back = join(t.home, 'back.json');
    expect((await t.cli(['inventory', 'export', back, '--database', url])).code).toBe(0);
    const before = JSON.parse(readFileSync(exported, 'utf8')) as { tables: unknown };
    const after = JSON.parse(readFileSync(back, 'utf8')) as { tables: unknown; source: { dialect: string } };
    expect(after.source.dialect).toBe('postgres');
    expect(after.tables).toEqual(before.tables);
    const status = await t.cli(['inventory', 'status', '--database', url, '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({ dialect: 'postgres', schema: { database: CODE_VERSION, code: CODE_VERSION } });

    // A controller on PostgreSQL: the same VM, the home's token, registered in the inventory.
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir, database: url });
    expect(daemon.token).toBe(token);
    const list = await call('GET', '/vms');
    expect(list.status).toBe(200);
    expect((list.body as unknown as { id: string; name: string }[]).map((v) => [v.id, v.name])).toEqual([[(created.body.vm as { id: string }).id, 'kept']]);
    const inv = await KyselyInventory.open(url);
    try {
      expect((await inv.controllers.live()).map((c) => c.url)).toEqual([daemon.url]);
      expect(await inv.tokens.verify(token)).toBeDefined();
      // A token of the inventory (e.g. another controller's home) is accepted too; others are not.
      const other = await inv.tokens.create('other-home');
      const auth = async (bearer: string) => (await fetch(`${daemon?.url}/vms`, { headers: { authorization: `Bearer ${bearer}` } })).status;
      expect(await auth(other.token)).toBe(200);
      expect(await auth('x'.repeat(43))).toBe(401);
      await inv.tokens.revoke('other-home');
      expect(await auth(other.token)).toBe(401);
      expect((await inv.findCheckpoint('big'))?.fileBytes).toBe(7 * 2 ** 32 + 5);
    } finally {
      await inv.close();
    }

    // The database goes away: 503 with a stable code, then back without a restart.
    await cluster.pause();
    const down = await call('GET', '/vms');
    expect(down).toMatchObject({ status: 503, body: { code: 'INVENTORY_UNAVAILABLE' } });
    await cluster.resume();
    await eventually(async () => (await call('GET', '/vms')).status === 200, 10_000, 'the daemon to serve again');
    expect((await call('POST', '/vms', { name: 'after-outage' })).status).toBe(201);
  });

  it('refuses to start a controller on a database whose schema is newer, naming both versions', async () => {
    if (daemon) await daemon.close();
    daemon = undefined;
    const url = await cluster.createDatabase('offshoot_future');
    const inv = await KyselyInventory.open(url);
    await sql`insert into kysely_migration (name, timestamp) values ('0099-future', '2031-01-01T00:00:00.000Z')`.execute(inv.kysely);
    await inv.close();
    await expect(startDaemon({ home: t.home, memoryDir: t.memoryDir, database: url })).rejects.toMatchObject({ code: 'INVENTORY_SCHEMA_MISMATCH', details: { databaseVersion: CODE_VERSION + 1, codeVersion: CODE_VERSION } });
    const serve = await t.cli(['serve', '--database', url]);
    expect(serve.code).toBe(1);
    expect(serve.stderr).toMatch(/INVENTORY_SCHEMA_MISMATCH/);
    expect(serve.stderr).toMatch(new RegExp(`version ${CODE_VERSION + 1} \\(0099-future\\).*version ${CODE_VERSION} \\(${MIGRATIONS[CODE_VERSION - 1]}\\)`));
  });
});
