// The source of a live migration on this host (the migrateOut operation),
// phase by phase, so that a group of migrations can be driven to the same
// point and continued together:
//   disks     each copied disk is mirrored into its export at the destination
//             (blockdev-mirror, write-blocking: guest writes go to both, so a
//             busy disk converges), until every mirror is READY
//   memory    (a group member, `hold`: its dirty rate sampled first with
//             calc-dirty-rate, reported during the first pass where QEMU has
//             none) pre-copy (`migrate`, with pause-before-switchover only when
//             there are mirrors to complete or a hold: otherwise QEMU goes from
//             the stop straight on to the last pages, no round trip), watched by
//             the ConvergenceWatch: post-copy when asked or when pre-copy stops
//             converging (auto), a cancel past the time budget
//   switch    at `pre-switchover` the guest is stopped: the mirrors complete
//             (the destination's disks equal the source's), then either
//             migrate-continue at once, or a hold until continueMigration
//             (a group's switch-over), then the last pages and the devices go
//   done      the migration completed (the source QEMU stays, stopped, until
//             finishOutgoing after the controller has recorded the switch)
// Until migrate-continue (or post-copy) is given, a cancel or a failure rolls
// back: the migration is cancelled, the mirrors dropped, and the guest runs
// on here with its disks as they were (they were never the destination's).
// After it, a cancel is too late and is ignored: the switch-over finishes.
// Each run logs its timeline (its steps and QEMU's events, ms since the epoch).
// Measured with it (QEMU 7.2, TCG, 1 GiB): the longest stall the guest sees
// is not the switch-over but the migration's first dirty-bitmap sync, 0.4-0.7 s
// on a quiet machine and 1.5-3 s at load 20: the 8 KiB beyond the MiB a TCG VM's
// RAM gets (qemu/argv.ts, against 7.2's lost-write bug) puts QEMU on its
// per-page sync path, and the first sync finds every page dirty (a new RAM
// block starts all dirty), each page resetting the vCPUs' TLBs under the BQL;
// the TLB flush that starting dirty logging queues has kicked the vCPU out to
// wait for that lock. A plain QEMU with whole-MiB RAM takes the fast path.
// Nothing in our parameters changes it (calc-dirty-rate in dirty-bitmap mode,
// which would start dirty logging earlier, crashes QEMU 7.2 under TCG).
// Clearing that all-dirty bitmap while no guest runs (a throwaway migration
// of a new QEMU at -S into a socket never read, cancelled once `active`)
// measured 3.1 s -> 0.56 s for the first sync at load 16, but took 4 s itself
// at start then, and only helps the first migration after a boot: a migrated-in
// QEMU's RAM starts all dirty again with no paused window to clear it (an
// incoming QEMU cannot migrate out; after completion the guest resumes at
// once). Not built.
// What RAM in a /dev/shm file costs against anonymous RAM (measured with plain
// QEMU pairs, 1 GiB idle guest): the migration populates both RAM files
// whole, ~233k minor faults at the source (the zero-page scan reads every
// page) and ~263k at the destination (its zero check reads each zero page it
// gets), since a shared tmpfs mapping allocates a page on a read fault of a
// hole. Filling the holes with fallocate does not pay: beside the migration it
// slowed the first sync 3-4x, before it, it only moved ~0.4 s of CPU from the
// scan into the fill; a post-copy destination punches its RAM at the start
// anyway. virtio-balloon free-page-hint (free guest pages are never read nor
// sent) would avoid them; QEMU 7.2 offers it only with an iothread, and the
// guest needs its virtio_balloon driver: not built.
// What TLS-PSK costs (plain QEMU pairs, a booted 1 GiB guest paused, ~90 MiB
// sent over loopback, load 9-20): QEMU's default priority got ChaCha20-Poly1305
// (software); src/net/psk.ts's TLS_PRIORITY gets AES-128-GCM, which halved
// TLS's CPU (QEMU time 2.9-4.1 s -> 1.4-2.4 s, 0.8-2.0 s without TLS). What is
// left is per TLS record, inside QEMU 7.2: its TLS channel makes each piece of
// a write vector a record of its own (io/channel-tls.c), and the RAM stream
// writes a page as two pieces, its 8-byte header and the 4 KiB page, so each
// page costs two records and two sendmsg at the source (strace: 45,648 for
// 22,655 pages, against 830 without TLS) and four recvmsg at the destination
// (GnuTLS reads a record's header and body apart: 91,608 against 3,398).
// Nothing we can set changes that: multifd (used with --postcopy never) sends
// no header records but was not faster on 2 cores (TLS, 2 channels:
// 0.7-2.0 s against 1.1-1.3 s for one); socket buffers and the path's MTU do
// not change the number of calls (and TCP over the path moved 190-240 MB/s at
// load 17 in the same `bench netpath`, above TLS's 57-84 MB/s); kernel TLS
// (GnuTLS 3.7's `ktls` option) would batch the destination's reads, but this
// kernel has no tls module. A later QEMU that coalesces the vector into one
// record would remove most of it. In `bench migrate` the RAM files dominate
// instead (a plain pair with /dev/shm RAM used 1.1-1.4 s of CPU per side
// without TLS, and TLS made no steady difference there): its TLS/no-TLS ratio
// was 0.77-1.77x over six runs at load 4-21, with either cipher (the agents'
// QEMUs log GNUTLS_AES_128_GCM_SHA256 when run with GNUTLS_DEBUG_LEVEL=4).
// While it runs, setParameters (setMigrationParameters) changes its bandwidth
// cap and downtime limit (a group's pacer); a group member also brakes itself
// at the end of its first pass (brakeAfterFirstPass, see selfBrake), and then
// ignores a change the pacer decided on that pass; hovering, it parks itself
// at the same crawl at the start of a small pass when the pacer armed that
// (parkBelowBytes, see selfPark), and then ignores a change decided on a pass
// before it. A group member not allowed to hold (holdAllowed false, until a
// change allows it) that reaches pre-switchover does not complete its mirrors
// nor wait: it rolls itself back at once (its guest runs on here) and fails
// MIGRATION_SENT_BACK with when its guest stopped and ran again (the
// controller's own send-back, a report and a call away, paused guests
// 0.24-2.2 s). After it completed, revert()
// (revertOutgoing) undoes it when the destination never ran the guest (a
// group sent back before its start): QEMU's `cont` from `postmigrate`
// re-activates the disks the completion inactivated, and the guest runs on.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { OffshootError, sleep } from '../../common/index.ts';
import type { Logger } from '../../common/index.ts';
import { QmpTimeoutError } from '../../qemu/index.ts';
import type { QmpClient } from '../../qemu/index.ts';
import { abortConnectionsTo, pskObjectProperties } from '../../net/index.ts';
import { MigrationSentBackError, isStaleParameterChange } from '../../protocol/index.ts';
import type { PostcopyMode } from './convergence.ts';
import { ConvergenceWatch } from './convergence.ts';
import type { MigrationHost } from './host.ts';
import { MigrationRefusedError, MigrationTimeoutError } from './host.ts';
import { LiveMigrationError, abandonMirrors, completeMirrors, configureSource, diskDataBytes, eventPoller, eventTime, finalStats, migrationTimeline, mirrorNodes, outgoingPhases, queryMigrate, setMigrationLimits, setMigrationSpeed, startMirrors } from './qmp-steps.ts';
import type { MigrateStats, TlsCredential } from './qmp-steps.ts';

