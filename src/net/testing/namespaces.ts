// Test and bench helper: two bare network namespaces ("hosts") joined by a
// veth pair, each end named mgmt0 with a management address, loopback up.
// Also runs a program inside a namespace the way an agent runs: a child
// process entered into it with nsenter (only the network namespace changes).
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { resolve } from 'node:path';
import { runIp } from '../ip.ts';
import { addressAt, parseSubnet } from '../ipv4.ts';

export interface TestHost {
  namespace: string;
  address: string;
  device: string;
}

export interface HostPair {
  a: TestHost;
  b: TestHost;
  /** Deletes both namespaces (and with them the veth and anything made inside). */
  remove(): Promise<void>;
}

/** Makes `<prefix>-a` and `<prefix>-b`, joined by a veth, addresses .1 and .2 of `subnet` (a /24 or smaller). */
export async function makeHostPair(prefix: string, subnet: string): Promise<HostPair> {
  const net = parseSubnet(subnet);
  const a: TestHost = { namespace: `${prefix}-a`, address: addressAt(net, 1), device: 'mgmt0' };
  const b: TestHost = { namespace: `${prefix}-b`, address: addressAt(net, 2), device: 'mgmt0' };
  const remove = async () => {
    for (const h of [a, b]) await runIp(['netns', 'del', h.namespace]).catch(() => undefined);
  };
  try {
    for (const h of [a, b]) await runIp(['netns', 'add', h.namespace]);
    await runIp(['link', 'add', 'mgmt0', 'type', 'veth', 'peer', 'name', 'mgmt0', 'netns', b.namespace], { namespace: a.namespace });
    for (const h of [a, b]) {
      await runIp(['addr', 'add', `${h.address}/${net.prefixLength}`, 'dev', 'mgmt0'], { namespace: h.namespace });
      await runIp(['link', 'set', 'mgmt0', 'up'], { namespace: h.namespace });
      await runIp(['link', 'set', 'lo', 'up'], { namespace: h.namespace });
    }
  } catch (err) {
    await remove();
    throw err;
  }
  return { a, b, remove };
}

const TSX_LOADER = resolve(import.meta.dirname, '../../../node_modules/tsx/dist/esm/index.mjs');

/** Spawns `argv` inside a named namespace (nsenter --net), as the agent of that host would run. */
export function spawnInNamespace(namespace: string, argv: string[], options: SpawnOptions = {}): ChildProcess {
  return spawn('nsenter', [`--net=/run/netns/${namespace}`, '--', ...argv], options);
}

/** Runs a TypeScript file with node + tsx inside a namespace; resolves with its stdout (rejects with its stderr). */
export function runTsInNamespace(namespace: string, file: string, args: string[]): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile('nsenter', [`--net=/run/netns/${namespace}`, '--', process.execPath, '--import', TSX_LOADER, '--no-warnings', file, ...args], { maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${file} ${args[0] ?? ''} in ${namespace} failed: ${stderr || error.message}`));
      else resolvePromise(stdout);
    });
  });
}
