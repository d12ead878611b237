// The PostgreSQL server going away and coming back, on a cluster of this
// test's own (so stopping it disturbs no other suite): calls fail with
// INVENTORY_UNAVAILABLE (503), a query cut off mid-way too, and the same
// inventory object and event bus work again once the server is back, with
// no reopen.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { toOffshootError } from '../common/index.ts';
import { vmRecord } from './inventory-contract.ts';
import { KyselyInventory } from './inventory.ts';
import type { InventoryEventBus } from './inventory.ts';
import { startPgCluster } from './pg-test-cluster.ts';
import type { PgCluster } from './pg-test-cluster.ts';

describe('PostgreSQL outage', () => {
  let cluster: PgCluster;
  let url: string;
  beforeAll(async () => {
    cluster = await startPgCluster({ settings: { fsync: 'off' } });
    url = await cluster.createDatabase('offshoot_outage');
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('fails calls with INVENTORY_UNAVAILABLE while the server is down and recovers by itself', async () => {
    const a = await KyselyInventory.open(url);
    const b = await KyselyInventory.open(url);
    let busA: InventoryEventBus<{ n: number }> | undefined;
    let busB: InventoryEventBus<{ n: number }> | undefined;
    try {
      busA = await a.openEventBus<{ n: number }>('ctl-a');
      busB = await b.openEventBus<{ n: number }>('ctl-b');
      const got: number[] = [];
      busB.subscribe((e) => got.push(e.n));
      let reconnects = 0;
      busB.onReconnect(() => reconnects++);
      await a.insertVm(vmRecord('before'));

      // A query running when the server stops is cut off.
      const cutOff = a.kysely.selectNoFrom((eb) => eb.fn<number>('pg_sleep', [eb.val(5)]).as('x')).execute();
      const cutOffResult = cutOff.catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 200));
      await cluster.pause();
      expect(await cutOffResult).toMatchObject({ code: 'INVENTORY_UNAVAILABLE', status: 503 });

      const down = await a.listVms().catch((e: unknown) => e);
      expect(down).toMatchObject({ code: 'INVENTORY_UNAVAILABLE', status: 503, details: { dialect: 'postgres' } });
      // The API maps it as it is, not to INTERNAL.
      expect(toOffshootError(down)).toMatchObject({ code: 'INVENTORY_UNAVAILABLE', status: 503 });
      await expect(a.insertVm(vmRecord('during'))).rejects.toMatchObject({ code: 'INVENTORY_UNAVAILABLE' });
      await expect(a.claims.acquire('vm1', 'ctl-a', 'fork', 1000)).rejects.toMatchObject({ code: 'INVENTORY_UNAVAILABLE' });
      await expect(busA.publish({ n: 0 })).rejects.toMatchObject({ code: 'INVENTORY_UNAVAILABLE' });
      await expect(KyselyInventory.open(url)).rejects.toMatchObject({ code: 'INVENTORY_UNAVAILABLE' });

      await cluster.resume();
      // Same objects, no reopen: the pool makes new connections.
      await vi.waitFor(async () => expect((await a.listVms()).map((v) => v.name)).toEqual(['before']), { timeout: 10_000, interval: 100 });
      await a.insertVm(vmRecord('after'));
      expect((await b.listVms()).map((v) => v.name).sort()).toEqual(['after', 'before']);
      // The event bus listens again and says it missed events meanwhile.
      await vi.waitFor(() => expect(busB?.listening && reconnects).toBe(1), { timeout: 15_000, interval: 100 });
      await busA.publish({ n: 1 });
      await vi.waitFor(() => expect(got).toEqual([1]), { timeout: 5_000, interval: 20 });
    } finally {
      await busA?.close();
      await busB?.close();
      await a.close();
      await b.close();
    }
  });
});
