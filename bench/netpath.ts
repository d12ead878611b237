// Per-operation data path benchmark (`npm run bench -- netpath`), between two
// bare network namespaces joined by a veth (two "hosts"), all in one run:
// - TCP throughput, one stream of --mib MiB (Node processes entered into the
//   namespaces), over the path's VXLAN link against over the management veth;
// - the time to set up and to tear down a path (both ends, as two agents
//   would, concurrently) with openDataPath/closeDataPath against the bare
//   iproute2 commands for the same link (no checks, no alias, no key);
// - QEMU migration throughput of a paused guest whose RAM (--ram-mib) is
//   random data, over the path, TLS-PSK against plain TCP (issue 12's "TLS
//   costs < 20 % of throughput"), with --multifd N memory channels (1:
//   no multifd; QEMU 7.2 cannot combine multifd with post-copy). --no-qemu
//   skips it.
// Options: --runs N (5), --mib N (512), --ram-mib N (256), --multifd N (1), --no-qemu.
import { randomBytes, randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { qemuVersion } from '../src/qemu/index.ts';
import { closeDataPath, newPskKey, openDataPath, planDataPath, runIp } from '../src/net/index.ts';
import type { DataPathEnd, DataPathPlan } from '../src/net/index.ts';
import { makeHostPair } from '../src/net/testing/namespaces.ts';
import type { HostPair } from '../src/net/testing/namespaces.ts';
import { migrateOverPath, startNamespacedGuest } from '../src/net/testing/psk-migration.ts';
import { tcpTransfer } from '../src/net/testing/tcp.ts';
import { option } from './tools.ts';
import type { BenchResult, Comparison } from './report.ts';

const GB = 1e9;

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** The same link with bare iproute2: add, address, up (both ends at once); then delete. */
async function rawPath(hosts: HostPair, plan: DataPathPlan): Promise<{ setupMs: number; teardownMs: number }> {
  const end = async (namespace: string, local: string, remote: string, address: string) => {
    await runIp(['link', 'add', plan.linkName, 'type', 'vxlan', 'id', String(plan.vni), 'local', local, 'remote', remote, 'dstport', '4789', 'dev', 'mgmt0'], { namespace });
    await runIp(['addr', 'add', `${address}/31`, 'dev', plan.linkName], { namespace });
    await runIp(['link', 'set', plan.linkName, 'up'], { namespace });
  };
  const setupMs = await timed(() => Promise.all([end(hosts.a.namespace, hosts.a.address, hosts.b.address, plan.client.address), end(hosts.b.namespace, hosts.b.address, hosts.a.address, plan.server.address)]));
  const teardownMs = await timed(() => Promise.all([hosts.a, hosts.b].map((h) => runIp(['link', 'del', plan.linkName], { namespace: h.namespace }))));
  return { setupMs, teardownMs };
}

export async function netpathBenchmark(args: string[]): Promise<BenchResult> {
  const runs = Number(option(args, '--runs', '5'));
  const mib = Number(option(args, '--mib', '512'));
  const ramMiB = Number(option(args, '--ram-mib', '256'));
  const multifdChannels = Number(option(args, '--multifd', '1'));
  const withQemu = !args.includes('--no-qemu');
  const startedAt = new Date().toISOString();
  const prefix = `ofb${randomBytes(2).toString('hex')}`;
  const hosts = await makeHostPair(prefix, `10.213.${240 + ((randomBytes(1)[0] as number) % 10)}.0/24`);
  const dir = mkdtempSync(`/tmp/${prefix}-`);
  const memoryDir = mkdtempSync(`/dev/shm/${prefix}-`);
  const keys = (side: 'a' | 'b') => ({ namespace: hosts[side].namespace, credentialsRoot: join(dir, `keys-${side}`) });
  const series = { vxlan: [] as number[], veth: [] as number[], setup: [] as number[], rawSetup: [] as number[], teardown: [] as number[], rawTeardown: [] as number[], tls: [] as number[], plain: [] as number[] };
  const notes: string[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const operationId = `bench-${i}`;
      const plan = planDataPath({ operationId, serverManagementAddress: hosts.b.address, clientManagementAddress: hosts.a.address });
      const key = newPskKey();
      let ends: [DataPathEnd, DataPathEnd] | undefined;
      series.setup.push(await timed(async () => {
        ends = (await Promise.all([openDataPath({ plan, role: 'server', pskKey: key, ...keys('b') }), openDataPath({ plan, role: 'client', pskKey: key, ...keys('a') })])) as [DataPathEnd, DataPathEnd];
      }));
      const [server] = ends as [DataPathEnd, DataPathEnd];
      // Alternate the order so neither path always runs on a warmer machine.
      const overPath = () => tcpTransfer({ server: { namespace: hosts.b.namespace, address: server.localAddress }, clientNamespace: hosts.a.namespace, port: 7500, bytes: mib * 2 ** 20 });
      const overVeth = () => tcpTransfer({ server: { namespace: hosts.b.namespace, address: hosts.b.address }, clientNamespace: hosts.a.namespace, port: 7501, bytes: mib * 2 ** 20 });
      const [first, second] = i % 2 === 0 ? [overPath, overVeth] : [overVeth, overPath];
      const r1 = await first();
      const r2 = await second();
      const [path, veth] = i % 2 === 0 ? [r1, r2] : [r2, r1];
      series.vxlan.push((path.bytes / (path.ms / 1000)) / GB);
      series.veth.push((veth.bytes / (veth.ms / 1000)) / GB);

      if (withQemu) {
        for (const tls of i % 2 === 0 ? [true, false] : [false, true]) {
          const source = await startNamespacedGuest({ namespace: hosts.a.namespace, dir, memoryDir, name: `src${i}${tls}`, memoryMiB: ramMiB, incoming: false, paused: true });
          const destination = await startNamespacedGuest({ namespace: hosts.b.namespace, dir, memoryDir, name: `dst${i}${tls}`, memoryMiB: ramMiB, incoming: true });
          try {
            // Random RAM: nothing for QEMU to skip as zero pages.
            const fd = openSync(source.ramFile, 'r+');
            const buf = Buffer.alloc(16 * 2 ** 20);
            for (let at = 0; at < ramMiB * 2 ** 20; at += buf.length) writeSync(fd, randomFillSync(buf), 0, buf.length, at);
            closeSync(fd);
            const result = await migrateOverPath({ source: { qmp: source.qmp, end: (ends as [DataPathEnd, DataPathEnd])[1] }, destination: { qmp: destination.qmp, end: server }, port: 49152, tls, timeoutMs: 300_000, multifdChannels });
            if (result.status !== 'completed') throw new Error(`migration failed: ${result.error}`);
            // QEMU's total-time, or the time seen when QEMU still said 0 (a throughput of Infinity otherwise).
            const ms = result.totalMs > 0 ? result.totalMs : result.wallMs;
            (tls ? series.tls : series.plain).push((result.transferredBytes / (ms / 1000)) / GB);
          } finally {
            await source.stop();
            await destination.stop();
            rmSync(source.ramFile, { force: true });
            rmSync(destination.ramFile, { force: true });
          }
        }
      }

      series.teardown.push(await timed(() => Promise.all([closeDataPath({ operationId, ...keys('a') }), closeDataPath({ operationId, ...keys('b') })])));
      const raw = await rawPath(hosts, plan);
      series.rawSetup.push(raw.setupMs);
      series.rawTeardown.push(raw.teardownMs);
    }
  } finally {
    await hosts.remove();
    rmSync(dir, { recursive: true, force: true });
    rmSync(memoryDir, { recursive: true, force: true });
  }
  const comparisons: Comparison[] = [
    { metric: `TCP, 1 stream, ${mib} MiB`, offshoot: { label: 'per-op VXLAN path', unit: 'GB/s', samples: series.vxlan }, baseline: { label: 'management veth', unit: 'GB/s', samples: series.veth } },
    { metric: 'path setup, both ends', offshoot: { label: 'openDataPath x2', unit: 'ms', samples: series.setup }, baseline: { label: 'bare ip commands', unit: 'ms', samples: series.rawSetup } },
    { metric: 'path teardown, both ends', offshoot: { label: 'closeDataPath x2', unit: 'ms', samples: series.teardown }, baseline: { label: 'bare ip link del', unit: 'ms', samples: series.rawTeardown } },
  ];
  if (withQemu) {
    comparisons.push({ metric: `QEMU migration, ${ramMiB} MiB random RAM${multifdChannels > 1 ? `, multifd ${multifdChannels} channels` : ''}`, offshoot: { label: 'TLS-PSK over the path', unit: 'GB/s', samples: series.tls }, baseline: { label: 'plain TCP over the path', unit: 'GB/s', samples: series.plain } });
    notes.push('migration throughput = ram.transferred / total-time of query-migrate; guest paused (-S), RAM filled with random data, TCG, max-bandwidth 4 GiB/s');
  }
  notes.push('both "hosts" are namespaces of this machine: the VXLAN encapsulation and the veth cost CPU only, no wire');
  return {
    name: 'netpath',
    startedAt,
    machine: { cpus: cpus().length, accel: 'tcg', qemu: await qemuVersion().catch(() => 'unknown'), node: process.version },
    parameters: { runs, mib, ramMiB, multifdChannels, withQemu },
    comparisons,
    notes,
  };
}
