// QEMU's migration stream used on one host: saving a stopped VM's device state
// (RAM skipped with x-ignore-shared, because it is already in the memory file),
// loading it into a new QEMU started with `-incoming defer`, and a local live
// migration into a QEMU whose RAM is a new owned file. Uncapped bandwidth:
// QEMU 7.2 caps migration at 128 MiB/s by default, which only suits networks.
import { OffshootError, sleep } from '../common/index.ts';
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

function shellQuote(path: string): string {
  return `'${path.replace(/'/g, `'\\''`)}'`;
}

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

/** Saves the device state of a stopped VM to `file`; guest RAM is not written (it lives in the shared memory file). */
export async function saveDeviceState(qmp: QmpClient, file: string, timeoutMs = 30_000): Promise<MigrateInfo> {
  await setIgnoreShared(qmp, true);
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNCAPPED_BYTES_PER_SECOND });
  await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(file)}` });
  return waitForMigration(qmp, 'saving the device state', timeoutMs);
}

/** Loads device state saved by saveDeviceState into a QEMU started with `-incoming defer`; RAM comes from its memory file. */
export async function loadDeviceState(qmp: QmpClient, file: string, timeoutMs = 30_000): Promise<void> {
  await setIgnoreShared(qmp, true);
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(file)}` });
  await waitForMigration(qmp, 'loading the device state', timeoutMs);
}

/** Live-migrates `source` into `target` (started with `-incoming defer`) over a unix socket, RAM included. */
export async function migrateLocally(source: QmpClient, target: QmpClient, socket: string, timeoutMs = 120_000): Promise<MigrateInfo> {
  await setIgnoreShared(target, false);
  await target.execute('migrate-incoming', { uri: `unix:${socket}` });
  await setIgnoreShared(source, false);
  await source.execute('migrate-set-parameters', { 'max-bandwidth': UNCAPPED_BYTES_PER_SECOND, 'downtime-limit': 50 });
  await source.execute('migrate', { uri: `unix:${socket}` });
  const info = await waitForMigration(source, 'local live migration', timeoutMs);
  await waitForMigration(target, 'local live migration (incoming)', timeoutMs);
  return info;
}
