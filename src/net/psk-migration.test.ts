// A TLS-PSK-protected migration of a booted VM between two network
// namespaces over a per-operation data path, with real QEMU: the guest's RAM
// arrives intact (the two RAM files are equal byte for byte), the stream
// crossed the path's VXLAN link, the session's cipher is AES-128-GCM (psk.ts's
// TLS_PRIORITY; QEMU's default would give ChaCha20-Poly1305), a destination
// with another key refuses the source (which keeps running), and closing the
// path leaves no link or key.
//
// The guest is paused just before `migrate`: what this test checks is the
// path and TLS carrying every byte. Under TCG, QEMU 7.2's pre-copy of a
// guest that runs (here: still booting) missed 3-66 dirty pages in about
// 4 of 10 migrations, with and without TLS, with file-backed and anonymous
// RAM (compared with pmemsave), and never when the guest was paused first:
// QEMU's TCG dirty tracking, not the path. Migration tests that compare RAM
// under TCG will meet it.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, readSync, closeSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeDataPath, linkCounters, listDataPaths, newPskKey, openDataPath, planDataPath } from './index.ts';
import type { DataPathEnd } from './index.ts';
import { makeHostPair } from './testing/namespaces.ts';
import type { HostPair } from './testing/namespaces.ts';
import { migrateOverPath, startNamespacedGuest } from './testing/psk-migration.ts';
import type { NamespacedQemu } from './testing/psk-migration.ts';

const prefix = `ofm${randomBytes(2).toString('hex')}`;
const subnet = `10.213.${200 + ((randomBytes(1)[0] as number) % 50)}.0/24`;
const MEMORY_MIB = 128;

let hosts: HostPair;
let dir: string;
let memoryDir: string;
const qemus: NamespacedQemu[] = [];
const hostOf = (side: 'a' | 'b') => ({ namespace: hosts[side].namespace, credentialsRoot: join(dir, `keys-${side}`) });

/** How many 4 KiB pages of two equally long files differ (-1 if their sizes differ). */
function differingPages(a: string, b: string): number {
  if (statSync(a).size !== statSync(b).size) return -1;
  const [fa, fb] = [openSync(a, 'r'), openSync(b, 'r')];
  let pages = 0;
  try {
    const [ba, bb] = [Buffer.alloc(4 << 20), Buffer.alloc(4 << 20)];
    for (let at = 0; ; at += ba.length) {
      const n = readSync(fa, ba, 0, ba.length, at);
      if (n === 0) return pages;
      readSync(fb, bb, 0, bb.length, at);
      for (let p = 0; p < n; p += 4096) if (!ba.subarray(p, p + 4096).equals(bb.subarray(p, p + 4096))) pages++;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

async function openPath(operationId: string, keys: { server: string; client: string }): Promise<{ server: DataPathEnd; client: DataPathEnd }> {
  const plan = planDataPath({ operationId, serverManagementAddress: hosts.b.address, clientManagementAddress: hosts.a.address });
  const [server, client] = await Promise.all([openDataPath({ plan, role: 'server', pskKey: keys.server, ...hostOf('b') }), openDataPath({ plan, role: 'client', pskKey: keys.client, ...hostOf('a') })]);
  return { server, client };
}

beforeAll(async () => {
  hosts = await makeHostPair(prefix, subnet);
  dir = mkdtempSync(`/tmp/${prefix}-`);
  memoryDir = mkdtempSync(`/dev/shm/${prefix}-`);
});

afterAll(async () => {
  for (const q of qemus) await q.stop();
  await hosts?.remove();
  rmSync(dir, { recursive: true, force: true });
  rmSync(memoryDir, { recursive: true, force: true });
});

describe('TLS-PSK migration over a per-operation path', () => {
  it('moves a VM between namespaces with its RAM intact, over TLS on the VXLAN link', async () => {
    const key = newPskKey();
    const { server, client } = await openPath('mig-tls', { server: key, client: key });
    const source = await startNamespacedGuest({ namespace: hosts.a.namespace, dir, memoryDir, name: 'src', memoryMiB: MEMORY_MIB, incoming: false });
    qemus.push(source);
    const destination = await startNamespacedGuest({ namespace: hosts.b.namespace, dir, memoryDir, name: 'dst', memoryMiB: MEMORY_MIB, incoming: true, tlsDebug: true });
    qemus.push(destination);
    await new Promise((r) => setTimeout(r, 1500)); // the guest boots (and writes its RAM) meanwhile
    expect((await source.qmp.queryStatus()).status).toBe('running');
    await source.qmp.stop(); // see the header: TCG's dirty tracking, not the path, would make the RAM differ

    const before = await linkCounters(client.linkName, hostOf('a'));
    const result = await migrateOverPath({ source: { qmp: source.qmp, end: client }, destination: { qmp: destination.qmp, end: server }, port: 49152 });
    // 'completed' at the source means written to its socket; wait until the destination has read it all.
    const deadline = Date.now() + 30_000;
    while ((await destination.qmp.queryStatus()).status === 'inmigrate' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const after = await linkCounters(client.linkName, hostOf('a'));

    expect(result).toMatchObject({ status: 'completed', error: null });
    expect(result.transferredBytes).toBeGreaterThan(2 ** 20);
    // The destination (the TLS server) chose AES-128-GCM, not QEMU's default ChaCha20-Poly1305.
    expect(readFileSync(destination.logFile, 'utf8')).toMatch(/Selected cipher suite: GNUTLS_AES_128_GCM_SHA256/);
    // Every migrated byte (TLS adds to it) left through the path's link.
    expect(after.txBytes - before.txBytes).toBeGreaterThan(result.transferredBytes);
    expect((await destination.qmp.queryStatus()).status).toBe('paused');
    // Both frozen now: the destination's RAM is the source's, byte for byte.
    expect(differingPages(source.ramFile, destination.ramFile)).toBe(0);
    await destination.qmp.cont();
    expect((await destination.qmp.queryStatus()).status).toBe('running');

    for (const side of ['a', 'b'] as const) await closeDataPath({ operationId: 'mig-tls', ...hostOf(side) });
    for (const side of ['a', 'b'] as const) expect(await listDataPaths(hostOf(side))).toEqual({ links: [], credentials: [] });
  });

  it('refuses a source whose key differs, and the source keeps running', async () => {
    const { server, client } = await openPath('mig-badkey', { server: newPskKey(), client: newPskKey() });
    const source = await startNamespacedGuest({ namespace: hosts.a.namespace, dir, memoryDir, name: 'src2', memoryMiB: MEMORY_MIB, incoming: false });
    qemus.push(source);
    const destination = await startNamespacedGuest({ namespace: hosts.b.namespace, dir, memoryDir, name: 'dst2', memoryMiB: MEMORY_MIB, incoming: true });
    qemus.push(destination);

    const result = await migrateOverPath({ source: { qmp: source.qmp, end: client }, destination: { qmp: destination.qmp, end: server }, port: 49153, timeoutMs: 30_000 });
    expect(result.status).toBe('failed');
    expect(result.error).toMatch(/TLS|handshake|decrypt|Broken pipe|Connection reset|error/i);
    expect((await source.qmp.queryStatus()).status).toBe('running');
    for (const side of ['a', 'b'] as const) await closeDataPath({ operationId: 'mig-badkey', ...hostOf(side) });
  });
});
