// Helpers for the baselines that drive QEMU by hand (no Offshoot): connect to
// a freshly started QEMU's QMP socket, and wait for a migration to complete.
import { QmpClient } from '../src/qemu/index.ts';

export async function connectQmpWhenReady(path: string, timeoutMs = 10_000): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 }).catch(() => undefined);
    if (qmp) return qmp;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`QMP at ${path} did not come up within ${timeoutMs} ms`);
}

export async function waitForMigrationDone(qmp: QmpClient): Promise<void> {
  for (;;) {
    const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
