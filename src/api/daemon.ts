// `offshoot serve`: wires the inventory (the home's SQLite file, or the
// database given by --database / OFFSHOOT_DATABASE_URL), the local host agent,
// the VM engine and the HTTP server; recovers from a previous daemon
// (re-adopting running VMs, reaping orphans); registers as a controller of the
// inventory; writes its address for the CLI; and on SIGTERM or SIGINT shuts
// down leaving every VM running for the next daemon.
// Over a PostgreSQL inventory it is one controller of a fleet: its id is
// stable for its home (a restarted daemon recovers its own tasks at once),
// its events reach every controller (LISTEN/NOTIFY), hosts are monitored by
// one controller each, and tasks, claims and its own registration carry a
// lease (30 s, or OFFSHOOT_LEASE_MS) after which another controller takes
// over what it ran.
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { serve } from '@hono/node-server';
import pino from 'pino';
import { InvalidInputError, homePaths, writeFileAtomic } from '../common/index.ts';
import type { DaemonFile, HomePaths, Logger } from '../common/index.ts';
import type { LocalHostAgent } from '../agent/index.ts';
import { KyselyInventory, inventoryLocation } from '../store/index.ts';
import { DEFAULT_LEASE_MS, FabricService, Fleet, StorageService, VmEngine } from '../vm/index.ts';
import type { EngineEvent } from '../vm/index.ts';
import { buildApp } from './app.ts';
import { DaemonMetrics, buildMetricsApp } from './metrics.ts';
import { loadOrCreateToken } from './auth.ts';
import { acquireHomeLock } from './home-lock.ts';
import { faultsFromEnvironment } from './test-faults.ts';
import { upgradeLegacyRecords } from './legacy-records.ts';
import { localHostName, startLocalHost } from './local-host.ts';
import type { LocalHostStack } from './local-host.ts';

export interface DaemonOptions {
  home: string;
  /** The inventory: a postgres:// URL or a SQLite file; default OFFSHOOT_DATABASE_URL, else the home's inventory.sqlite. */
  database?: string;
  /** HOST:PORT; default 127.0.0.1:0 (a free port, written to daemon.json). */
  listen?: string;
  logger?: Logger;
  memoryDir?: string;
  /** Fault injection for tests. */
  faults?: (point: string) => Promise<void> | void;
  /** Copy job settings; default from OFFSHOOT_COPY_CHUNK_MIB and OFFSHOOT_COPY_MAX_MIBPS. */
  copy?: { chunkMiB?: number; maxMiBPerSecond?: number };
  /** HOST:PORT of a second listener serving only GET /metrics (behind the same token). */
  metricsListen?: string;
  /** The built web console (default dist/console of this checkout). */
  consoleDir?: string;
  /** Folders whose files VMs may use as they are, besides the home and the datastores (see agent/path-policy.ts). */
  allowImages?: string[];
  /** The nice value of this machine's guests' vCPU threads (default OFFSHOOT_VCPU_NICE, else 5; 0: unchanged; qemu/vcpu-priority.ts). */
  vcpuNice?: number;
  /** The daemon owns its process (`offshoot serve`): log unhandled rejections and uncaught exceptions instead of dying. */
  guardProcess?: boolean;
  /** Drive registered hosts only: no QEMU runs in this process (several controllers on one machine, a fleet's control plane). */
  noLocalHost?: boolean;
  /** The name of this machine's host in the fleet (default OFFSHOOT_HOST_NAME, else its hostname). */
  hostName?: string;
  /** Heartbeat period and lease of hosts (tests shorten them). */
  hostHeartbeatMs?: number;
  hostLeaseMs?: number;
  /** Lease of this controller, its tasks and claims (default OFFSHOOT_LEASE_MS, else 30 s): how soon another controller takes over after it died. */
  leaseMs?: number;
}

/**
 * A daemon runs VMs that outlive it, but a crash still interrupts every operation in flight and every
 * lazy restore stream: an unexpected rejection or exception is logged with its stack and the daemon goes
 * on (the operation that lost it fails or times out by itself). Returns the uninstaller.
 */
export function guardProcess(logger: Logger): () => void {
  const onRejection = (reason: unknown) => logger.error({ err: reason }, 'unhandled promise rejection (the daemon keeps running)');
  const onException = (err: Error) => logger.error({ err }, 'uncaught exception (the daemon keeps running)');
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return () => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  };
}