export interface OutgoingTuning {
  maxBandwidthBytesPerSecond: number;
  downtimeLimitMs: number;
  postcopy: PostcopyMode;
  autoConverge: boolean;
  multifdChannels: number;
  timeoutMs: number;
  tls: boolean;
}

export interface MigrateOutRequest {
  vmId: string;
  pathId: string;
  migration: { host: string; port: number };
  nbd: { host: string; port: number } | null;
  disks: Array<{ node: string; sync: 'top' | 'full' }>;
  tuning: OutgoingTuning;
  /** Wait at pre-switchover (guest stopped, mirrors completed) until continueMigration. */
  hold: boolean;
  /** A group member: these limits are applied here as soon as the first pass over memory ends (see selfBrake). */
  brakeAfterFirstPass?: { maxBandwidthBytesPerSecond: number; downtimeLimitMs: number } | null;
  /** With hold: false makes it roll itself back at its switch-over (MigrationSentBackError) until setParameters allows the hold (default true). */
  holdAllowed?: boolean;
}

export interface MigrateOutProgress {
  phase: 'disks' | 'memory' | 'postcopy' | 'held' | 'switching';
  pass: number;
  remainingBytes: number;
  transferredBytes: number;
  totalBytes: number;
  dirtyBytesPerSecond: number;
  bandwidthBytesPerSecond: number;
  expectedDowntimeMs: number | null;
  diskDoneBytes: number;
  diskTotalBytes: number;
  throttlePercent: number;
  /** It braked itself at the end of its first pass (brakeAfterFirstPass): its limits are those since then. */
  selfBraked?: boolean;
  /** The pass at which it parked itself (a pass began with at most setMigrationParameters' parkBelowBytes), null: not parked. */
  selfParked?: number | null;
  /** Held: when its guest stopped (QEMU's STOP event, ISO 8601; null: not seen), so a controller can tell how long it is stopped. */
  stoppedAt?: string | null;
}

