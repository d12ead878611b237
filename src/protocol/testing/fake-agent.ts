// A fake host agent: the whole protocol served from memory, with no QEMU and
// no files, so the orchestration (fork, checkpoint, restore, clones, hosts)
// gets fast unit tests, including failure and crash-recovery branches (inject
// a failure at any call with failNext). It passes the same contract suite as
// the real agent (src/protocol/contract.ts), which keeps it honest: where the
// two differ, the contract decides.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { OffshootError } from '../../common/index.ts';
import type { CallName, CallResult } from '../calls.ts';
import type { AgentHandlers, EpochKeeper } from '../endpoint.ts';
import { AgentEndpoint } from '../endpoint.ts';
import { EventLog } from '../event-log.ts';
import type { Locator } from '../locator.ts';
import { makeLocator, parseLocator } from '../locator.ts';
import type { OperationContext } from '../operations.ts';
import type { DiskSource, VmDisk, VmRuntime, VmSpec } from '../schemas.ts';
import { AGENT_CAPABILITIES, PROTOCOL_VERSION } from '../version.ts';
import { exportedCheckpoint, fakeFabricHandlers } from './fake-fabric.ts';
import type { FakeHostTemplate } from './fake-fabric.ts';
import { fakeGroupHandlers } from './fake-group.ts';
import { fakeMigrationHandlers, fakeMigrationState } from './fake-migration.ts';
import type { FakeMigrationHost } from './fake-migration.ts';
import type { DiskMetaData } from '../schemas.ts';
import { fakeContentId, fakeHash, fakeMobilityHandlers, fakeToken } from './fake-mobility.ts';
import type { FakeHostFiles } from './fake-mobility.ts';

interface FakeVm {
  status: 'running' | 'paused';
  runtime: VmRuntime;
  name: string;
  incoming: boolean;
}

interface FakeFork {
  sourceId: string;
  templateId: string;
  switched: boolean;
  wasRunning: boolean;
  incoming: Map<string, VmRuntime>;
  made: Locator[];
  frozen: Array<{ from: Locator; to: Locator }>;
}

const GUEST = 'images/default-guest-fake';

function vmNotRunning(vmId: string): OffshootError {
  return new OffshootError('VM_NOT_RUNNING', `VM ${vmId} has no running QEMU on this host`, { vmId }, 409);
}

export interface FakeAgentOptions {
  hostId?: string;
  /** Folders a person may name with hostPath (like `--allow-images`); files in them "exist" when listed in `hostFiles`. */
  allowedRoots?: string[];
  hostFiles?: string[];
  /** How long a boot takes (ms); 0 by default. */
  bootMs?: number;
  /** The management address this fake host reaches its peers from (migrations); default from its id. */
  managementAddress?: string;
  /** How long a fake migration copies (ms); 0 by default. */
  migrateMs?: number;
}

export class FakeAgent implements EpochKeeper, FakeHostFiles {
  readonly hostId: string;
  readonly files = new Set<Locator>([makeLocator({ kind: 'home' }, GUEST, 'vmlinuz'), makeLocator({ kind: 'home' }, GUEST, 'initrd.img'), makeLocator({ kind: 'home' }, GUEST, 'data.qcow2')]);
  readonly vms = new Map<string, FakeVm>();
  readonly templates = new Set<string>();
  readonly forks = new Map<string, FakeFork>();
  readonly datastores = new Map<string, string>();
  /** VMs whose next migrations from here outrun their brake, and how many more (FakeMigrationHost.outrunBrakes). */
  readonly outrunBrakes = new Map<string, number>();
  /** Its sources wait held at the switch-over even when not allowed to (FakeMigrationHost.holdRegardless). */
  readonly holdRegardless = { on: false };
  /** Host templates of the elastic fabric (fake-fabric.ts). */
  readonly hostTemplates = new Map<string, FakeHostTemplate>();
  /** What files hold (see fake-mobility.ts): content tokens, sidecars, backing files. */
  readonly content = new Map<Locator, string>();
  readonly metas = new Map<Locator, DiskMetaData>();
  readonly backing = new Map<Locator, Locator | null>();
  readonly log = new EventLog();
  readonly endpoint: AgentEndpoint;
  private epoch = 0;
  /** A new agent process (see restart()). */
  private instance = randomUUID();
  private nextPid = 10_000;
  private readonly failures = new Map<string, OffshootError>();
  private readonly hostFiles: Set<string>;
  private readonly allowedRoots: string[];

