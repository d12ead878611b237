// The QMP steps of a live migration between two QEMU 7.2 processes, in the
// order libvirt uses them (checked on this machine, see DESIGN.md "Migration
// facts"). Destination: started with `-incoming defer` and `-S`;
// capabilities events, late-block-activate (disks stay inactive until the
// guest is started) and postcopy-ram when allowed; an NBD server on the
// operation's address with a writable export per copied disk; then
// migrate-incoming. Source: an NBD client node per copied disk and a
// write-blocking blockdev-mirror into it (so a busy disk converges), then
// migrate with pause-before-switchover: at `pre-switchover` the guest is
// already stopped, the mirrors are completed (block-job-cancel of a READY
// mirror leaves the target equal to the source), and migrate-continue lets
// QEMU send the last pages and the device state.
//
// Facts of QEMU 7.2 these steps depend on: multifd cannot be used with
// postcopy; `switchover-ack`, dirty-limit and block-job-change do not exist;
// copy-mode is chosen when the mirror starts; query-migrate right after
// `completed` may report zero times (query again); the NBD server address
// takes the nested {type, data} form with the port as a string.
import { OffshootError, sleep } from '../../common/index.ts';
import type { QmpClient, QmpEvent, QmpEventSubscription } from '../../qemu/index.ts';

/** When QEMU emitted `event` (ms since the epoch, its own timestamp), or now when it carries none. */
export function eventMs(event: QmpEvent): number {
  const t = event.timestamp;
  return t && t.seconds > 0 ? t.seconds * 1000 + t.microseconds / 1000 : Date.now();
}

/** eventMs as an ISO time. */
export function eventTime(event: QmpEvent): string {
  return new Date(Math.floor(eventMs(event))).toISOString();
}

/**
 * A migration's timeline for its log: named steps and QEMU's events, ms since the epoch, at most `cap` entries: the
 * first half of them and the latest, with a `dropped:N` entry between them when more came (a long pre-copy has many
 * passes; its end, the switch-over, is what its phases and its reader need).
 */
export function migrationTimeline(cap: number, first?: string): { readonly entries: Array<[string, number]>; mark(name: string, at?: number): void; event(event: QmpEvent): void } {
  const head: Array<[string, number]> = first ? [[first, Date.now()]] : [];
  const headCap = Math.ceil(cap / 2);
  const tailCap = cap - headCap - 1;
  let tail: Array<[string, number]> = [];
  let dropped = 0;
  const mark = (name: string, at = Date.now()) => {
    const entry: [string, number] = [name, Math.round(at)];
    if (head.length < headCap) return void head.push(entry);
    tail.push(entry);
    if (tail.length > Math.max(0, tailCap)) {
      const over = tail.length - Math.max(0, tailCap);
      dropped += over;
      tail = tail.slice(over);
    }
  };
  const event = (e: QmpEvent) => {
    const data = e.data as { status?: unknown; pass?: unknown } | undefined;
    mark(e.event === 'MIGRATION' ? `qemu:${String(data?.status)}` : e.event === 'MIGRATION_PASS' ? `qemu:pass${String(data?.pass)}` : `qemu:${e.event}`, eventMs(e));
  };
  return {
    get entries(): Array<[string, number]> {
      return dropped > 0 ? [...head, [`dropped:${dropped}`, tail[0]?.[1] ?? Date.now()], ...tail] : [...head, ...tail];
    },
    mark,
    event,
  };
}

/**
 * Phases of a timeline as durations (ms, rounded): each from the first entry found of its `from` names to the
 * first found of its `to` names (each list tried in order), 0 when either end is missing (a step not taken).
 */
export function phasesOf<K extends string>(entries: Array<[string, number]>, phases: Record<K, [from: string[], to: string[]]>): Record<K, number> {
  const at = (names: string[]) => {
    for (const name of names) {
      const e = entries.find(([n]) => n === name);
      if (e) return e[1];
    }
    return undefined;
  };
  const out = {} as Record<K, number>;
  for (const [name, [from, to]] of Object.entries(phases) as Array<[K, [string[], string[]]]>) {
    const a = at(from);
    const b = at(to);
    out[name] = a === undefined || b === undefined ? 0 : Math.max(0, Math.round(b - a));
  }
  return out;
}