export interface MigrateOutResult {
  status: string;
  downtimeMs: number | null;
  totalTimeMs: number | null;
  setupTimeMs: number | null;
  passes: number;
  memoryBytes: number;
  memoryTotalBytes: number;
  zeroPages: number;
  postcopy: boolean;
  postcopyReason: string | null;
  postcopyRequests: number;
  /** Data bytes of the copied disks (allocated in the layers the mirrors copy, when they started). */
  diskBytes: number;
  /** The mirrors' own total (holes included: they go as zero writes). */
  diskMirroredBytes: number;
  mirrorMs: number | null;
  stoppedAt: string | null;
  multifdChannels: number;
  throttlePercent: number;
  converged: boolean;
  /** Where this host's time went (outgoingPhases). */
  phasesMs: Record<string, number>;
}

interface Outgoing {
  phase: MigrateOutProgress['phase'];
  held: boolean;
  /** migrate-continue (or post-copy) was given: nothing can be rolled back any more. */
  switching: boolean;
  mirrors: string[];
  release: () => void;
  released: Promise<void>;
  speed: number;
  downtimeLimitMs: number;
  diskDone: number;
  diskTotal: number;
  mark?: (name: string, at?: number) => void;
  /** It braked itself at the end of its first pass (brakeAfterFirstPass): changes decided on its first pass are stale. */
  selfBraked: boolean;
  /** Armed by the last change (parkBelowBytes, parkFromPass): it parks itself at the start of a pass this small, from that pass on. */
  parkBelowBytes: number | null;
  parkFromPass: number;
  /** The pass at which it parked itself: changes decided on a pass before it are stale. */
  selfParkedPass: number | null;
  /** It may wait held at its switch-over (hold); else it rolls itself back there (a group member the others are far from). */
  holdAllowed: boolean;
}

/** Migration states in which QEMU can still cancel and the guest runs on here. */
const CANCELLABLE = new Set(['setup', 'active', 'pre-switchover', 'device', 'wait-unplug']);

/**
 * The guest's dirty rate in bytes per second, sampled by QEMU (calc-dirty-rate, page sampling, 1 s) before a
 * group member's migration starts; null when QEMU cannot tell.
 */
async function sampleDirtyRate(qmp: QmpClient, logger: Logger, vmId: string): Promise<number | null> {
  try {
    await qmp.execute('calc-dirty-rate', { 'calc-time': 1 });
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline) {
      await sleep(250);
      const q = await qmp.execute<{ status: string; 'dirty-rate'?: number }>('query-dirty-rate');
      if (q.status === 'measured') return (q['dirty-rate'] ?? 0) * 2 ** 20;
    }
  } catch (err) {
    logger.warn({ vmId, err: (err as Error).message }, 'cannot sample the dirty rate');
  }
  return null;
}

export class OutgoingMigrations {
  private readonly out = new Map<string, Outgoing>();

  constructor(private readonly host: MigrationHost) {}

  private get logger(): Logger {
    return this.host.logger;
  }

  state(vmId: string): { phase: string; held: boolean; switching: boolean } | null {
    const o = this.out.get(vmId);
    return o ? { phase: o.phase, held: o.held, switching: o.switching } : null;
  }

  busy(vmId: string): boolean {
    return this.out.has(vmId);
  }