  constructor(private readonly options: FakeAgentOptions = {}) {
    this.hostId = options.hostId ?? `fake-${randomBytes(3).toString('hex')}`;
    this.allowedRoots = options.allowedRoots ?? [];
    this.hostFiles = new Set(options.hostFiles ?? []);
    this.endpoint = new AgentEndpoint(this.handlers(), this);
  }

  current(): number {
    return this.epoch;
  }

  /** The next call of this name fails with `error` (once). */
  failNext(call: CallName, error: OffshootError = new OffshootError('INTERNAL', `injected failure of ${call}`, { call }, 500)): void {
    this.failures.set(call, error);
  }

  /** Operations of this name wait (after their first progress) until the returned function is called. */
  hold(call: CallName): () => void {
    let release!: () => void;
    this.gates.set(call, new Promise<void>((r) => (release = r)));
    return () => {
      this.gates.delete(call);
      release();
    };
  }

  private readonly gates = new Map<string, Promise<void>>();

  /** What an operation of this name waits for (see hold), if anything. */
  gate(call: CallName): Promise<void> | undefined {
    return this.gates.get(call);
  }

  /** Simulates the agent process restarting: QEMUs run on, but it tracks none until a controller adopts them again. */
  restart(): void {
    this.instance = randomUUID();
    this.untracked = new Map(this.vms);
    this.vms.clear();
  }

  /** QEMUs that outlived an agent restart, waiting for adoptVm. */
  private untracked = new Map<string, FakeVm>();
  /** QEMUs started to make a derived VM's memory its own, until they take over. */
  private readonly ownedTargets = new Map<string, { runtime: VmRuntime; wasRunning: boolean; migrated: boolean }>();

  /** Simulates QEMU of a VM dying from outside. */
  crash(vmId: string, reason = 'killed from outside'): void {
    const vm = this.vms.get(vmId);
    if (!vm) return;
    this.vms.delete(vmId);
    this.log.append({ type: 'vm.exit', vmId, instance: vm.runtime.instance, clean: false, reason, at: new Date().toISOString() });
  }

  /** How many times each call was made (operations count once, when they start). */
  readonly calls = new Map<string, number>();

  check(call: CallName): void {
    this.calls.set(call, (this.calls.get(call) ?? 0) + 1);
    const failure = this.failures.get(call);
    if (failure) {
      this.failures.delete(call);
      throw failure;
    }
  }

  private runtime(vmId: string, memory: VmRuntime['memory']): VmRuntime {
    return { hostId: this.hostId, pid: this.nextPid++, accel: 'tcg', instance: randomBytes(4).toString('hex'), memory, startedAt: new Date().toISOString() };
  }

  private running(vmId: string): FakeVm {
    const vm = this.vms.get(vmId);
    if (!vm || vm.incoming) throw vmNotRunning(vmId);
    return vm;
  }

  private resolveSource(source: DiskSource): Locator {
    if ('file' in source) {
      parseLocator(source.file);
      if (!this.files.has(source.file)) throw new OffshootError('NOT_FOUND', `file ${source.file} does not exist on host ${this.hostId}`, { kind: 'file', ref: source.file }, 404);
      return source.file;
    }
    const root = this.allowedRoots.findIndex((r) => source.hostPath.startsWith(`${r}/`));
    if (root < 0) throw new OffshootError('PATH_NOT_ALLOWED', `${source.hostPath} is outside the places Offshoot may touch on host ${this.hostId}`, { path: source.hostPath, allowed: this.allowedRoots }, 403);
    if (!this.hostFiles.has(source.hostPath)) throw new OffshootError('INVALID_INPUT', `cannot read file ${source.hostPath}`, { path: source.hostPath }, 400);
    const file = makeLocator({ kind: 'allowed', rootId: String(root).padStart(12, '0') }, ...source.hostPath.slice((this.allowedRoots[root] as string).length + 1).split('/'));
    this.files.add(file);
    return file;
  }

  private vmFile(vmId: string, name: string): Locator {
    return makeLocator({ kind: 'home' }, 'vms', vmId, name);
  }

