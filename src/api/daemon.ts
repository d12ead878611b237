// `offshoot serve`: wires the inventory, the local host agent, the VM engine
// and the HTTP server; recovers from a previous daemon (re-adopting running
// VMs, reaping orphans); writes its address for the CLI; and on SIGTERM or
// SIGINT shuts down leaving every VM running for the next daemon.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import pino from 'pino';
import { InvalidInputError, homePaths } from '../common/index.ts';
import type { DaemonFile, HomePaths, Logger } from '../common/index.ts';
import { LocalHostAgent, LocalStorageAgent } from '../agent/index.ts';
import { SqliteInventory } from '../store/index.ts';
import { StorageService, VmEngine } from '../vm/index.ts';
import { buildApp } from './app.ts';
import { loadOrCreateToken } from './auth.ts';
import { acquireHomeLock } from './home-lock.ts';
import { faultsFromEnvironment } from './test-faults.ts';

export interface DaemonOptions {
  home: string;
  /** HOST:PORT; default 127.0.0.1:0 (a free port, written to daemon.json). */
  listen?: string;
  logger?: Logger;
  memoryDir?: string;
  /** Fault injection for tests. */
  faults?: (point: string) => Promise<void> | void;
  /** Copy job settings; default from OFFSHOOT_COPY_CHUNK_MIB and OFFSHOOT_COPY_MAX_MIBPS. */
  copy?: { chunkMiB?: number; maxMiBPerSecond?: number };
  /** Folders whose files VMs may use as they are, besides the home and the datastores (see agent/path-policy.ts). */
  allowImages?: string[];
  /** The daemon owns its process (`offshoot serve`): log unhandled rejections and uncaught exceptions instead of dying. */
  guardProcess?: boolean;
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

/** The log file; a full disk loses log lines instead of raising errors nobody can act on. */
function logDestination(path: string): ReturnType<typeof pino.destination> {
  const destination = pino.destination({ dest: path, sync: false, mkdir: true });
  destination.on('error', () => undefined);
  return destination;
}

export interface RunningDaemon {
  url: string;
  token: string;
  engine: VmEngine;
  storage: StorageService;
  agent: LocalHostAgent;
  close(): Promise<void>;
}

export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(.*):(\d{1,5})$/.exec(listen);
  const port = Number(match?.[2]);
  if (!match || !match[1] || port > 65535) throw new InvalidInputError(`invalid --listen "${listen}": use HOST:PORT, e.g. 127.0.0.1:7070`, { listen });
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
  const token = await loadOrCreateToken(paths.token);
  const inventory = await SqliteInventory.open(paths.inventory);
  const agent = new LocalHostAgent({ home: paths.home, memoryDir: options.memoryDir ?? process.env.OFFSHOOT_MEMORY_DIR, allowImages: options.allowImages, logger });
  await agent.prepareHost();
  const faults = options.faults ?? faultsFromEnvironment(process.env.OFFSHOOT_TEST_FAULTS);
  if (faults && !options.faults) logger.warn({ faults: process.env.OFFSHOOT_TEST_FAULTS }, 'OFFSHOOT_TEST_FAULTS is set: faults will be injected');
  const engine = new VmEngine({ inventory, agent, logger, faults });
  const storageAgent = new LocalStorageAgent(agent.layout, agent.policy, (vmId) => agent.qmpOf(vmId), () => agent.qemuAccess());
  await storageAgent.useDatastores((await inventory.storage.listDatastores()).map((ds) => ds.path));
  const storage = new StorageService({ inventory, storageInventory: inventory.storage, agent, storage: storageAgent, engine, logger, vmsDir: agent.layout.vmsDir, copy: options.copy ?? copySettingsFromEnvironment(process.env), faults });
  try {
    // Pins first, so the engine's garbage collection during recovery keeps what pools and copy jobs read.
    await storage.pinSources();
    await engine.recover();
    const resumed = await storage.resumeJobs();
    if (resumed.length) logger.info({ jobs: resumed }, 'copy jobs resumed');
  } catch (err) {
    await storage.close();
    await engine.close();
    await agent.close();
    await inventory.close();
    throw err;
  }
  const app = buildApp({ engine, storage, agent, token, logger });
  const server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, hostname: host, port }, () => resolve(s));
    s.once('error', reject);
  });
  const address = server.address() as AddressInfo;
  const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
  const daemon: DaemonFile = { url, pid: process.pid, startedAt: new Date().toISOString() };
  await writeFile(paths.daemonFile, `${JSON.stringify(daemon, null, 2)}\n`, { mode: 0o600 });
  logger.info({ url, home: paths.home }, 'offshoot daemon listening');
  // Start the accelerator probe now so the first boot does not pay for it.
  void agent.accelerator().catch((err: unknown) => logger.warn({ err }, 'accelerator probe failed'));

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
      await closed;
      await storage.close();
      await engine.close();
      await agent.close();
      await inventory.close();
      const current = await readFile(paths.daemonFile, 'utf8').catch(() => '');
      if (current.includes(`"pid": ${process.pid}`)) await rm(paths.daemonFile, { force: true });
      await releaseLock();
      logger.info('offshoot daemon stopped; VMs keep running');
      unguard();
    })();
    return closing;
  };
  return { url, token, engine, storage, agent, close };
}