  /** The migrateOut operation; see the header. */
  async run(request: MigrateOutRequest, ctx: { signal: AbortSignal; progress(fraction: number, message: string, data: MigrateOutProgress): void }): Promise<MigrateOutResult> {
    const { vmId, tuning } = request;
    if (this.out.has(vmId)) throw new MigrationRefusedError(`VM ${vmId} is already being migrated from this host`, { vmId });
    const vm = this.host.running(vmId);
    const qmp = vm.qmp;
    const end = this.host.paths.end(request.pathId, 'client');
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const o: Outgoing = { phase: 'disks', held: false, switching: false, mirrors: [], release, released, speed: tuning.maxBandwidthBytesPerSecond, downtimeLimitMs: tuning.downtimeLimitMs, diskDone: 0, diskTotal: 0, selfBraked: false, parkBelowBytes: null, parkFromPass: 0, selfParkedPass: null, holdAllowed: request.holdAllowed ?? true };
    this.out.set(vmId, o);
    const wasRunning = (await qmp.queryStatus()).running;
    const t0 = performance.now();
    const deadline = Date.now() + tuning.timeoutMs;
    let tls: TlsCredential | null = null;
    const events = qmp.events(['MIGRATION', 'MIGRATION_PASS', 'STOP']);
    let stoppedAt: string | null = null;
    let postcopyReason: string | null = null;
    let mirrorMs: number | null = null;
    let diskData = 0;
    const empty: MigrateOutProgress = { phase: 'disks', pass: 0, remainingBytes: 0, transferredBytes: 0, totalBytes: 0, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 0, expectedDowntimeMs: null, diskDoneBytes: 0, diskTotalBytes: 0, throttlePercent: 0 };
    const watchdog = this.watchPath(vmId, qmp, end.remoteAddress, () => o.switching);
    // When each step happened (ms since the epoch; QEMU's events at their own timestamps), logged at the end: where a
    // migration's time and the guest's stop went. At most 400 entries (a long pre-copy has many passes).
    const timeline = migrationTimeline(400, 'start');
    const mark = timeline.mark;
    o.mark = mark;
    // How late this agent's event loop ran its callbacks meanwhile (logged at the end): a slow QMP answer in the
    // timeline is QEMU's, or this process's waiting for a CPU.
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    try {
      if (tuning.tls) {
        await qmp.execute('object-add', pskObjectProperties(end.credential));
        tls = { objectId: end.credential.id };
        mark('tls-added');
      }
      if (request.disks.length > 0) {
        if (!request.nbd) throw new MigrationRefusedError(`VM ${vmId} has disks to copy but the destination exports none`, { vmId });
        diskData = await diskDataBytes(qmp, request.disks);
        ctx.progress(0.02, `mirroring ${request.disks.length} disk(s) to the destination`, empty);
        const m0 = performance.now();
        await startMirrors(qmp, request.nbd, request.disks, tls, {
          signal: ctx.signal,
          timeoutMs: tuning.timeoutMs,
          speedBytesPerSecond: o.speed,
          onStarted: (node) => {
            o.mirrors.push(node);
            mark(`mirror-started:${node}`);
          },
          trace: (step) => mark(step),
          onProgress: (done, total) => {
            o.diskDone = done;
            o.diskTotal = total;
            ctx.progress(total ? 0.4 * (done / total) : 0, `disks: ${Math.round(done / 2 ** 20)} of ${Math.round(total / 2 ** 20)} MiB in step`, { ...empty, diskDoneBytes: done, diskTotalBytes: total });
          },
        });
        mirrorMs = performance.now() - m0;
        mark('mirrors-ready');
      }
      o.phase = 'memory';
      const postcopyAllowed = tuning.postcopy !== 'never';
      const multifd = postcopyAllowed ? 1 : tuning.multifdChannels;
      // A group member: its guest's dirty rate is sampled first, since QEMU measures none during the first pass (the group's pacer needs it to tell a busy member from an idle one).
      const sampledDirty = request.hold ? await sampleDirtyRate(qmp, this.logger, vmId) : null;
      // The held phase (guest stopped) is only needed to complete disk mirrors or to wait for a group's continue.
      const pauseBeforeSwitchover = request.disks.length > 0 || request.hold;
      await configureSource(qmp, { maxBandwidthBytesPerSecond: o.speed, downtimeLimitMs: o.downtimeLimitMs, postcopy: postcopyAllowed, autoConverge: tuning.autoConverge, multifdChannels: multifd, tls, pauseBeforeSwitchover });
      mark('configured');
      await qmp.execute('migrate', { uri: `tcp:${request.migration.host}:${request.migration.port}` });
      mark('migrate-sent');
      const watch = new ConvergenceWatch({ postcopy: tuning.postcopy, timeoutMs: Math.max(1_000, deadline - Date.now()) });
      const memoryStart = performance.now();
      const memoryBase = request.disks.length > 0 ? 0.4 : 0.02;
      let stats: MigrateStats;
      const nextEvent = eventPoller(events);
      // A group member brakes itself when its first pass ends (QEMU's second dirty sync), at the event or at the
      // latest at the next query: the controller's brake, a report and a call away, came 0.3-1 s late under load, while a
      // light guest's passes, small and back to back, let a sync find nothing dirty and it switched over alone (held
      // 5.7-15.3 s, guest stopped, in groups of 8). Measured in groups of 8 (load 9-14): braked a median 50 ms after the
      // event (at most 0.4 s, when a query was slow), and a pacer change decided on the first pass, which would have
      // undone it, still came 0.05-4.7 s after the event for most members.
      const selfBrake = async (pass: number): Promise<void> => {
        const brake = request.brakeAfterFirstPass;
        if (!brake || o.selfBraked || pass < 2 || o.switching) return;
        o.selfBraked = true;
        o.speed = brake.maxBandwidthBytesPerSecond;
        o.downtimeLimitMs = brake.downtimeLimitMs;
        await setMigrationLimits(qmp, brake, o.mirrors);
        mark(`self-brake:${o.speed}B/s,${o.downtimeLimitMs}ms`);
      };
      // A busy group member hovering until its passes are small parks itself (the same crawl) at the start of a pass of
      // at most parkBelowBytes (armed by the controller's last change): its passes shrank from 35 to 0.6 MiB within
      // 0.1 s and a sync found nothing dirty, so it switched over alone before the controller, 0.3 s of reports away
      // under load, saw it ripe. A pass's size is bounded by what is left at its first query plus what was sent since
      // the query before (the tail of the pass before): an overestimate, never an underestimate.
      let lastQuery: { pass: number; transferredBytes: number } | null = null;
      const selfPark = async (s: MigrateStats): Promise<void> => {
        const previous = lastQuery;
        lastQuery = { pass: s.passes, transferredBytes: s.transferredBytes };
        const brake = request.brakeAfterFirstPass;
        if (!brake || o.parkBelowBytes === null || o.switching || s.status !== 'active' || s.passes < Math.max(2, o.parkFromPass) || !previous || s.passes <= previous.pass) return;
        const passBytes = s.remainingBytes + Math.max(0, s.transferredBytes - previous.transferredBytes);
        if (passBytes > o.parkBelowBytes) return;
        o.parkBelowBytes = null;
        o.selfParkedPass = s.passes;
        o.speed = brake.maxBandwidthBytesPerSecond;
        o.downtimeLimitMs = brake.downtimeLimitMs;
        await setMigrationLimits(qmp, brake, o.mirrors);
        mark(`self-park:pass${s.passes},${passBytes}B`);
      };
      // Every event already queued is read (one per turn could leave the STOP event unread at the end).
      const readEvents = async (waitMs: number): Promise<void> => {
        for (let next = await nextEvent(waitMs); next && next !== 'done'; next = await nextEvent(0)) {
          if (next.event === 'STOP') stoppedAt = eventTime(next);
          timeline.event(next);
          if (next.event === 'MIGRATION_PASS') await selfBrake(Number((next.data as { pass?: unknown } | undefined)?.pass ?? 0));
        }
      };
      while (true) {
        // A group member (hold) reports every 50 ms: its pacer brakes it at the brink of a first pass whose zero-page tail drains in a fraction of 200 ms.
        await readEvents(request.hold ? 50 : 200);
        const askedAt = Date.now();
        stats = await queryMigrate(qmp);
        // A slow answer is in its timeline (under load QEMU's monitor waits for its big lock, which dirty syncs hold).
        if (Date.now() - askedAt >= 200) mark(`slow-query:${Date.now() - askedAt}ms`, askedAt);
        if (stats.status === 'completed') {
          mark('completed-seen');
          await readEvents(0);
          break;
        }
        if (stats.status === 'failed' || stats.status === 'cancelled') throw new LiveMigrationError(o.switching ? 'switch-over' : 'memory', stats.errorDesc ?? stats.status, { vmId, status: stats.status });
        if (ctx.signal.aborted && !o.switching) throw ctx.signal.reason ?? new OffshootError('TASK_CANCELLED', `the migration of VM ${vmId} was cancelled`, { vmId }, 409);
        if (stats.status === 'pre-switchover') {
          // Once continued, QEMU may still say pre-switchover until its migration thread moves on: continue once only
          // (a second migrate-continue fails "not in expected state: device" and broke a switch-over, seen in CI).
          if (!o.switching) await this.switchOver(vmId, qmp, o, request.hold, ctx, { ...empty, stoppedAt });
          continue;
        }
        if (stats.status.startsWith('postcopy')) {
          o.phase = 'postcopy';
          o.switching = true;
        }
        if (stats.status === 'active') await selfBrake(stats.passes);
        await selfPark(stats);
        const remaining = stats.remainingBytes;
        const fraction = memoryBase + (1 - memoryBase) * (stats.totalBytes ? Math.min(0.99, stats.transferredBytes / (stats.transferredBytes + remaining)) : 0);
        ctx.progress(fraction, o.phase === 'postcopy' ? `post-copy: ${Math.round(remaining / 2 ** 20)} MiB still at the source` : `memory pass ${stats.passes}: ${Math.round(remaining / 2 ** 20)} MiB to send, dirtied at ${Math.round((stats.dirtyPagesRate * stats.pageSize) / 2 ** 20)} MiB/s`, {
          phase: o.phase,
          pass: stats.passes,
          remainingBytes: remaining,
          transferredBytes: stats.transferredBytes,
          totalBytes: stats.totalBytes,
          dirtyBytesPerSecond: stats.passes <= 1 && sampledDirty !== null ? Math.max(sampledDirty, stats.dirtyPagesRate * stats.pageSize) : stats.dirtyPagesRate * stats.pageSize,
          bandwidthBytesPerSecond: (stats.mbps * 1e6) / 8,
          expectedDowntimeMs: stats.expectedDowntimeMs,
          diskDoneBytes: o.diskDone,
          diskTotalBytes: o.diskTotal,
          throttlePercent: stats.throttlePercent,
          selfBraked: o.selfBraked,
          selfParked: o.selfParkedPass,
        });
        if (o.switching) continue;
        const decision = watch.observe(stats, performance.now() - memoryStart);
        if (decision.action === 'start-postcopy') {
          postcopyReason = decision.reason;
          this.logger.info({ vmId, reason: decision.reason }, 'switching the migration to post-copy');
          await qmp.execute('migrate-start-postcopy');
        } else if (decision.action === 'fail') {
          throw new MigrationTimeoutError(vmId, decision.reason, { passes: stats.passes, remainingBytes: stats.remainingBytes });
        }
      }
      stats = await finalStats(qmp);
      mark('final-stats');
      const postcopy = postcopyReason !== null || o.phase === 'postcopy';
      const result: MigrateOutResult = {
        status: stats.status,
        downtimeMs: stats.downtimeMs,
        totalTimeMs: stats.totalTimeMs,
        setupTimeMs: stats.setupTimeMs,
        passes: stats.passes,
        memoryBytes: stats.transferredBytes,
        memoryTotalBytes: stats.totalBytes,
        zeroPages: stats.zeroPages,
        postcopy,
        postcopyReason,
        postcopyRequests: stats.postcopyRequests,
        diskBytes: diskData,
        diskMirroredBytes: o.diskTotal,
        mirrorMs,
        stoppedAt,
        multifdChannels: multifd,
        throttlePercent: stats.throttlePercent,
        converged: !postcopy && stats.throttlePercent === 0,
        phasesMs: outgoingPhases(timeline.entries),
      };
      const loopDelayMs = { p50: Math.round(loopDelay.percentile(50) / 1e6), p99: Math.round(loopDelay.percentile(99) / 1e6), max: Math.round(loopDelay.max / 1e6) };
      this.logger.info({ vmId, ms: Math.round(performance.now() - t0), downtimeMs: result.downtimeMs, postcopy, loopDelayMs, timeline: timeline.entries }, 'outgoing migration completed');
      return result;
    } catch (err) {
      // Its steps until it failed, as a completed one logs them (what it was told and when, and QEMU's passes).
      this.logger.warn({ vmId, ms: Math.round(performance.now() - t0), err: (err as Error).message, timeline: timeline.entries }, 'outgoing migration failed');
      if (o.switching) {
        // Post-copy (or the last pages after migrate-continue) broke: the guest's memory is split between the hosts.
        this.logger.error({ vmId, err: (err as Error).message }, 'a migration failed after its switch-over');
        throw new LiveMigrationError('switch-over', `the migration failed after the switch-over (${(err as Error).message}); the VM cannot run on at its source`, { vmId, afterSwitch: true });
      }
      await this.rollBack(vmId, qmp, o.mirrors, wasRunning, tls, end.remoteAddress);
      if (err instanceof MigrationSentBackError) throw new MigrationSentBackError(vmId, { stoppedAt, resumedAt: new Date().toISOString() });
      throw err;
    } finally {
      loopDelay.disable();
      watchdog.stop();
      events.close();
      this.out.delete(vmId);
    }
  }