/** The source's phases of a migration, from its timeline (outgoing.ts): credentials, disk mirrors, set-up, memory pre-copy, switch-over (the guest's stop to completion), final figures. */
export function outgoingPhases(entries: Array<[string, number]>): Record<'creds' | 'mirrors' | 'configure' | 'memory' | 'switchOver' | 'finish', number> {
  return phasesOf(entries, {
    creds: [['start'], ['tls-added']],
    mirrors: [['tls-added', 'start'], ['mirrors-ready']],
    configure: [['mirrors-ready', 'tls-added', 'start'], ['migrate-sent']],
    memory: [['migrate-sent'], ['qemu:STOP']],
    switchOver: [['qemu:STOP'], ['qemu:completed', 'completed-seen']],
    finish: [['qemu:completed', 'completed-seen'], ['final-stats']],
  });
}

/** The destination's phases of its preparation, from its timeline (incoming.ts). */
export function incomingPhases(entries: Array<[string, number]>): Record<'disks' | 'qemuStart' | 'creds' | 'capabilities' | 'exports' | 'listen', number> {
  return phasesOf(entries, {
    disks: [['prepare'], ['disks-created']],
    qemuStart: [['disks-created'], ['qemu-launched']],
    creds: [['qemu-launched'], ['tls-added']],
    capabilities: [['tls-added'], ['capabilities-set']],
    exports: [['capabilities-set'], ['exported']],
    listen: [['exported'], ['listening']],
  });
}

/**
 * Waits for a subscription's next event or `ms`, whichever comes first, without losing an event: the
 * pending read is kept for the next call (a read raced against a timer and then dropped would take the
 * next event with it). Resolves null on a timeout, `done` once the subscription has ended.
 */
export function eventPoller(events: QmpEventSubscription): (ms: number) => Promise<QmpEvent | null | 'done'> {
  let pending: Promise<IteratorResult<QmpEvent>> | null = null;
  return async (ms) => {
    pending ??= events.next();
    const read = pending;
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([read, new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)))]);
    clearTimeout(timer);
    if (result === null) return null;
    pending = null;
    return result.done ? 'done' : result.value;
  };
}

export interface TlsCredential {
  /** The QOM id of a tls-creds-psk object already added on this QEMU (object-add with src/net's pskObjectProperties). */
  objectId: string;
}

export interface MigrationTuning {
  maxBandwidthBytesPerSecond: number;
  downtimeLimitMs: number;
  postcopy: boolean;
  autoConverge: boolean;
  /** Channels for multifd (1 = off); ignored with postcopy. */
  multifdChannels: number;
  tls: TlsCredential | null;
  /** Stop at `pre-switchover` (guest stopped) for the caller's migrate-continue; default true. Only needed to complete disk mirrors or hold a group's switch-over: without it QEMU goes straight on to the last pages. */
  pauseBeforeSwitchover?: boolean;
}

export interface MigrateStats {
  status: string;
  /** Dirty-sync count: how many passes over memory QEMU has made. */
  passes: number;
  remainingBytes: number;
  transferredBytes: number;
  totalBytes: number;
  dirtyPagesRate: number;
  pageSize: number;
  mbps: number;
  expectedDowntimeMs: number | null;
  downtimeMs: number | null;
  totalTimeMs: number | null;
  setupTimeMs: number | null;
  postcopyRequests: number;
  errorDesc: string | null;
  /** Pages sent as zero pages (no payload). */
  zeroPages: number;
  /** auto-converge's current vCPU throttle, percent. */
  throttlePercent: number;
}

interface QueryMigrate {
  status?: string;
  'total-time'?: number;
  'setup-time'?: number;
  downtime?: number;
  'expected-downtime'?: number;
  'error-desc'?: string;
  'postcopy-requests'?: number;
  'cpu-throttle-percentage'?: number;
  ram?: { duplicate?: number; transferred?: number; remaining?: number; total?: number; 'dirty-sync-count'?: number; 'dirty-pages-rate'?: number; 'page-size'?: number; mbps?: number; 'postcopy-requests'?: number };
}

export class LiveMigrationError extends OffshootError {
  constructor(step: string, message: string, details: Record<string, unknown> = {}) {
    super('MIGRATION_FAILED', `live migration failed at ${step}: ${message}`, { step, ...details }, 500);
  }
}

async function caps(qmp: QmpClient, list: Record<string, boolean>): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: Object.entries(list).map(([capability, state]) => ({ capability, state })) });
}

