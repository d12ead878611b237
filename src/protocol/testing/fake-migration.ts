// The fake agent's side of the migration calls (calls-migration.ts): no QEMU,
// no links. Two fake agents in one process are joined by a "wire" per path
// operation id: the destination's prepareIncoming lays it, the source's
// migrateOut completes it (the destination's guest then runs, the source's
// QEMU stops) or leaves it (a cancel or failure: nothing changes at the
// source). Progress events carry the same data as the real agent's, a hold at
// the switch-over waits for continueMigration, and `migrateMs` stretches the
// copy so a test can cancel it midway. It passes the migration contract
// (contract-migration.ts) as the real agents do.
import { createHash } from 'node:crypto';
import { OffshootError, sleep } from '../../common/index.ts';
import { MigrationSentBackError } from '../calls-group.ts';
import type { CallName } from '../calls.ts';
import type { DataPathEndData, DataPathPlanData, MIGRATION_CALLS } from '../calls-migration.ts';
import type { AgentHandlers } from '../endpoint.ts';
import type { Locator } from '../locator.ts';
import type { OperationContext } from '../operations.ts';
import type { VmRuntime } from '../schemas.ts';

/** What the fake agent shares with its migration handlers. */
export interface FakeMigrationHost {
  readonly hostId: string;
  readonly vms: Map<string, { status: 'running' | 'paused'; runtime: VmRuntime; name: string; incoming: boolean }>;
  readonly files: Set<Locator>;
  readonly managementAddress: string;
  /** How long a fake migrateOut copies (ms). */
  readonly migrateMs: number;
  /**
   * VMs whose next migrations from this host outrun their brake, and how many more: such a migrateOut reaches its
   * switch-over at once, without a first pass's pause nor a brake (as a light real member does whose last passes ran
   * out before its source could brake it). A test sets it to see a group member held alone.
   */
  readonly outrunBrakes: Map<string, number>;
  /** Its sources wait held at the switch-over even when not allowed to (as one whose allowance was on its way): a test sets it to see the controller send back a member held alone. */
  readonly holdRegardless: { on: boolean };
  runtime(vmId: string, memory: VmRuntime['memory']): VmRuntime;
  check(call: CallName): void;
}

interface Wire {
  destination: string;
  vmId: string;
  resume: boolean;
  /** Keep the guest paused after completion, until startIncoming (fake-group.ts). */
  holdAfter: boolean;
  done: (outcome: { ok: true } | { ok: false; error: OffshootError }) => void;
  outcome: Promise<{ ok: true } | { ok: false; error: OffshootError }>;
}

/** Laid by a destination's prepareIncoming, by path operation id (one process, any number of fake agents). */
const wires = new Map<string, Wire>();

function refused(message: string, vmId: string): OffshootError {
  return new OffshootError('MIGRATION_REFUSED', message, { vmId }, 409);
}

type MigrationHandlers = Pick<AgentHandlers, keyof typeof MIGRATION_CALLS>;

/** One fake agent's migrations, shared with its group handlers (fake-group.ts). */
export interface FakeMigrationState {
  incoming: Map<string, { wire: Wire; runtime: VmRuntime; disks: Locator[]; state: 'waiting' | 'held' | 'running' | 'failed' }>;
  outgoing: Map<string, { phase: string; held: boolean; switching: boolean; release: () => void; released: Promise<void>; downtimeLimitMs: number; speed: number; selfBraked: boolean; parkBelowBytes: number | null; parkFromPass: number; selfParkedPass: number | null; holdAllowed: boolean }>;
  /** VMs whose migration from here completed (their QEMU stays, stopped, until finishOutgoing), and whether the guest ran before. */
  completed: Map<string, { wasRunning: boolean }>;
}

export function fakeMigrationState(): FakeMigrationState {
  return { incoming: new Map(), outgoing: new Map(), completed: new Map() };
}