  /**
   * A cut path can wedge the source QEMU itself: a disk mirror's request on a silent NBD connection never ends
   * (QEMU 7.2's NBD client has no I/O timeout), and a drain waiting for it (the switch-over's stop, a job's end)
   * holds QEMU's main loop, so QMP stops answering and neither the time budget nor a cancel can act. While the
   * migration can still be rolled back, a QMP that does not answer `query-status` within `stallMs` has the path's
   * connections ended by force (abortConnectionsTo): the stuck requests fail, QEMU answers again, and the migration
   * fails and rolls back. Never after the switch-over (post-copy needs the path).
   */
  private watchPath(vmId: string, qmp: QmpClient, peer: string, switching: () => boolean, stallMs = 8_000): { stop(): void } {
    let probing = false;
    let fired = false;
    // A probe still in flight when the migration ended must not fire: the VM's next migration may use the same peer address.
    let stopped = false;
    const timer = setInterval(() => {
      if (probing || fired || stopped || switching()) return;
      probing = true;
      qmp
        .execute('query-status', undefined, { timeoutMs: stallMs })
        .catch(async (err: unknown) => {
          if (!(err instanceof QmpTimeoutError) || fired || stopped || switching()) return;
          fired = true;
          const ended = await abortConnectionsTo(peer);
          this.logger.warn({ vmId, peer, stallMs, ended: ended.trim() }, 'QEMU stopped answering during a migration (a cut path): the path\'s connections were ended');
        })
        .finally(() => (probing = false));
    }, 1_000);
    return {
      stop: () => {
        stopped = true;
        clearInterval(timer);
      },
    };
  }