/** Capabilities and parameters on the source. */
export async function configureSource(qmp: QmpClient, tuning: MigrationTuning): Promise<void> {
  const multifd = !tuning.postcopy && tuning.multifdChannels > 1;
  await caps(qmp, {
    events: true,
    'pause-before-switchover': tuning.pauseBeforeSwitchover ?? true,
    'postcopy-ram': tuning.postcopy,
    'return-path': tuning.postcopy,
    'auto-converge': tuning.autoConverge,
    multifd,
    'x-ignore-shared': false,
  });
  await qmp.execute('migrate-set-parameters', {
    'max-bandwidth': Math.round(tuning.maxBandwidthBytesPerSecond),
    'downtime-limit': Math.round(tuning.downtimeLimitMs),
    ...(multifd ? { 'multifd-channels': tuning.multifdChannels } : {}),
    ...(tuning.autoConverge ? { 'cpu-throttle-initial': 20, 'cpu-throttle-increment': 10, 'cpu-throttle-tailslow': true } : {}),
    'tls-creds': tuning.tls?.objectId ?? '',
  });
}

/** Capabilities and parameters on the destination (they must match the source's). */
export async function configureDestination(qmp: QmpClient, tuning: Pick<MigrationTuning, 'postcopy' | 'multifdChannels' | 'tls'>): Promise<void> {
  const multifd = !tuning.postcopy && tuning.multifdChannels > 1;
  await caps(qmp, { events: true, 'late-block-activate': true, 'postcopy-ram': tuning.postcopy, 'return-path': tuning.postcopy, multifd, 'x-ignore-shared': false });
  await qmp.execute('migrate-set-parameters', { ...(multifd ? { 'multifd-channels': tuning.multifdChannels } : {}), 'tls-creds': tuning.tls?.objectId ?? '' });
}

/** Destination: an NBD server on the operation's address and a writable export of each disk node. */
export async function exportDisks(qmp: QmpClient, address: { host: string; port: number }, nodes: string[], tls: TlsCredential | null): Promise<void> {
  if (nodes.length === 0) return;
  await qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: address.host, port: String(address.port) } }, ...(tls ? { 'tls-creds': tls.objectId } : {}) });
  for (const node of nodes) await qmp.execute('block-export-add', { type: 'nbd', id: `export-${node}`, 'node-name': node, name: node, writable: true });
}

/** Destination, after the switch-over: the exports and the server go (the guest owns its disks again). */
export async function stopExports(qmp: QmpClient, nodes: string[]): Promise<void> {
  if (nodes.length === 0) return;
  for (const node of nodes) await qmp.execute('block-export-del', { id: `export-${node}` }).catch(() => undefined);
  await qmp.execute('nbd-server-stop').catch(() => undefined);
}

/**
 * Source: a write-blocking mirror of each disk node into the destination's export. `sync: top` copies
 * only the top image (the destination already has the bases below it); `full` copies the whole chain
 * into a standalone image. Resolves when every mirror is READY (in step; writes now go to both).
 */
export async function startMirrors(
  qmp: QmpClient,
  address: { host: string; port: number },
  disks: Array<{ node: string; sync: 'top' | 'full' }>,
  tls: TlsCredential | null,
  options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void; timeoutMs?: number; speedBytesPerSecond?: number; onStarted?: (node: string) => void; trace?: (step: string) => void } = {},
): Promise<void> {
  if (disks.length === 0) return;
  const ready = new Set<string>();
  const events = qmp.events(['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED', 'BLOCK_JOB_ERROR']);
  try {
    for (const disk of disks) {
      await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': `mirror-${disk.node}`, server: { type: 'inet', host: address.host, port: String(address.port) }, export: disk.node, ...(tls ? { 'tls-creds': tls.objectId } : {}) });
      options.trace?.(`nbd-added:${disk.node}`);
      await qmp.execute('blockdev-mirror', { 'job-id': `mirror-${disk.node}`, device: disk.node, target: `mirror-${disk.node}`, sync: disk.sync, 'copy-mode': 'write-blocking', 'auto-finalize': true, 'auto-dismiss': true, ...(options.speedBytesPerSecond ? { speed: Math.round(options.speedBytesPerSecond) } : {}) });
      options.onStarted?.(disk.node);
    }
    const deadline = Date.now() + (options.timeoutMs ?? 24 * 3600_000);
    const poll = setInterval(() => void reportMirrorProgress(qmp, options.onProgress), 500);
    const nextEvent = eventPoller(events);
    try {
      while (ready.size < disks.length) {
        options.signal?.throwIfAborted();
        if (Date.now() > deadline) throw new LiveMigrationError('disk mirror', 'the disks did not reach the destination in time');
        const next = await nextEvent(250);
        if (next === 'done') throw new LiveMigrationError('disk mirror', 'the QEMU of the VM went away');
        if (!next) continue;
        const data = next.data as { device?: string; error?: string } | undefined;
        const device = data?.device ?? '';
        if (!device.startsWith('mirror-')) continue;
        if (next.event === 'BLOCK_JOB_READY') {
          ready.add(device);
          options.trace?.(`ready:${device}`);
        }
        else throw new LiveMigrationError('disk mirror', `mirror ${device} ended before it was in step: ${data?.error ?? next.event}`, { device });
      }
    } finally {
      clearInterval(poll);
    }
    await reportMirrorProgress(qmp, options.onProgress);
  } finally {
    events.close();
  }
}