function copySettingsFromEnvironment(env: NodeJS.ProcessEnv): { chunkMiB?: number; maxMiBPerSecond?: number } {
  const num = (name: string) => {
    const value = env[name];
    if (value === undefined || value === '') return undefined;
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidInputError(`${name} must be a positive number, got "${value}"`, { [name]: value });
    return n;
  };
  return { chunkMiB: num('OFFSHOOT_COPY_CHUNK_MIB'), maxMiBPerSecond: num('OFFSHOOT_COPY_MAX_MIBPS') };
}

/** The lease of a controller, its tasks and claims: the option, else OFFSHOOT_LEASE_MS, else 30 s. */
function leaseFrom(option: number | undefined, env: NodeJS.ProcessEnv): number {
  if (option !== undefined) return option;
  const value = env.OFFSHOOT_LEASE_MS;
  if (value === undefined || value === '') return DEFAULT_LEASE_MS;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 300) throw new InvalidInputError(`OFFSHOOT_LEASE_MS must be a whole number of milliseconds of at least 300, got "${value}"`, { OFFSHOOT_LEASE_MS: value });
  return n;
}

/** A controller's id: this machine and its home, so the daemon of a home keeps its id across restarts. */
export function controllerIdOf(home: string, machine = hostname()): string {
  return `${machine.split('.')[0] ?? 'controller'}-${createHash('sha256').update(home).digest('hex').slice(0, 12)}`;
}

/** The log file; a full disk loses log lines instead of raising errors nobody can act on. */
function logDestination(path: string): ReturnType<typeof pino.destination> {
  const destination = pino.destination({ dest: path, sync: false, mkdir: true });
  destination.on('error', () => undefined);
  return destination;
}

export interface RunningDaemon {
  url: string;
  /** The --metrics-listen listener's URL, when asked for. */
  metricsUrl?: string;
  token: string;
  engine: VmEngine;
  storage: StorageService;
  fabric: FabricService;
  fleet: Fleet;
  /** This machine's own host agent (absent with noLocalHost). */
  agent: LocalHostAgent | undefined;
  close(): Promise<void>;
}

export function parseListen(listen: string, flag = '--listen'): { host: string; port: number } {
  const match = /^(.*):(\d{1,5})$/.exec(listen);
  const port = Number(match?.[2]);
  if (!match || !match[1] || port > 65535) throw new InvalidInputError(`invalid ${flag} "${listen}": use HOST:PORT, e.g. 127.0.0.1:7070`, { listen });
  return { host: match[1].replace(/^\[(.*)\]$/, '$1'), port };
}

export async function startDaemon(options: DaemonOptions): Promise<RunningDaemon> {
  // Everything the daemon and its children (QEMU, qemu-img, copy workers) create is private to its owner:
  // files 0600, folders 0700 (what QEMU must reach is shared with it explicitly, see agent/qemu-access.ts).
  process.umask(0o077);
  const paths = homePaths(options.home);
  await mkdir(paths.home, { recursive: true, mode: 0o700 });
  const releaseLock = await acquireHomeLock(paths.home);
  try {
    return await startLocked(options, paths, releaseLock);
  } catch (err) {
    await releaseLock();
    throw err;
  }
}