  /** At pre-switchover (the guest is stopped): the mirrors complete, then the migration goes on (after a hold if asked). */
  private async switchOver(vmId: string, qmp: QmpClient, o: Outgoing, hold: boolean, ctx: { signal: AbortSignal; progress(fraction: number, message: string, data: MigrateOutProgress): void }, empty: MigrateOutProgress): Promise<void> {
    o.mark?.('switch-over');
    // Its group is far from its switch-over: no wait held, guest stopped; the run rolls it back at once (its catch).
    if (hold && !o.holdAllowed) throw new MigrationSentBackError(vmId, { stoppedAt: empty.stoppedAt ?? null, resumedAt: '' });
    await completeMirrors(qmp, o.mirrors);
    o.mirrors = [];
    o.mark?.('mirrors-completed');
    if (hold) {
      o.held = true;
      o.phase = 'held';
      ctx.progress(0.97, 'held at the switch-over (guest stopped, disks in step): waiting for continueMigration', { ...empty, phase: 'held' });
      const aborted = new Promise<'aborted'>((resolve) => {
        if (ctx.signal.aborted) resolve('aborted');
        ctx.signal.addEventListener('abort', () => resolve('aborted'), { once: true });
      });
      if ((await Promise.race([o.released.then(() => 'go' as const), aborted])) === 'aborted') throw ctx.signal.reason ?? new OffshootError('TASK_CANCELLED', `the migration of VM ${vmId} was cancelled`, { vmId }, 409);
      o.held = false;
    } else if (ctx.signal.aborted) {
      throw ctx.signal.reason;
    }
    o.switching = true;
    o.phase = 'switching';
    await qmp.execute('migrate-continue', { state: 'pre-switchover' });
    o.mark?.('continued');
  }

