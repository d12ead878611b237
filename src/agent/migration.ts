// QEMU's migration stream used on one host: saving a stopped VM's device state
// (RAM skipped with x-ignore-shared, because it is already in the memory file),
// loading it into a new QEMU started with `-incoming defer`, and a local live
// migration into a QEMU whose RAM is a new owned file. Uncapped bandwidth:
// QEMU 7.2 caps migration at 128 MiB/s by default, which only suits networks.
//
// No `exec:` URI: a sandboxed QEMU (spawn=deny) can run no program. A save
// goes to a unix socket the agent listens on (in the VM's folder, owned by the
// QEMU user) and the agent writes the file; a load goes the other way, the
// agent connecting to the socket QEMU listens on and streaming the file in.
import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { OffshootError, sleep, withTimeout } from '../common/index.ts';
import type { QmpClient } from '../qemu/index.ts';

/** A migration (save, load or local move) failed. */
export class MigrationError extends OffshootError {
  constructor(what: string, message: string, details: Record<string, unknown> = {}) {
    super('MIGRATION_FAILED', `${what} failed: ${message}`, { what, ...details }, 500);
  }
}

interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  ram?: { transferred?: number; total?: number };
}

const UNCAPPED_BYTES_PER_SECOND = 64 * 1024 * 1024 * 1024;

async function setIgnoreShared(qmp: QmpClient, on: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: on }] });
}

/** Polls query-migrate until the migration completes; throws on failure or timeout. */
export async function waitForMigration(qmp: QmpClient, what: string, timeoutMs: number): Promise<MigrateInfo> {
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  while (true) {
    const info = await qmp.execute<MigrateInfo>('query-migrate');
    if (info.status === 'completed') return info;
    if (info.status === 'failed' || info.status === 'cancelled') throw new MigrationError(what, info['error-desc'] ?? info.status, { status: info.status });
    if (Date.now() > deadline) {
      await qmp.execute('migrate_cancel').catch(() => undefined);
      throw new MigrationError(what, `not complete after ${timeoutMs} ms`, { status: info.status });
    }
    await sleep(delay);
    delay = Math.min(delay * 2, 20);
  }
}

/**
 * Listens on `socketPath` for one connection and writes what it sends into `file` (mode 0600). `share`
 * lets the QEMU user connect. `written` settles once the sender has closed and the file is complete.
 */
async function receiveIntoFile(socketPath: string, file: string, share: (path: string) => Promise<void>): Promise<{ written: Promise<void>; close(): Promise<void> }> {
  await rm(socketPath, { force: true });
  let accepted: Socket | undefined;
  let resolveWritten!: () => void;
  let rejectWritten!: (err: unknown) => void;
  const written = new Promise<void>((resolve, reject) => {
    resolveWritten = resolve;
    rejectWritten = reject;
  });
  written.catch(() => undefined);
  const server = createServer((socket) => {
    if (accepted) return void socket.destroy();
    accepted = socket;
    pipeline(socket, createWriteStream(file, { mode: 0o600 })).then(resolveWritten, rejectWritten);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', () => undefined);
  await share(socketPath);
  return {
    written,
    close: async () => {
      accepted?.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(socketPath, { force: true });
    },
  };
}

function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    socket.once('connect', () => {
      socket.removeListener('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/**
 * Saves the device state of a stopped VM to `file` through a unix socket the agent serves at `socketPath`
 * (`share` opens it to the QEMU user); guest RAM is not written (it lives in the shared memory file).
 */
export async function saveDeviceState(qmp: QmpClient, file: string, socketPath: string, share: (path: string) => Promise<void>, timeoutMs = 30_000): Promise<MigrateInfo> {
  await setIgnoreShared(qmp, true);
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNCAPPED_BYTES_PER_SECOND });
  const receiver = await receiveIntoFile(socketPath, file, share);
  try {
    await qmp.execute('migrate', { uri: `unix:${socketPath}` });
    const info = await waitForMigration(qmp, 'saving the device state', timeoutMs);
    await withTimeout(receiver.written, timeoutMs, 'writing the device state');
    return info;
  } finally {
    await receiver.close();
  }
}

/**
 * Loads device state saved by saveDeviceState into a QEMU started with `-incoming defer`: QEMU listens on
 * `socketPath` (in its VM's folder) and the agent streams the file in; RAM comes from the memory file.
 */
export async function loadDeviceState(qmp: QmpClient, file: string, socketPath: string, timeoutMs = 30_000): Promise<void> {
  await setIgnoreShared(qmp, true);
  await rm(socketPath, { force: true });
  await qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` });
  try {
    const socket = await connect(socketPath);
    const sent = pipeline(createReadStream(file), socket);
    sent.catch(() => undefined);
    await waitForMigration(qmp, 'loading the device state', timeoutMs);
    await sent.catch(() => undefined);
  } finally {
    await rm(socketPath, { force: true });
  }
}

/** Live-migrates `source` into `target` (started with `-incoming defer`) over a unix socket, RAM included; uncapped unless a bandwidth is given. */
export async function migrateLocally(source: QmpClient, target: QmpClient, socket: string, timeoutMs = 120_000, maxBytesPerSecond = UNCAPPED_BYTES_PER_SECOND): Promise<MigrateInfo> {
  await setIgnoreShared(target, false);
  await target.execute('migrate-incoming', { uri: `unix:${socket}` });
  await setIgnoreShared(source, false);
  await source.execute('migrate-set-parameters', { 'max-bandwidth': maxBytesPerSecond, 'downtime-limit': 50 });
  await source.execute('migrate', { uri: `unix:${socket}` });
  const info = await waitForMigration(source, 'local live migration', timeoutMs);
  await waitForMigration(target, 'local live migration (incoming)', timeoutMs);
  return info;
}
