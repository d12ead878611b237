// Fleets of fake agents for the fast orchestration tests
// (tests/*orchestration.test.ts): a real SQLite inventory in a folder of its
// own under /tmp, the controller's own host in process (a FakeAgent, which
// passes the same contract as the real agent) and, with two hosts, a second
// FakeAgent served over HTTP on loopback and registered as host `b`; the real
// Fleet and VmEngine over them. What a test builds over the engine (a fabric,
// a storage service) it hands to `own()`; `close()` closes that, then the
// engines, the fleet, the HTTP server, the inventory, and removes the folder.
// `closedAfterEach()` runs a describe's closers after each of its tests;
// `holdAt(phase)` is a fault hook that holds an operation at one fault point.
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { afterEach, expect } from 'vitest';
import { silentLogger } from '../src/common/index.ts';
import { FakeAgent, agentHttpApp } from '../src/protocol/index.ts';
import { KyselyInventory } from '../src/store/index.ts';
import type { HostRecord, VmEngineOptions, VmRecord } from '../src/vm/index.ts';
import { Fleet, VmEngine } from '../src/vm/index.ts';

/** The token host b's agent answers to. */
const TOKEN = 'f'.repeat(43);

/** An agent served over HTTP on 127.0.0.1. */
export interface ServedAgent {
  url: string;
  port: number;
  /** Stops answering: the server closes and drops every connection (nothing when already closed). */
  close(): Promise<void>;
  /** Answers again on the same port. */
  reopen(): Promise<void>;
}

/** Serves `agent` over HTTP on loopback (on `port`, or one the system picks), answering to `token`. */
export async function serveAgent(agent: FakeAgent, token: string, port = 0): Promise<ServedAgent> {
  const app = agentHttpApp(agent.endpoint, { token });
  const server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: '127.0.0.1', port }, () => resolve(s as Server));
  });
  const bound = (server.address() as AddressInfo).port;
  let open = true;
  return {
    url: `http://127.0.0.1:${bound}`,
    port: bound,
    close: async () => {
      if (!open) return;
      open = false;
      // The fleet's long poll of the host's events would hold the server open for 10 s.
      const closing = new Promise<void>((r) => server.close(() => r()));
      server.closeAllConnections();
      await closing;
    },
    reopen: async () => {
      await new Promise<void>((r) => server.listen(bound, '127.0.0.1', () => r()));
      open = true;
    },
  };
}

export interface FakeFleetOptions {
  /** The start of the folder's name under /tmp (`/tmp/<prefix>-XXXXXX`). */
  prefix: string;
  /** How long a fake migration copies (ms); 0 by default. */
  migrateMs?: number;
  /** The fleet's heartbeat and lease (default 50 and 200 ms with one host, 100 and 2 000 ms with two). */
  heartbeatMs?: number;
  leaseMs?: number;
  /** Fault injection of the engine (VmEngineOptions.faults). */
  faults?: VmEngineOptions['faults'];
}

export interface FakeFleet {
  dir: string;
  inventory: KyselyInventory;
  fleet: Fleet;
  engine: VmEngine;
  /** The agent of the controller's own host (`fake` with one host, `a` with two). */
  local: FakeAgent;
  /** Closes `service` at close(), before the engines (the last owned first). */
  own<T extends { close(): Promise<void> }>(service: T): T;
  /** Another controller's engine over the same inventory and fleet, closed at close() after the first. */
  addEngine(options?: Partial<VmEngineOptions>): VmEngine;
  /** Creates and starts a VM (on `host` when given), waits for its task to succeed and returns its record. */
  running(name: string, host?: string): Promise<VmRecord>;
  close(): Promise<void>;
}

export interface TwoHostFakeFleet extends FakeFleet {
  /** Host b's agent, its HTTP server, and its record in the fleet. */
  remote: FakeAgent;
  served: ServedAgent;
  hostB: HostRecord;
}

async function build(options: FakeFleetOptions, local: FakeAgent, localName: string, timing: { heartbeatMs: number; leaseMs: number }, served?: ServedAgent) {
  const dir = mkdtempSync(`/tmp/${options.prefix}-`);
  const inventory = await KyselyInventory.open(`${dir}/inventory.sqlite`);
  const fleet = new Fleet({ inventory: inventory.hosts, vmsOn: async (id) => (await inventory.listVms()).filter((v) => v.hostId === id).length, local: { name: localName, endpoint: local.endpoint }, heartbeatMs: options.heartbeatMs ?? timing.heartbeatMs, leaseMs: options.leaseMs ?? timing.leaseMs });
  await fleet.start();
  const hostB = served ? await fleet.add({ name: 'b', url: served.url, token: TOKEN }) : undefined;
  const owned: Array<{ close(): Promise<void> }> = [];
  const engines: VmEngine[] = [];
  const addEngine = (more: Partial<VmEngineOptions> = {}) => {
    const engine = new VmEngine({ inventory, fleet, logger: silentLogger, ...more });
    engines.push(engine);
    return engine;
  };
  const engine = addEngine(options.faults ? { faults: options.faults } : {});
  const fake: FakeFleet = {
    dir,
    inventory,
    fleet,
    engine,
    local,
    own: (service) => {
      owned.unshift(service);
      return service;
    },
    addEngine,
    running: async (name, host) => {
      const { task } = await engine.create({ name, start: true, ...(host ? { host } : {}) });
      const done = await engine.tasks.wait(task?.id as string);
      expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
      return engine.resolve(name);
    },
    close: async () => {
      for (const service of owned) await service.close();
      for (const e of engines) await e.close();
      await fleet.close();
      await served?.close();
      await inventory.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return { fake, hostB };
}

/** One host, `fake` (its agent's host id `fake-host`), in process. */
export async function oneHostFleet(options: FakeFleetOptions): Promise<FakeFleet> {
  const local = new FakeAgent({ hostId: 'fake-host', migrateMs: options.migrateMs ?? 0 });
  return (await build(options, local, 'fake', { heartbeatMs: 50, leaseMs: 200 })).fake;
}

/** Hosts `a` (in process) and `b` (over HTTP), whose management addresses are `<subnet>.1` and `<subnet>.2`. */
export async function twoHostFleet(options: FakeFleetOptions & { subnet: string }): Promise<TwoHostFakeFleet> {
  const local = new FakeAgent({ hostId: 'fake-a', managementAddress: `${options.subnet}.1`, migrateMs: options.migrateMs ?? 0 });
  const remote = new FakeAgent({ hostId: 'fake-b', managementAddress: `${options.subnet}.2`, migrateMs: options.migrateMs ?? 0 });
  const served = await serveAgent(remote, TOKEN);
  const { fake, hostB } = await build(options, local, 'a', { heartbeatMs: 100, leaseMs: 2_000 }, served);
  return { ...fake, remote, served, hostB: hostB as HostRecord };
}

/** In the calling describe: closers a test adds (push, or unshift to run first) are run after each test, in order. */
export function closedAfterEach(): Array<() => Promise<void>> {
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
  });
  return closers;
}

/** A fault point that holds the first time `phase` is reached, until released. */
export function holdAt(phase: string) {
  let reached!: () => void;
  let release!: () => void;
  const atPhase = new Promise<void>((r) => (reached = r));
  const gate = new Promise<void>((r) => (release = r));
  let held = false;
  const faults = async (point: string) => {
    if (point !== phase || held) return;
    held = true;
    reached();
    await gate;
  };
  return { faults, atPhase, release };
}