export function fakeMigrationHandlers(host: FakeMigrationHost, state: FakeMigrationState = fakeMigrationState()): MigrationHandlers {
  const ends = new Map<string, DataPathEndData & { plan: DataPathPlanData }>();
  const { incoming, outgoing, completed } = state;
  const wrap = async <T>(call: CallName, fn: () => T | Promise<T>): Promise<T> => {
    host.check(call);
    return fn();
  };
  const running = (vmId: string) => {
    const vm = host.vms.get(vmId);
    if (!vm || vm.incoming) throw new OffshootError('VM_NOT_RUNNING', `VM ${vmId} has no running QEMU on this host`, { vmId }, 409);
    return vm;
  };
  const contentId = (file: string) => `cid-${createHash('sha256').update(file).digest('hex').slice(0, 16)}`;
  return {
    migrationProbe: (r) =>
      wrap('migrationProbe', () => ({
        managementAddress: r.peer ? host.managementAddress : null,
        slotsInUse: [...ends.values()].map((e) => e.slot),
        accel: 'tcg' as const,
        qemuVersion: '0.0.0',
        memoryFreeBytes: 60 * 2 ** 30,
        diskFreeBytes: 100 * 2 ** 30,
        files: r.files.map((f) => (host.files.has(f.file) ? { file: f.file, exists: true, contentId: f.contentId ? contentId(f.file) : null, virtualSize: 2 ** 30, allocatedBytes: 2 ** 20 } : { file: f.file, exists: false, contentId: null, virtualSize: null, allocatedBytes: null })),
      })),
    openPath: (r) =>
      wrap('openPath', () => {
        const taken = [...ends.values()].find((e) => e.slot === r.plan.slot && e.operationId !== r.plan.operationId);
        if (taken) throw new OffshootError('DATA_PATH_CONFLICT', `path slot ${r.plan.slot} is taken on this host`, { slot: r.plan.slot }, 409);
        const local = r.plan[r.role];
        const remote = r.plan[r.role === 'server' ? 'client' : 'server'];
        const end = { operationId: r.plan.operationId, role: r.role, slot: r.plan.slot, vni: r.plan.vni, linkName: r.plan.linkName, device: 'mgmt0', mtu: 1450, localAddress: local.address, remoteAddress: remote.address, prefixLength: 31, localManagementAddress: local.managementAddress, remoteManagementAddress: remote.managementAddress };
        ends.set(r.plan.operationId, { ...end, plan: r.plan });
        return end;
      }),
    closePath: (r) =>
      wrap('closePath', () => {
        const end = ends.get(r.operationId);
        ends.delete(r.operationId);
        return { removedLinks: end ? [end.linkName] : [], removedCredential: end !== undefined, counters: end ? { rxBytes: 1, txBytes: 1, rxPackets: 1, txPackets: 1 } : null };
      }),
    pathCounters: (r) =>
      wrap('pathCounters', () => {
        const end = ends.get(r.operationId);
        if (!end) throw new OffshootError('DATA_PATH_FAILED', `no end of the data path of operation ${r.operationId} on this host`, { operationId: r.operationId }, 500);
        const zero = { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0 };
        return { link: zero, management: zero, linkName: end.linkName, device: end.device };
      }),
    prepareIncoming: (r, ctx: OperationContext) =>
      wrap('prepareIncoming', () => {
        ctx.progress(0.5, 'waiting for the migration');
        if (host.vms.has(r.vmId) || incoming.has(r.vmId)) throw refused(`VM ${r.vmId} already has a QEMU on this host`, r.vmId);
        const end = ends.get(r.pathId);
        if (!end || end.role !== 'server') throw new OffshootError('DATA_PATH_FAILED', `no server end of the data path of operation ${r.pathId} on this host`, { operationId: r.pathId }, 500);
        for (const d of r.disks) host.files.add(d.file);
        const runtime = host.runtime(r.vmId, { mode: 'owned', templateId: null });
        let done!: Wire['done'];
        const outcome = new Promise<{ ok: true } | { ok: false; error: OffshootError }>((resolve) => (done = resolve));
        const wire: Wire = { destination: host.hostId, vmId: r.vmId, resume: r.resume, holdAfter: r.holdAfter, done, outcome };
        wires.set(r.pathId, wire);
        incoming.set(r.vmId, { wire, runtime, disks: r.disks.map((d) => d.file), state: 'waiting' });
        host.vms.set(r.vmId, { status: 'paused', runtime, name: r.name, incoming: true });
        return { runtime, migration: { host: end.localAddress, port: 49152 }, nbd: r.disks.length ? { host: end.localAddress, port: 49153 } : null, exports: r.disks.map((d) => d.id) };
      }),
    awaitIncoming: (r, ctx) =>
      wrap('awaitIncoming', async () => {
        const entry = incoming.get(r.vmId);
        if (!entry) throw refused(`no incoming migration of VM ${r.vmId} on this host`, r.vmId);
        const aborted = new Promise<never>((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true }));
        aborted.catch(() => undefined);
        const outcome = await Promise.race([entry.wire.outcome, aborted]);
        if (!outcome.ok) {
          entry.state = 'failed';
          throw outcome.error;
        }
        if (entry.wire.holdAfter) {
          entry.state = 'held';
          return { runtime: entry.runtime, resumedAt: null, running: false };
        }
        entry.state = 'running';
        incoming.delete(r.vmId);
        host.vms.set(r.vmId, { status: entry.wire.resume ? 'running' : 'paused', runtime: entry.runtime, name: host.vms.get(r.vmId)?.name ?? 'vm', incoming: false });
        return { runtime: entry.runtime, resumedAt: entry.wire.resume ? new Date().toISOString() : null, running: entry.wire.resume };
      }),
    abortIncoming: (r) =>
      wrap('abortIncoming', () => {
        const entry = incoming.get(r.vmId);
        const vm = host.vms.get(r.vmId);
        if (vm && !vm.incoming) throw new OffshootError('ILLEGAL_STATE', `VM ${r.vmId} already runs on this host: its migration completed`, { vmId: r.vmId, state: 'running', required: ['waiting', 'failed'] }, 409);
        if (vm) host.vms.delete(r.vmId);
        incoming.delete(r.vmId);
        entry?.wire.done({ ok: false, error: new OffshootError('MIGRATION_FAILED', 'the destination was aborted', { vmId: r.vmId }, 500) });
        let removed = entry !== undefined;
        for (const f of [...host.files]) {
          if (f.startsWith(`home:vms/${r.vmId}/`)) {
            host.files.delete(f);
            removed = true;
          }
        }
        return { removed };
      }),
    migrateOut: (r, ctx) =>
      wrap('migrateOut', async () => {
        const vm = running(r.vmId);
        if (outgoing.has(r.vmId)) throw refused(`VM ${r.vmId} is already being migrated from this host`, r.vmId);
        const end = ends.get(r.pathId);
        if (!end || end.role !== 'client') throw new OffshootError('DATA_PATH_FAILED', `no client end of the data path of operation ${r.pathId} on this host`, { operationId: r.pathId }, 500);
        let release!: () => void;
        const released = new Promise<void>((resolve) => (release = resolve));
        const o = { phase: r.disks.length ? 'disks' : 'memory', held: false, switching: false, release, released, downtimeLimitMs: r.tuning.downtimeLimitMs, speed: r.tuning.maxBandwidthBytesPerSecond, selfBraked: false, parkBelowBytes: null as number | null, parkFromPass: 0, selfParkedPass: null as number | null, holdAllowed: r.holdAllowed };
        outgoing.set(r.vmId, o);
        const cancelled = () => new OffshootError('TASK_CANCELLED', `the migration of VM ${r.vmId} was cancelled`, { vmId: r.vmId }, 409);
        const outrun = (host.outrunBrakes.get(r.vmId) ?? 0) > 0;
        if (outrun) host.outrunBrakes.set(r.vmId, (host.outrunBrakes.get(r.vmId) ?? 1) - 1);
        const progress = { pass: 0, remainingBytes: 2 ** 28, transferredBytes: 0, totalBytes: 2 ** 28, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 2 ** 30, expectedDowntimeMs: 10, diskDoneBytes: 0, diskTotalBytes: r.disks.length * 2 ** 20, throttlePercent: 0 };
        try {
          const steps = 4;
          for (let i = 1; i <= steps; i++) {
            if (ctx.signal.aborted) throw cancelled();
            o.phase = r.disks.length && i <= 2 ? 'disks' : 'memory';
            const pass = o.phase === 'memory' ? i - 2 : 0;
            // A group member brakes itself when its first pass ends (as a real source does).
            const brake = r.brakeAfterFirstPass;
            if (brake && pass >= 2 && !o.selfBraked) Object.assign(o, { selfBraked: true, speed: brake.maxBandwidthBytesPerSecond, downtimeLimitMs: brake.downtimeLimitMs });
            ctx.progress(i / (steps + 1), `${o.phase} step ${i}`, { ...progress, phase: o.phase, pass, remainingBytes: 2 ** 28 / i, diskDoneBytes: Math.min(i, 2) * 2 ** 19 * r.disks.length, selfBraked: o.selfBraked });
            if (!outrun) await sleep(host.migrateMs / steps);
          }
          // Braked at a crawl it goes nowhere: it waits until released (or cancelled). Released with parkBelowBytes armed, its
          // passes (1 MiB each) run until one from parkFromPass on parks it again at a crawl if it is that small (as a real
          // source does), and it waits anew.
          const brake = r.brakeAfterFirstPass;
          for (let pass = 2; brake && !outrun && !ctx.signal.aborted; ) {
            while (o.speed <= brake.maxBandwidthBytesPerSecond && !ctx.signal.aborted) await sleep(5);
            if (o.parkBelowBytes === null || o.parkBelowBytes < 2 ** 20) break;
            pass = Math.max(pass + 1, o.parkFromPass);
            Object.assign(o, { parkBelowBytes: null, selfParkedPass: pass, speed: brake.maxBandwidthBytesPerSecond, downtimeLimitMs: brake.downtimeLimitMs });
            ctx.progress(0.9, `memory pass ${pass}`, { ...progress, phase: 'memory', pass, remainingBytes: 2 ** 20, selfBraked: o.selfBraked, selfParked: pass });
          }
          if (ctx.signal.aborted) throw cancelled();
          const wire = wires.get(r.pathId);
          if (!wire) throw new OffshootError('MIGRATION_FAILED', `live migration failed at memory: nothing listens on ${r.migration.host}:${r.migration.port}`, { vmId: r.vmId }, 500);
          const wasRunning = vm.status === 'running';
          vm.status = 'paused';
          // Its group cannot hold it yet: it rolls itself back at once, its guest runs on here.
          if (r.hold && !o.holdAllowed && !host.holdRegardless.on) {
            const stoppedAt = new Date().toISOString();
            if (wasRunning) vm.status = 'running';
            throw new MigrationSentBackError(r.vmId, { stoppedAt, resumedAt: new Date().toISOString() });
          }
          if (r.hold) {
            o.held = true;
            o.phase = 'held';
            ctx.progress(0.97, 'held at the switch-over', { ...progress, phase: 'held', stoppedAt: new Date().toISOString() });
            const aborted = new Promise<'aborted'>((resolve) => ctx.signal.addEventListener('abort', () => resolve('aborted'), { once: true }));
            if ((await Promise.race([released.then(() => 'go' as const), aborted])) === 'aborted') {
              if (wasRunning) vm.status = 'running';
              throw cancelled();
            }
            o.held = false;
          } else if (ctx.signal.aborted) {
            if (wasRunning) vm.status = 'running';
            throw cancelled();
          }
          o.switching = true;
          o.phase = 'switching';
          // The last pages and the device state travel: a cancel is too late now.
          if (host.migrateMs > 0) {
            ctx.progress(0.95, 'switching over', { ...progress, phase: 'switching', remainingBytes: 0 });
            await sleep(host.migrateMs / 4);
          }
          wires.delete(r.pathId);
          wire.done({ ok: true });
          completed.set(r.vmId, { wasRunning });
          return { status: 'completed', downtimeMs: 5, totalTimeMs: host.migrateMs + 10, setupTimeMs: 1, passes: 2, memoryBytes: 2 ** 28, memoryTotalBytes: 2 ** 28, zeroPages: 0, postcopy: r.tuning.postcopy === 'always', postcopyReason: r.tuning.postcopy === 'always' ? 'post-copy was asked for' : null, postcopyRequests: 0, diskBytes: r.disks.length * 2 ** 20, mirrorMs: r.disks.length ? 1 : null, stoppedAt: new Date().toISOString(), multifdChannels: r.tuning.postcopy === 'never' ? r.tuning.multifdChannels : 1, throttlePercent: 0, converged: r.tuning.postcopy !== 'always' };
        } finally {
          outgoing.delete(r.vmId);
        }
      }),
    setMigrationSpeed: (r) =>
      wrap('setMigrationSpeed', () => {
        if (!outgoing.has(r.vmId)) throw refused(`VM ${r.vmId} is not being migrated from this host`, r.vmId);
        return {};
      }),
    continueMigration: (r) =>
      wrap('continueMigration', () => {
        const o = outgoing.get(r.vmId);
        if (!o) throw refused(`VM ${r.vmId} is not being migrated from this host`, r.vmId);
        o.release();
        return {};
      }),
    abortOutgoing: (r) =>
      wrap('abortOutgoing', () => {
        const vm = running(r.vmId);
        const o = outgoing.get(r.vmId);
        if (o?.switching || completed.has(r.vmId)) throw new OffshootError('ILLEGAL_STATE', `the migration of VM ${r.vmId} is past its switch-over`, { vmId: r.vmId, state: 'switching', required: ['active'] }, 409);
        if (r.resume) vm.status = 'running';
        return { status: o ? 'active' : 'none' };
      }),
    finishOutgoing: (r) =>
      wrap('finishOutgoing', () => {
        const vm = host.vms.get(r.vmId);
        if (vm && !vm.incoming && vm.status === 'running') throw new OffshootError('ILLEGAL_STATE', `VM ${r.vmId} runs on this host: its migration did not complete here`, { vmId: r.vmId, state: 'running', required: ['postmigrate'] }, 409);
        if (vm && !vm.incoming) host.vms.delete(r.vmId);
        completed.delete(r.vmId);
        for (const f of [...host.files]) if (f.startsWith(`home:vms/${r.vmId}/`)) host.files.delete(f);
        return {};
      }),
    migrationState: (r) =>
      wrap('migrationState', () => {
        const vm = host.vms.get(r.vmId);
        const o = outgoing.get(r.vmId);
        const i = incoming.get(r.vmId);
        return {
          qemu: vm && !vm.incoming ? { runState: completed.has(r.vmId) ? 'postmigrate' : vm.status, migration: completed.has(r.vmId) ? 'completed' : o ? 'active' : 'none' } : null,
          outgoing: o ? { phase: o.phase, held: o.held, switching: o.switching } : null,
          incoming: i ? { state: i.state, pid: i.runtime.pid, runState: 'inmigrate' } : null,
        };
      }),
  };
}