async function reportMirrorProgress(qmp: QmpClient, onProgress?: (done: number, total: number) => void): Promise<void> {
  if (!onProgress) return;
  const jobs = await qmp.execute<Array<{ id: string; 'current-progress': number; 'total-progress': number }>>('query-jobs').catch(() => []);
  const mirrors = jobs.filter((j) => j.id.startsWith('mirror-'));
  onProgress(
    mirrors.reduce((s, j) => s + j['current-progress'], 0),
    mirrors.reduce((s, j) => s + j['total-progress'], 0),
  );
}

/** Mirrors in step, the guest stopped: cancelling a READY mirror completes it with the target equal to the source. */
export async function completeMirrors(qmp: QmpClient, nodes: string[]): Promise<void> {
  if (nodes.length === 0) return;
  const done = new Set<string>();
  const events = qmp.events(['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED']);
  try {
    for (const node of nodes) await qmp.execute('block-job-cancel', { device: `mirror-${node}` });
    const deadline = Date.now() + 30_000;
    const nextEvent = eventPoller(events);
    while (done.size < nodes.length) {
      if (Date.now() > deadline) throw new LiveMigrationError('disk mirror completion', 'the mirrors did not complete in 30 s');
      const next = await nextEvent(250);
      if (next === 'done') throw new LiveMigrationError('disk mirror completion', 'the QEMU of the VM went away');
      if (!next) continue;
      const data = next.data as { device?: string; error?: string } | undefined;
      if (data?.error) throw new LiveMigrationError('disk mirror completion', data.error, { device: data.device });
      if (data?.device?.startsWith('mirror-')) done.add(data.device);
    }
  } finally {
    events.close();
  }
  for (const node of nodes) await qmp.execute('blockdev-del', { 'node-name': `mirror-${node}` }).catch(() => undefined);
}

/**
 * Stops mirrors that are still running (a cancelled migration) and drops their NBD client nodes. A mirror with a
 * request stuck on a silent connection (a cut path: QEMU 7.2's NBD client has no I/O timeout) cannot end until that
 * connection does: after `stuckMs`, `onStuck` is called once to end it (abortConnectionsTo the path's peer).
 */
export async function abandonMirrors(qmp: QmpClient, nodes: string[], onStuck?: () => Promise<void>, stuckMs = 2_000): Promise<void> {
  for (const node of nodes) await qmp.execute('block-job-cancel', { device: `mirror-${node}`, force: true }).catch(() => undefined);
  const started = Date.now();
  let unstuck = !onStuck;
  while (Date.now() < started + 12_000) {
    const jobs = await qmp.execute<Array<{ id: string }>>('query-jobs').catch(() => []);
    if (!jobs.some((j) => j.id.startsWith('mirror-'))) break;
    if (!unstuck && Date.now() > started + stuckMs) {
      unstuck = true;
      await onStuck?.();
    }
    await sleep(50);
  }
  for (const node of nodes) await qmp.execute('blockdev-del', { 'node-name': `mirror-${node}` }).catch(() => undefined);
}

interface ImageInfoQmp {
  'actual-size'?: number;
  'backing-image'?: ImageInfoQmp;
}

/**
 * Source: the data bytes the mirrors of `disks` copy, by QEMU's view of their images (`actual-size`, the bytes the
 * host allocated to each file: holes and unallocated ranges left out): the top image for `sync: top`, the whole
 * chain for `full`. The mirrors' own progress counts a disk's holes too (they go as zero writes).
 */