  private handlers(): AgentHandlers {
    const home = { kind: 'home' as const };
    const wrap = <T>(call: CallName, fn: () => T | Promise<T>): Promise<T> =>
      (async () => {
        this.check(call);
        return fn();
      })();
    const op = async <T>(call: CallName, ctx: OperationContext, fn: () => T | Promise<T>): Promise<T> => {
      this.check(call);
      ctx.progress(0.5, `${call} half done`);
      await this.gates.get(call);
      return fn();
    };
    const migrationHost: FakeMigrationHost = {
      hostId: this.hostId,
      vms: this.vms,
      files: this.files,
      managementAddress: this.options.managementAddress ?? `10.254.${parseInt(createHash('sha256').update(this.hostId).digest('hex').slice(0, 4), 16) % 250}.${1 + (parseInt(createHash('sha256').update(this.hostId).digest('hex').slice(4, 8), 16) % 250)}`,
      migrateMs: this.options.migrateMs ?? 0,
      outrunBrakes: this.outrunBrakes,
      holdRegardless: this.holdRegardless,
      runtime: (vmId, memory) => this.runtime(vmId, memory),
      check: (call) => this.check(call),
    };
    const migrations = fakeMigrationState();
    const h: AgentHandlers = {
      hostInfo: () =>
        wrap('hostInfo', () => ({
          hostId: this.hostId,
          hostname: this.hostId,
          protocolVersion: PROTOCOL_VERSION,
          capabilities: [...AGENT_CAPABILITIES],
          agentVersion: 'fake',
          agentInstance: this.instance,
          epoch: this.epoch,
          accel: 'tcg' as const,
          accelReason: 'fake agent',
          qemuVersion: '0.0.0',
          memory: { totalBytes: 64 * 2 ** 30, freeBytes: 60 * 2 ** 30, templatesBytes: this.templates.size * 256 * 2 ** 20 },
          confinement: { user: null, sandbox: false, reason: 'fake agent' },
          vms: [...this.vms.entries()].map(([vmId, vm]) => ({ vmId, pid: vm.runtime.pid, instance: vm.runtime.instance, status: vm.incoming ? ('other' as const) : vm.status })),
        })),
      attach: async (r) => {
        this.epoch = Math.max(this.epoch, r.epoch);
        return h.hostInfo({});
      },
      events: (r) => this.log.since(r.afterSeq, r.waitMs),
      prepareVm: (r) =>
        wrap('prepareVm', () => {
          const disks: VmDisk[] = [];
          let boot: VmSpec['boot'];
          let defaultGuest = false;
          const extra = r.disks.map((d) => ({ file: this.resolveSource(d.source), readOnly: d.readOnly }));
          if (r.boot.kind === 'default-guest') {
            const delta = this.vmFile(r.vmId, 'disk0.qcow2');
            this.files.add(delta);
            disks.push({ id: 'disk0', file: delta, format: 'qcow2', readOnly: false, owned: true, backing: [makeLocator(home, GUEST, 'data.qcow2')] });
            boot = { kind: 'kernel', kernel: makeLocator(home, GUEST, 'vmlinuz'), initrd: makeLocator(home, GUEST, 'initrd.img'), cmdline: `console=ttyS0 offshoot.hostname=${r.name}` };
            defaultGuest = true;
          } else if (r.boot.kind === 'kernel') {
            boot = { kind: 'kernel', kernel: this.resolveSource(r.boot.kernel), cmdline: r.boot.cmdline ?? 'console=ttyS0', ...(r.boot.initrd ? { initrd: this.resolveSource(r.boot.initrd) } : {}) };
          } else {
            disks.push({ id: 'disk0', file: this.resolveSource(r.boot.disk), format: 'raw', readOnly: false, owned: false, backing: [] });
            boot = { kind: 'disk' };
          }
          for (const d of extra) disks.push({ id: `disk${disks.length}`, file: d.file, format: 'raw', readOnly: d.readOnly, owned: false, backing: [] });
          const nics = r.network === 'user' ? [{ id: 'net0', mac: `52:54:00:${randomBytes(3).toString('hex').match(/../g)?.join(':')}`, network: 'user' as const }] : [];
          // A TCG host (as this fake says it is) gives guest RAM 8 KiB beyond its MiB, as the real agent does.
          return { vcpus: r.vcpus, memoryMiB: r.memoryMiB, memoryExtraKiB: 8, boot, disks, nics, defaultGuest };
        }),
      startVm: (r, ctx) =>
        op('startVm', ctx, async () => {
          if (this.vms.has(r.vmId)) throw new OffshootError('VM_ALREADY_RUNNING', `VM ${r.vmId} already has a QEMU process`, { vmId: r.vmId }, 409);
          if (this.options.bootMs) await new Promise((res) => setTimeout(res, this.options.bootMs));
          const runtime = this.runtime(r.vmId, { mode: 'owned', templateId: null });
          this.vms.set(r.vmId, { status: 'running', runtime, name: r.name, incoming: false });
          return runtime;
        }),
      waitForGuestAgent: (r, ctx) =>
        op('waitForGuestAgent', ctx, async () => {
          this.running(r.vmId);
          return {};
        }),
      adoptVm: (r) =>
        wrap('adoptVm', () => {
          const left = this.untracked.get(r.vmId);
          if (left && left.runtime.pid === r.runtime.pid && !left.incoming) {
            this.untracked.delete(r.vmId);
            this.vms.set(r.vmId, left);
          }
          const vm = this.vms.get(r.vmId);
          return { status: vm && vm.runtime.pid === r.runtime.pid && !vm.incoming ? vm.status : null };
        }),
      vmStatus: (r) => wrap('vmStatus', () => ({ status: this.vms.get(r.vmId)?.incoming ? null : (this.vms.get(r.vmId)?.status ?? null) })),
      pauseVm: (r) =>
        wrap('pauseVm', () => {
          this.running(r.vmId).status = 'paused';
          return {};
        }),
      resumeVm: (r) =>
        wrap('resumeVm', () => {
          this.running(r.vmId).status = 'running';
          return {};
        }),
      stopVm: (r, ctx) =>
        op('stopVm', ctx, () => {
          const vm = this.running(r.vmId);
          this.vms.delete(r.vmId);
          this.log.append({ type: 'vm.exit', vmId: r.vmId, instance: vm.runtime.instance, clean: true, reason: 'stopped by request (ACPI power-down)', at: new Date().toISOString() });
          return { forced: false };
        }),
      killVm: (r) =>
        wrap('killVm', () => {
          const vm = this.running(r.vmId);
          this.vms.delete(r.vmId);
          this.log.append({ type: 'vm.exit', vmId: r.vmId, instance: vm.runtime.instance, clean: false, reason: 'killed by request', at: new Date().toISOString() });
          return {};
        }),
      killStray: (r) =>
        wrap('killStray', () => {
          // The fake's strays are the QEMUs of a fork still waiting for device state.
          for (const fork of this.forks.values()) {
            const waiting = fork.incoming.get(r.vmId);
            if (waiting?.pid === r.runtime.pid) {
              fork.incoming.delete(r.vmId);
              return { killed: true };
            }
          }
          return { killed: false };
        }),
      deleteVmFiles: (r) =>
        wrap('deleteVmFiles', () => {
          if (this.vms.has(r.vmId)) throw new OffshootError('VM_ALREADY_RUNNING', `VM ${r.vmId} still has a QEMU process`, { vmId: r.vmId }, 409);
          for (const f of [...this.files]) if (f.startsWith(`home:vms/${r.vmId}/`)) this.files.delete(f);
          return {};
        }),
      exec: (r) =>
        wrap('exec', () => {
          this.running(r.vmId);
          if (r.path !== 'echo' && r.path !== '/bin/echo') throw new OffshootError('QGA_COMMAND_FAILED', `the fake guest only runs echo, not ${r.path}`, { path: r.path }, 500);
          return { exitCode: 0, signal: null, stdout: Buffer.from(`${r.args.join(' ')}\n`).toString('base64'), stderr: '' };
        }),
      readConsole: (r) => wrap('readConsole', () => ({ text: this.vms.has(r.vmId) ? 'fake console\n' : '' })),
      memoryStats: (r) =>
        wrap('memoryStats', () => {
          this.running(r.vmId);
          return { rssKiB: 1024, pssKiB: 512, sharedKiB: 512, privateKiB: 512 };
        }),
      customize: (r, ctx) =>
        op('customize', ctx, () => {
          if (!this.vms.has(r.vmId)) return { ok: false, error: `the guest agent of VM ${r.vmId} did not answer`, script: null, ms: 0 };
          return { ok: true, error: null, script: r.identity.script ? { exitCode: 0, stdout: '', stderr: '' } : null, ms: 1 };
        }),
      reapOrphans: (r) =>
        wrap('reapOrphans', () => {
          const killed: number[] = [];
          for (const [vmId, vm] of [...this.vms]) {
            // A migration's destination waiting here is not an orphan, unless no controller knows its VM any more.
            if (vm.incoming && r.known.includes(vmId)) continue;
            if (!r.live.includes(vmId)) {
              killed.push(vm.runtime.pid);
              this.vms.delete(vmId);
            }
          }
          const removed: string[] = [];
          for (const f of [...this.files]) {
            const m = /^home:vms\/([^/]+)\//.exec(f);
            if (m && !r.known.includes(m[1] as string) && !this.vms.get(m[1] as string)?.incoming) {
              this.files.delete(f);
              removed.push(f);
            }
          }
          return { killed, removed };
        }),
      releaseUnused: (r) =>
        wrap('releaseUnused', () => {
          if ([...this.forks.values()].some((f) => !f.switched)) return { templates: [], files: [] };
          // A host template keeps its memory and files for as long as it exists.
          const kept = [...this.hostTemplates.values()];
          const templates = [...this.templates].filter((t) => !r.templates.includes(t) && !kept.some((k) => k.memoryTemplateId === t));
          for (const t of templates) this.templates.delete(t);
          const files = [...this.files].filter((f) => f.startsWith('home:bases/') && !r.files.includes(f) && !kept.some((k) => k.files.includes(f)));
          for (const f of files) this.files.delete(f);
          return { templates, files };
        }),
      startOwnedTarget: (r, ctx) =>
        op('startOwnedTarget', ctx, () => {
          const vm = this.running(r.vmId);
          if (this.ownedTargets.has(r.vmId)) throw new OffshootError('FORK_NOT_PREPARED', `VM ${r.vmId} is already being made owned`, { vmId: r.vmId }, 409);
          const target = this.runtime(r.vmId, { mode: 'owned', templateId: null });
          this.ownedTargets.set(r.vmId, { runtime: target, wasRunning: vm.status === 'running', migrated: false });
          return target;
        }),
      migrateToOwnedTarget: (r, ctx) =>
        op('migrateToOwnedTarget', ctx, () => {
          const staged = this.ownedTargets.get(r.vmId);
          if (!staged) throw new OffshootError('FORK_NOT_PREPARED', `VM ${r.vmId} has no target QEMU to make it owned`, { vmId: r.vmId }, 409);
          const vm = this.running(r.vmId);
          vm.status = 'paused';
          staged.migrated = true;
          return { bytes: 1, ms: 1 };
        }),
      switchToOwnedTarget: (r) =>
        wrap('switchToOwnedTarget', () => {
          const staged = this.ownedTargets.get(r.vmId);
          if (!staged?.migrated) throw new OffshootError('FORK_NOT_PREPARED', `VM ${r.vmId} has not been migrated into its owned QEMU`, { vmId: r.vmId }, 409);
          const vm = this.running(r.vmId);
          this.ownedTargets.delete(r.vmId);
          vm.runtime = staged.runtime;
          vm.status = staged.wasRunning ? 'running' : 'paused';
          return staged.runtime;
        }),
      abortOwnedTarget: (r) =>
        wrap('abortOwnedTarget', () => {
          const staged = this.ownedTargets.get(r.vmId);
          this.ownedTargets.delete(r.vmId);
          const vm = this.vms.get(r.vmId);
          if (staged?.wasRunning && vm) vm.status = 'running';
          return {};
        }),
      prepareFork: (r, ctx) =>
        op('prepareFork', ctx, () => {
          const source = this.running(r.source.vmId);
          if (source.runtime.memory.mode !== 'owned') throw new OffshootError('FORK_NEEDS_OWNED_MEMORY', `VM ${r.source.vmId} maps a template; make its memory owned first`, { vmId: r.source.vmId }, 409);
          const templateId = randomUUID();
          this.templates.add(templateId);
          const fork: FakeFork = { sourceId: r.source.vmId, templateId, switched: false, wasRunning: source.status === 'running', incoming: new Map(), made: [], frozen: [] };
          this.forks.set(r.forkId, fork);
          const result = { source: [] as VmDisk[], children: Object.fromEntries(r.children.map((c) => [c.vmId, [] as VmDisk[]])), frozen: [] as Array<{ from: string; to: string }>, streams: [] as Array<{ vmId: string; diskId: string; base: string }> };
          for (const disk of r.source.spec.disks) {
            if (disk.readOnly) {
              result.source.push(disk);
              for (const c of r.children) result.children[c.vmId]?.push({ ...disk, owned: false });
              continue;
            }
            const base = makeLocator(home, 'bases', `${randomBytes(4).toString('hex')}-${disk.id}.${disk.format}`);
            this.files.delete(disk.file);
            this.files.add(base);
            result.frozen.push({ from: disk.file, to: base });
            fork.frozen.push({ from: disk.file, to: base });
            const backing = [base, ...disk.backing];
            for (const vm of [r.source, ...r.children]) {
              const file = this.vmFile(vm.vmId, vm === r.source ? `${disk.id}-${randomBytes(4).toString('hex')}.qcow2` : `${disk.id}.qcow2`);
              this.files.add(file);
              fork.made.push(file);
              const list = vm === r.source ? result.source : (result.children[vm.vmId] as VmDisk[]);
              list.push({ id: disk.id, file, format: 'qcow2', readOnly: false, owned: true, backing });
              if (backing.length > r.maxDepth && backing[1]) result.streams.push({ vmId: vm.vmId, diskId: disk.id, base: backing[1] });
            }
          }
          const memory = { mode: 'derived' as const, templateId };
          for (const vm of [r.source, ...r.children]) fork.incoming.set(vm.vmId, this.runtime(vm.vmId, memory));
          return { forkId: r.forkId, templateId, disks: result, incoming: Object.fromEntries(fork.incoming) };
        }),
      switchFork: (r) =>
        wrap('switchFork', () => {
          const fork = this.fork(r.forkId);
          const source = this.running(fork.sourceId);
          const runtime = fork.incoming.get(fork.sourceId) as VmRuntime;
          fork.incoming.delete(fork.sourceId);
          source.runtime = runtime;
          fork.switched = true;
          return { runtime, wasRunning: fork.wasRunning, stunMs: 1, deviceStateBytes: 4096 };
        }),
      completeForkChild: (r) =>
        wrap('completeForkChild', () => {
          const fork = this.fork(r.forkId);
          const runtime = fork.incoming.get(r.childId);
          if (!fork.switched || !runtime) throw new OffshootError('FORK_NOT_PREPARED', `fork ${r.forkId} has no waiting QEMU for child ${r.childId}`, { forkId: r.forkId, childId: r.childId }, 409);
          fork.incoming.delete(r.childId);
          this.vms.set(r.childId, { status: fork.wasRunning ? 'running' : 'paused', runtime, name: r.childId, incoming: false });
          return runtime;
        }),
      abortFork: (r) =>
        wrap('abortFork', () => {
          const fork = this.forks.get(r.forkId);
          if (!fork) return {};
          if (!fork.switched) {
            for (const f of fork.made) this.files.delete(f);
            for (const m of fork.frozen) {
              this.files.delete(m.to);
              this.files.add(m.from);
            }
            this.templates.delete(fork.templateId);
          }
          this.forks.delete(r.forkId);
          return {};
        }),
      finishFork: (r) =>
        wrap('finishFork', () => {
          this.forks.delete(r.forkId);
          return {};
        }),
      undoForkDisks: (r) =>
        wrap('undoForkDisks', () => {
          for (const id of r.childIds) for (const f of [...this.files]) if (f.startsWith(`home:vms/${id}/`)) this.files.delete(f);
          for (const move of r.result.frozen) {
            if (this.files.has(move.to) && !this.files.has(move.from)) {
              this.files.delete(move.to);
              this.files.add(move.from);
            }
          }
          return {};
        }),
      undoForkRenames: () => wrap('undoForkRenames', () => ({ moved: 0 })),
      removeForkFiles: () => wrap('removeForkFiles', () => ({})),
      streamDisk: (r, ctx) =>
        op('streamDisk', ctx, () => {
          this.running(r.vmId);
          return {};
        }),
      planCheckpointFile: (r) =>
        wrap('planCheckpointFile', () => {
          if (r.hostPath) throw new OffshootError('PATH_NOT_ALLOWED', `${r.hostPath} is outside the places Offshoot may touch on host ${this.hostId}`, { path: r.hostPath, allowed: this.allowedRoots }, 403);
          const file = makeLocator(home, 'checkpoints', `${r.name}.ckpt`);
          if (this.files.has(file)) throw new OffshootError('ALREADY_EXISTS', `checkpoint file ${file} already exists`, { kind: 'file', name: file }, 409);
          return { file, hostPath: `/fake/${r.name}.ckpt` };
        }),
      writeCheckpoint: (r, ctx) =>
        op('writeCheckpoint', ctx, () => {
          const fork = this.fork(r.forkId);
          if (!fork.switched) throw new OffshootError('FORK_NOT_SWITCHED', `fork ${r.forkId} has not switched over yet`, { forkId: r.forkId }, 409);
          if (this.files.has(r.file)) throw new OffshootError('ALREADY_EXISTS', `checkpoint file ${r.file} already exists`, { kind: 'file', name: r.file }, 409);
          ctx.signal.throwIfAborted();
          this.files.add(r.file);
          this.checkpoints.set(r.file, { memoryBytes: r.memoryBytes, metadata: r.metadata });
          return { fileBytes: r.memoryBytes / 2, storedPages: r.memoryBytes / 8192 };
        }),
      inspectCheckpoint: (r) =>
        wrap('inspectCheckpoint', () => {
          const file = 'file' in r.source ? r.source.file : this.resolveSource(r.source);
          const ckpt = this.checkpoints.get(file);
          if (!ckpt) throw new OffshootError('CHECKPOINT_NOT_FOUND', `no checkpoint file ${file}`, { file }, 404);
          return { file, hostPath: `/fake/${file}`, memoryBytes: ckpt.memoryBytes, fileBytes: ckpt.memoryBytes / 2, metadata: ckpt.metadata };
        }),
      removeCheckpoint: (r) =>
        wrap('removeCheckpoint', () => {
          const ckpt = this.checkpoints.get(r.file) ?? (this.files.has(r.file) ? exportedCheckpoint(this.content.get(r.file)) : undefined);
          if (!ckpt || ckpt.metadata.checkpointId !== r.checkpointId) return { removed: false };
          this.files.delete(r.file);
          this.checkpoints.delete(r.file);
          return { removed: true };
        }),
      restoreVm: (r, ctx) =>
        op('restoreVm', ctx, () => {
          if (!this.checkpoints.has(r.checkpoint)) throw new OffshootError('CHECKPOINT_NOT_FOUND', `no checkpoint file ${r.checkpoint}`, { file: r.checkpoint }, 404);
          const disks = r.spec.disks.map((d) => (d.readOnly ? { ...d, owned: false } : { id: d.id, file: this.vmFile(r.vmId, `${d.id}.qcow2`), format: 'qcow2' as const, readOnly: false, owned: true, backing: [d.file, ...d.backing] }));
          for (const d of disks) if (d.owned) this.files.add(d.file);
          const runtime = this.runtime(r.vmId, { mode: 'owned', templateId: null });
          this.vms.set(r.vmId, { status: 'running', runtime, name: r.name, incoming: false });
          return { runtime, spec: { ...r.spec, disks }, streamOperationId: null };
        }),
      restoreStream: (r, ctx) =>
        op('restoreStream', ctx, () => {
          this.running(r.vmId);
          return null;
        }),
      registerDatastore: (r) =>
        wrap('registerDatastore', () => {
          const hostPath = r.hostPath ?? `/fake/${this.hostId}/datastores/default`;
          this.datastores.set(r.datastoreId, hostPath);
          return { hostPath };
        }),
      forgetDatastore: (r) =>
        wrap('forgetDatastore', () => {
          this.datastores.delete(r.datastoreId);
          return {};
        }),
      datastoreUsage: (r) => wrap('datastoreUsage', () => ({ capacityBytes: 2 ** 40, freeBytes: 2 ** 39, usedBytes: 2 ** 39, disks: [...this.files].filter((f) => f.startsWith(`ds.${r.datastoreId}:disks/`)).length })),
      scanDatastore: () => wrap('scanDatastore', () => ({ disks: [], problems: [] })),
      createDisk: (r) =>
        wrap('createDisk', () => {
          const file = makeLocator({ kind: 'datastore', datastoreId: r.datastoreId }, 'disks', `${r.diskId}.${r.format}`);
          this.files.add(file);
          return { file };
        }),
      importDisk: (r, ctx) =>
        op('importDisk', ctx, () => {
          const file = makeLocator({ kind: 'datastore', datastoreId: r.datastoreId }, 'disks', `${r.diskId}.${r.format}`);
          this.files.add(file);
          return { file, virtualSize: 2 ** 30, sourceFormat: 'raw' };
        }),
      resizeDisk: () => wrap('resizeDisk', () => ({})),
      diskChain: (r) => wrap('diskChain', () => ({ chain: [{ file: r.file, format: 'qcow2', virtualSize: 2 ** 30, actualSize: null }] })),
      writeDiskMeta: (r) =>
        wrap('writeDiskMeta', () => {
          this.metas.set(r.file, r.meta);
          return {};
        }),
      removeDisk: (r) =>
        wrap('removeDisk', () => {
          this.files.delete(r.file);
          this.metas.delete(r.file);
          this.content.delete(r.file);
          return {};
        }),
      hashDisk: (r, ctx) => op('hashDisk', ctx, () => ({ hash: fakeHash(this, r.file) })),
      contentId: (r) => wrap('contentId', () => ({ contentId: fakeContentId(this, r.file) })),
      freezeDisks: (r) => wrap('freezeDisks', () => ({ disks: r.disks, frozen: [], moves: [], deltas: [] })),
      undoFreeze: () => wrap('undoFreeze', () => ({})),
      createDelta: (r) =>
        wrap('createDelta', () => {
          const file = this.vmFile(r.vmId, `${r.diskId}.qcow2`);
          this.files.add(file);
          this.backing.set(file, r.backing.file);
          return { file };
        }),
      relinkDisk: (r) =>
        wrap('relinkDisk', () => {
          this.backing.set(r.file, r.backing?.file ?? null);
          return {};
        }),
      takePoolSlot: (r) =>
        wrap('takePoolSlot', () => {
          for (const d of r.disks) {
            this.files.delete(d.from);
            this.files.add(d.to);
          }
          return {};
        }),
      removePoolSlot: () => wrap('removePoolSlot', () => ({})),
      copyFile: (r, ctx) =>
        op('copyFile', ctx, () => {
          this.files.add(r.target);
          this.content.set(r.target, fakeToken(this, r.source));
          return { state: 'done' as const, contentHash: 'xxh-fake', chunksCopied: 1, chunksSkipped: 0, bytesCopied: 2 ** 20, elapsedMs: 1 };
        }),
      discardCopy: (r) =>
        wrap('discardCopy', () => {
          this.files.delete(r.target);
          this.content.delete(r.target);
          return {};
        }),
      streamWholeChain: (r, ctx) =>
        op('streamWholeChain', ctx, () => {
          this.running(r.vmId);
          return {};
        }),
      ...fakeFabricHandlers({
        hostTemplates: this.hostTemplates,
        templates: this.templates,
        files: this.files,
        vms: this.vms,
        checkpoints: this.checkpoints,
        content: this.content,
        switchedFork: (forkId) => {
          const fork = this.fork(forkId);
          if (!fork.switched) throw new OffshootError('FORK_NOT_SWITCHED', `fork ${forkId} has not switched over yet`, { forkId }, 409);
          return fork;
        },
        newRuntime: (vmId, memory) => this.runtime(vmId, memory),
        running: (vmId) => this.running(vmId),
        wrap,
        op,
      }),
      ...fakeMigrationHandlers(migrationHost, migrations),
      ...fakeGroupHandlers(migrationHost, migrations),
      ...fakeMobilityHandlers(this),
    };
    return h;
  }

  readonly checkpoints = new Map<Locator, { memoryBytes: number; metadata: CallResult<'inspectCheckpoint'>['metadata'] }>();

  private fork(forkId: string): FakeFork {
    const fork = this.forks.get(forkId);
    if (!fork) throw new OffshootError('FORK_NOT_PREPARED', `no prepared fork ${forkId} on this host`, { forkId }, 409);
    return fork;
  }
}