async function startLocked(options: DaemonOptions, paths: HomePaths, releaseLock: () => Promise<void>): Promise<RunningDaemon> {
  const logger = options.logger ?? pino({ level: process.env.OFFSHOOT_LOG_LEVEL ?? 'info' }, logDestination(paths.log));
  const unguard = options.guardProcess ? guardProcess(logger) : () => undefined;
  const { host, port } = parseListen(options.listen ?? '127.0.0.1:0');
  const metricsAt = options.metricsListen ? parseListen(options.metricsListen, '--metrics-listen') : undefined;
  const token = await loadOrCreateToken(paths.token);
  const inventory = await KyselyInventory.open(inventoryLocation(paths.home, options.database), { logger });
  logger.info({ inventory: inventory.location, schema: inventory.schema.code }, 'inventory open');
  try {
    // The home's token is valid on every controller of this inventory.
    await inventory.tokens.ensure(`token file ${hostname()}:${paths.token}`, token);
  } catch (err) {
    await inventory.close();
    throw err;
  }
  const leaseMs = leaseFrom(options.leaseMs, process.env);
  const controllerId = controllerIdOf(paths.home);
  const faults = options.faults ?? faultsFromEnvironment(process.env.OFFSHOOT_TEST_FAULTS);
  if (faults && !options.faults) logger.warn({ faults: process.env.OFFSHOOT_TEST_FAULTS }, 'OFFSHOOT_TEST_FAULTS is set: faults will be injected');
  let local: LocalHostStack | undefined;
  let fleet: Fleet | undefined;
  try {
    if (!options.noLocalHost) local = await startLocalHost({ home: paths.home, memoryDir: options.memoryDir, allowImages: options.allowImages, vcpuNice: options.vcpuNice, logger });
    fleet = new Fleet({
      inventory: inventory.hosts,
      logger,
      monitor: { owner: controllerId, claims: inventory.claims },
      vmsOn: async (hostId) => (await inventory.listVms()).filter((vm) => vm.hostId === hostId).length,
      ...(local ? { local: { name: options.hostName ?? localHostName(process.env, hostname()), endpoint: local.service.endpoint } } : {}),
      ...(options.hostHeartbeatMs ? { heartbeatMs: options.hostHeartbeatMs } : {}),
      ...(options.hostLeaseMs ? { leaseMs: options.hostLeaseMs } : {}),
    });
    await fleet.start();
    // Records written before hosts (no host, host paths instead of references) become this host's.
    if (local && fleet.localHostId) await upgradeLegacyRecords({ inventory, storageInventory: inventory.storage, hostId: fleet.localHostId, service: local.service, logger });
  } catch (err) {
    await fleet?.close();
    await local?.close();
    await inventory.close();
    throw err;
  }
  let bus;
  try {
    bus = await inventory.openEventBus<EngineEvent>(controllerId);
  } catch (err) {
    await fleet.close();
    await local?.close();
    await inventory.close();
    throw err;
  }
  const contentIdsOf = async (files: string[]) => Object.fromEntries((await inventory.storage.listDisks()).filter((d) => files.includes(d.file)).map((d) => [d.file, d.contentId]));
  const engine = new VmEngine({ inventory, fleet, logger, faults, contentIdsOf, coordination: { controllerId, leaseMs, bus } });
  // Before recovery, so the tasks it fails are counted.
  const metrics = new DaemonMetrics({ engine });
  const storage = new StorageService({ inventory, storageInventory: inventory.storage, engine, logger, copy: options.copy ?? copySettingsFromEnvironment(process.env), faults });
  const fabric = new FabricService({ inventory, fabric: inventory.fabric, engine, logger, faults, jobs: storage.jobs });
  const closeServices = async () => {
    metrics.close();
    await fabric.close();
    await storage.close();
    await engine.close();
    await fleet?.close();
    await local?.close();
    await inventory.close();
  };
  const servers: Server[] = [];
  try {
    // Pins first, so the engine's garbage collection during recovery keeps what pools and copy jobs read.
    await storage.pinSources();
    await storage.ensureDefaultDatastores();
    await engine.recover();
    await fabric.start();
    const resumed = await storage.resumeJobs();
    if (resumed.length) logger.info({ jobs: resumed }, 'copy jobs resumed');
    servers.push(await listen(buildApp({ engine, storage, fabric, fleet, localHostInfo: local ? () => local.host.hostInfo() : undefined, token, verifyToken: async (t) => (await inventory.tokens.verify(t)) !== undefined, logger, metrics, consoleDir: options.consoleDir }).fetch, host, port));
    if (metricsAt) servers.push(await listen(buildMetricsApp(metrics, token).fetch, metricsAt.host, metricsAt.port));
  } catch (err) {
    await Promise.all(servers.map(closeServer));
    await closeServices();
    throw err;
  }
  const [server, metricsServer] = servers as [Server, Server | undefined];
  const url = urlOf(server);
  const metricsUrl = metricsServer ? urlOf(metricsServer) : undefined;
  const controller = await inventory.controllers.keepAlive(controllerId, url, leaseMs, { logger });
  const daemon: DaemonFile = { url, pid: process.pid, startedAt: new Date().toISOString() };
  await writeFileAtomic(paths.daemonFile, `${JSON.stringify(daemon, null, 2)}\n`);
  logger.info({ url, metricsUrl, home: paths.home }, 'offshoot daemon listening');
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      await Promise.all(servers.map(closeServer));
      await controller.stop();
      await closeServices();
      const current = await readFile(paths.daemonFile, 'utf8').catch(() => '');
      if (current.includes(`"pid": ${process.pid}`)) await rm(paths.daemonFile, { force: true });
      await releaseLock();
      logger.info('offshoot daemon stopped; VMs keep running');
      unguard();
    })();
    return closing;
  };
  return { url, metricsUrl, token, engine, storage, fabric, fleet, agent: local?.host, close };
}

type Server = ReturnType<typeof serve>;

function listen(fetch: (request: Request) => Response | Promise<Response>, host: string, port: number): Promise<Server> {
  return new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch, hostname: host, port }, () => resolve(s));
    s.once('error', reject);
  });
}

function urlOf(server: Server): string {
  const address = server.address() as AddressInfo;
  return `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
}

async function closeServer(server: Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
  await closed;
}
