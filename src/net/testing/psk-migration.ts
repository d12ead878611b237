// Test helper and seed of issue 12's data plane: a live migration of a small
// VM between two network namespaces over a per-operation data path, with
// TLS from the path's one-time PSK. Both QEMUs run inside their namespaces
// (started with nsenter), guest RAM is a shared memory-backend-file (so a
// test can compare the two RAM files once both are frozen), and the
// destination listens on its per-operation address only.
//
// QMP steps (QEMU 7.2, measured on this machine, see DESIGN.md):
//   destination (-incoming defer -S): object-add tls-creds-psk endpoint=server
//     (no username), migrate-set-capabilities events, migrate-set-parameters
//     tls-creds, migrate-incoming tcp:<server per-op address>:<port>
//   source: object-add tls-creds-psk endpoint=client username=..,
//     migrate-set-capabilities events, migrate-set-parameters tls-creds +
//     max-bandwidth, migrate tcp:<server per-op address>:<port>, poll
//     query-migrate until completed or failed.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadDefaultGuest } from '../../guest/index.ts';
import { QmpClient, killAndWait, launchQemu } from '../../qemu/index.ts';
import { pskObjectProperties } from '../psk.ts';
import type { DataPathEnd } from '../data-path.ts';

export interface NamespacedQemu {
  pid: number;
  qmp: QmpClient;
  ramFile: string;
  /** QEMU's stdout and stderr (with `tlsDebug`, GnuTLS's handshake log too). */
  logFile: string;
  /** Ends the process (SIGKILL after a short grace) and closes QMP. */
  stop(): Promise<void>;
}

/**
 * Boots the embedded guest (kernel and initramfs, no disk) inside `namespace`;
 * with `incoming`, waits for a migration instead (-incoming defer -S); with
 * `paused`, starts stopped (-S) and never runs unless continued; with `tlsDebug`, GnuTLS logs its handshake
 * (GNUTLS_DEBUG_LEVEL=4: the negotiated cipher suite) into the log file.
 */
export async function startNamespacedGuest(request: { namespace: string; dir: string; memoryDir: string; name: string; memoryMiB: number; incoming: boolean; paused?: boolean; tlsDebug?: boolean }): Promise<NamespacedQemu> {
  const { namespace, dir, memoryDir, name, memoryMiB, incoming } = request;
  mkdirSync(dir, { recursive: true });
  mkdirSync(memoryDir, { recursive: true });
  const guest = await loadDefaultGuest();
  const qmpSocket = join(dir, `${name}.qmp`);
  const ramFile = join(memoryDir, `${name}.ram`);
  const logFile = join(dir, `${name}.log`);
  const args = [
    `--net=/run/netns/${namespace}`, '--', ...(request.tlsDebug ? ['env', 'GNUTLS_DEBUG_LEVEL=4'] : []), 'qemu-system-x86_64',
    '-name', name, '-accel', 'tcg', '-machine', 'q35,memory-backend=ram0', '-m', `${memoryMiB}M`,
    '-object', `memory-backend-file,id=ram0,size=${memoryMiB}M,mem-path=${ramFile},share=on`,
    '-nodefaults', '-no-user-config', '-display', 'none', '-serial', `file:${join(dir, `${name}.console`)}`,
    '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guest.cmdline,
    '-qmp', `unix:${qmpSocket},server=on,wait=off`,
    ...(incoming ? ['-incoming', 'defer'] : []),
    ...(incoming || request.paused ? ['-S'] : []),
  ];
  const proc = await launchQemu({ vmId: name, binary: 'nsenter', args, qmpSocket, logFile });
  const qmp = await QmpClient.connect(qmpSocket, { timeoutMs: 10_000 });
  return {
    pid: proc.pid,
    qmp,
    ramFile,
    logFile,
    stop: async () => {
      await qmp.close().catch(() => undefined);
      await killAndWait(proc.pid, { graceMs: 1_000 });
    },
  };
}

export interface PskMigrationResult {
  status: 'completed' | 'failed';
  error: string | null;
  totalMs: number;
  downtimeMs: number;
  /** RAM bytes QEMU sent. */
  transferredBytes: number;
  /** From the migrate command until the completion was seen (QEMU's total-time is sometimes still 0 right after it). */
  wallMs: number;
}

interface QueryMigrate {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  ram?: { transferred?: number };
}

/** Migrates `source` to `destination` over the path ends, TLS with their PSK credentials; resolves when it has completed or failed. */
export async function migrateOverPath(request: { source: { qmp: QmpClient; end: DataPathEnd }; destination: { qmp: QmpClient; end: DataPathEnd }; port: number; maxBandwidthBytes?: number; timeoutMs?: number; /** Default true; false: plain TCP (a baseline for TLS's cost). */ tls?: boolean; /** Memory channels (multifd when above 1); default 1. */ multifdChannels?: number }): Promise<PskMigrationResult> {
  const { source, destination, port } = request;
  const tls = request.tls ?? true;
  const channels = request.multifdChannels ?? 1;
  const uri = `tcp:${destination.end.localAddress}:${port}`;
  const events = [{ capability: 'events', state: true }, ...(channels > 1 ? [{ capability: 'multifd', state: true }] : [])];
  const multifd = channels > 1 ? { 'multifd-channels': channels } : {};

  if (tls) await destination.qmp.execute('object-add', pskObjectProperties(destination.end.credential));
  await destination.qmp.execute('migrate-set-capabilities', { capabilities: events });
  if (tls || channels > 1) await destination.qmp.execute('migrate-set-parameters', { ...(tls ? { 'tls-creds': destination.end.credential.id } : {}), ...multifd });
  await destination.qmp.execute('migrate-incoming', { uri });

  if (tls) await source.qmp.execute('object-add', pskObjectProperties(source.end.credential));
  await source.qmp.execute('migrate-set-capabilities', { capabilities: events });
  await source.qmp.execute('migrate-set-parameters', { ...(tls ? { 'tls-creds': source.end.credential.id } : {}), ...multifd, 'max-bandwidth': request.maxBandwidthBytes ?? 4 * 2 ** 30 });
  // The source connects to the server's per-operation address: its route is the path's link.
  const t0 = performance.now();
  await source.qmp.execute('migrate', { uri: `tcp:${source.end.remoteAddress}:${port}` });

  const deadline = Date.now() + (request.timeoutMs ?? 60_000);
  while (true) {
    const info = await source.qmp.execute<QueryMigrate>('query-migrate');
    if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') {
      // Right after completion the times are sometimes still 0: ask once more.
      const final = info.status === 'completed' && !info['total-time'] ? await source.qmp.execute<QueryMigrate>('query-migrate') : info;
      return {
        status: info.status === 'completed' ? 'completed' : 'failed',
        error: final['error-desc'] ?? null,
        totalMs: final['total-time'] ?? 0,
        downtimeMs: final.downtime ?? 0,
        transferredBytes: final.ram?.transferred ?? 0,
        wallMs: performance.now() - t0,
      };
    }
    if (Date.now() > deadline) {
      await source.qmp.execute('migrate_cancel').catch(() => undefined);
      throw new Error(`migration over ${uri} did not finish in time (status ${info.status})`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