export async function diskDataBytes(qmp: QmpClient, disks: Array<{ node: string; sync: 'top' | 'full' }>): Promise<number> {
  if (disks.length === 0) return 0;
  const nodes = await qmp.execute<Array<{ 'node-name'?: string; image?: ImageInfoQmp }>>('query-named-block-nodes');
  let bytes = 0;
  for (const disk of disks) {
    const image = nodes.find((n) => n['node-name'] === disk.node)?.image;
    if (!image) throw new LiveMigrationError('disk mirror', `no block node ${disk.node} to mirror`, { node: disk.node });
    for (let at: ImageInfoQmp | undefined = image; at; at = disk.sync === 'full' ? at['backing-image'] : undefined) bytes += at['actual-size'] ?? 0;
  }
  return bytes;
}

/** Changes the bandwidth cap of a running migration and of its disk mirrors. */
export async function setMigrationSpeed(qmp: QmpClient, bytesPerSecond: number, mirrorNodes: string[]): Promise<void> {
  await setMigrationLimits(qmp, { maxBandwidthBytesPerSecond: bytesPerSecond }, mirrorNodes);
}

/**
 * Changes a running migration's bandwidth cap (and its disk mirrors') and downtime limit in one
 * migrate-set-parameters: a group's pacer brakes and releases members this way, and under load each QMP round trip
 * took 0.1-0.8 s (two calls per change spread the members' confirmations by ~0.3 s, their arrivals with them).
 */
export async function setMigrationLimits(qmp: QmpClient, limits: { maxBandwidthBytesPerSecond?: number; downtimeLimitMs?: number }, mirrorNodes: string[]): Promise<void> {
  const parameters: Record<string, number> = {};
  if (limits.maxBandwidthBytesPerSecond !== undefined) parameters['max-bandwidth'] = Math.round(limits.maxBandwidthBytesPerSecond);
  if (limits.downtimeLimitMs !== undefined) parameters['downtime-limit'] = Math.round(limits.downtimeLimitMs);
  if (Object.keys(parameters).length > 0) await qmp.execute('migrate-set-parameters', parameters);
  if (limits.maxBandwidthBytesPerSecond === undefined) return;
  for (const node of mirrorNodes) await qmp.execute('block-job-set-speed', { device: `mirror-${node}`, speed: Math.round(limits.maxBandwidthBytesPerSecond) }).catch(() => undefined);
}

/** Mirror jobs of a migration that are still there (found by name: a previous agent's too). */
export async function mirrorNodes(qmp: QmpClient): Promise<string[]> {
  const jobs = await qmp.execute<Array<{ id: string }>>('query-jobs').catch(() => []);
  return jobs.filter((j) => j.id.startsWith('mirror-')).map((j) => j.id.slice('mirror-'.length));
}

export async function queryMigrate(qmp: QmpClient): Promise<MigrateStats> {
  const q = await qmp.execute<QueryMigrate>('query-migrate');
  return {
    status: q.status ?? 'none',
    passes: q.ram?.['dirty-sync-count'] ?? 0,
    remainingBytes: q.ram?.remaining ?? 0,
    transferredBytes: q.ram?.transferred ?? 0,
    totalBytes: q.ram?.total ?? 0,
    dirtyPagesRate: q.ram?.['dirty-pages-rate'] ?? 0,
    pageSize: q.ram?.['page-size'] ?? 4096,
    mbps: q.ram?.mbps ?? 0,
    expectedDowntimeMs: q['expected-downtime'] ?? null,
    downtimeMs: q.downtime ?? null,
    totalTimeMs: q['total-time'] ?? null,
    setupTimeMs: q['setup-time'] ?? null,
    postcopyRequests: q.ram?.['postcopy-requests'] ?? q['postcopy-requests'] ?? 0,
    errorDesc: q['error-desc'] ?? null,
    zeroPages: q.ram?.duplicate ?? 0,
    throttlePercent: q['cpu-throttle-percentage'] ?? 0,
  };
}

/** The final figures of a completed migration (asked again while QEMU still reports zero times). */
export async function finalStats(qmp: QmpClient): Promise<MigrateStats> {
  let stats = await queryMigrate(qmp);
  for (let i = 0; i < 10 && stats.status === 'completed' && !stats.totalTimeMs; i++) {
    await sleep(20);
    stats = await queryMigrate(qmp);
  }
  return stats;
}