  /** Before the switch-over: the migration stops, the mirrors go, and the guest runs on here. */
  private async rollBack(vmId: string, qmp: QmpClient, mirrors: string[], resume: boolean, tls: TlsCredential | null, peer: string | null): Promise<string> {
    const status = await this.cancelInQemu(qmp);
    // A mirror stuck on a silent path (cut) ends only with its connection: the path's connections are ended by force.
    const unstick = peer
      ? async () => {
          const ended = await abortConnectionsTo(peer);
          this.logger.warn({ vmId, peer, ended: ended.trim() }, 'a disk mirror was stuck on a silent path: its connections were ended');
        }
      : undefined;
    await abandonMirrors(qmp, [...new Set([...mirrors, ...(await mirrorNodes(qmp))])], unstick);
    if (resume && !(await qmp.queryStatus().catch(() => ({ running: true }))).running) await qmp.cont().catch((err: unknown) => this.logger.warn({ vmId, err: (err as Error).message }, 'cannot resume the guest after a failed migration'));
    if (tls) await qmp.execute('object-del', { id: tls.objectId }).catch(() => undefined);
    this.logger.warn({ vmId, status }, 'outgoing migration rolled back; the VM runs on here');
    return status;
  }

  /** Cancels QEMU's migration if it can still be cancelled; waits until it has. Returns the status found first. */
  private async cancelInQemu(qmp: QmpClient): Promise<string> {
    const first = (await queryMigrate(qmp).catch(() => null))?.status ?? 'unknown';
    if (!CANCELLABLE.has(first)) return first;
    await qmp.execute('migrate_cancel').catch(() => undefined);
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const status = (await queryMigrate(qmp).catch(() => null))?.status ?? 'unknown';
      if (!CANCELLABLE.has(status) && status !== 'cancelling') break;
      await sleep(20);
    }
    return first;
  }

  /** abortOutgoing: stops the VM's migration before its switch-over, whether or not this agent runs its operation. */
  async abort(vmId: string, resume: boolean): Promise<string> {
    const vm = this.host.running(vmId);
    const status = (await queryMigrate(vm.qmp).catch(() => null))?.status ?? 'unknown';
    if (status === 'completed' || status.startsWith('postcopy') || (this.out.get(vmId)?.switching ?? false)) throw new OffshootError('ILLEGAL_STATE', `the migration of VM ${vmId} is past its switch-over (${status}); it cannot be stopped`, { vmId, state: status, required: [...CANCELLABLE] }, 409);
    if (this.out.has(vmId)) {
      // The operation rolls itself back; its caller cancels it (cancelOperation). Here only QEMU is told.
      await vm.qmp.execute('migrate_cancel').catch(() => undefined);
      return status;
    }
    await this.rollBack(vmId, vm.qmp, [], resume, null, null);
    return status;
  }

  setSpeed(vmId: string, bytesPerSecond: number): Promise<void> {
    const o = this.out.get(vmId);
    if (!o) throw new MigrationRefusedError(`VM ${vmId} is not being migrated from this host`, { vmId });
    o.speed = bytesPerSecond;
    return setMigrationSpeed(this.host.running(vmId).qmp, bytesPerSecond, o.mirrors);
  }

  /** setMigrationParameters: a running migration's downtime limit and bandwidth cap (applied at once if its memory phase runs, else when it starts). */
  async setParameters(vmId: string, change: { downtimeLimitMs?: number; maxBandwidthBytesPerSecond?: number; pass?: number; parkBelowBytes?: number; parkFromPass?: number; holdAllowed?: boolean }): Promise<{ downtimeLimitMs: number; maxBandwidthBytesPerSecond: number }> {
    const o = this.out.get(vmId);
    if (!o) throw new MigrationRefusedError(`VM ${vmId} is not being migrated from this host`, { vmId });
    // The group's view of its hold is the latest whatever the pass it was decided on.
    if (change.holdAllowed !== undefined && change.holdAllowed !== o.holdAllowed) {
      o.holdAllowed = change.holdAllowed;
      o.mark?.(`hold-allowed:${o.holdAllowed}`);
    }
    // Decided on its first pass, it arrives after this source braked itself at that pass's end: stale (a crossing's slow
    // rate would undo the brake until the controller's next decision). So is one decided before the pass it parked at.
    if (isStaleParameterChange(o, change.pass)) {
      o.mark?.('limits-stale');
      return { downtimeLimitMs: o.downtimeLimitMs, maxBandwidthBytesPerSecond: o.speed };
    }
    // Each change arms the park anew or disarms it.
    o.parkBelowBytes = change.parkBelowBytes ?? null;
    o.parkFromPass = change.parkFromPass ?? 0;
    const qmp = this.host.running(vmId).qmp;
    if (change.maxBandwidthBytesPerSecond !== undefined) o.speed = change.maxBandwidthBytesPerSecond;
    if (change.downtimeLimitMs !== undefined) o.downtimeLimitMs = change.downtimeLimitMs;
    // One call for both. Before `migrate` (disks still mirroring) configureSource applies the downtime limit; QEMU reads it at each rate period.
    const downtimeLimitMs = change.downtimeLimitMs !== undefined && o.phase !== 'disks' ? o.downtimeLimitMs : undefined;
    const sentAt = Date.now();
    await setMigrationLimits(qmp, { maxBandwidthBytesPerSecond: change.maxBandwidthBytesPerSecond, downtimeLimitMs }, o.mirrors);
    // In its timeline: when the change was asked for and how long QEMU took to take it (a group's pacing, step by step).
    o.mark?.(`limits:${o.speed}B/s,${o.downtimeLimitMs}ms`, sentAt);
    o.mark?.('limits-applied');
    return { downtimeLimitMs: o.downtimeLimitMs, maxBandwidthBytesPerSecond: o.speed };
  }

  /**
   * revertOutgoing: a migration that completed here whose destination never ran the guest (the controller
   * removed its held destination) is undone: QEMU's `cont` from `postmigrate` re-activates the disks the
   * completion inactivated and runs the guest on here. A migration that failed or was cancelled left the
   * guest running (QEMU restarts it) or stopped: it runs again. Idempotent.
   */
  async revert(vmId: string, resume = true): Promise<string> {
    if (this.out.has(vmId)) throw new MigrationRefusedError(`the migration of VM ${vmId} still runs here: stop it with abortOutgoing`, { vmId });
    const vm = this.host.running(vmId);
    const status = (await queryMigrate(vm.qmp).catch(() => null))?.status ?? 'unknown';
    const run = await vm.qmp.queryStatus();
    if (run.running) return 'running';
    if (!['completed', 'failed', 'cancelled'].includes(status)) throw new OffshootError('ILLEGAL_STATE', `the migration of VM ${vmId} is ${status}; only a finished one can be reverted`, { vmId, state: status, required: ['completed', 'failed', 'cancelled'] }, 409);
    // A guest paused before stays paused: the `cont` that runs it later re-activates its disks.
    if (resume) await vm.qmp.cont();
    this.logger.warn({ vmId, status, runState: run.status, resume }, 'outgoing migration reverted; the VM runs on here');
    return status;
  }

  continue(vmId: string): void {
    const o = this.out.get(vmId);
    if (!o) throw new MigrationRefusedError(`VM ${vmId} is not being migrated from this host`, { vmId });
    o.release();
  }
}
