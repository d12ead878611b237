// Prometheus metrics of the daemon, in the text format (GET /metrics, behind
// the API token; optionally also on a listener of its own, see daemon.ts).
//
// Fed from the engine's event bus, without any hook in the orchestration:
// - task events: tasks by kind and outcome, error codes, durations, and the
//   timings finished tasks carry in their result (fork: timings.stunMs;
//   checkpoint: stunMs; restore: runningMs and mode; migration, when it lands
//   as task kind "vm.migrate": timings.downtimeMs and timings.totalMs);
// - copy-job events: bytes of files copied, throughput of each finished job.
// Read when scraped: VMs by state and host, and the memory of the live VMs
// (smaps_rollup through the engine): what each memory template's VMs save by
// sharing it (sum of RSS minus sum of PSS), and per host. prom-client adds
// the daemon's own process metrics (CPU, memory, event loop, GC, handles).
import { Hono } from 'hono';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { NotFoundError, toOffshootError } from '../common/index.ts';
import type { CopyJobRecord, EngineEvent, TaskRecord, VmEngine, VmRecord } from '../vm/index.ts';
import { VM_STATES, isCopyJobDone, isLive } from '../vm/index.ts';
import { bearerAuth } from './auth.ts';

/** The task kind migration will use; its histograms are registered now and fill once it lands. */
export const MIGRATE_TASK_KIND = 'vm.migrate';

const STUN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600];
const MIB = 1024 * 1024;
/** 1 MiB/s to 8 GiB/s. */
const THROUGHPUT_BUCKETS = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192].map((m) => m * MIB);

/** Where a VM lives: its host, by name when the fleet knows it. */
export function hostOfVm(vm: VmRecord, names: ReadonlyMap<string, string>, fallback: string): string {
  const id = vm.hostId || vm.runtime?.hostId || '';
  return names.get(id) ?? (id || fallback);
}

function finite(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

function field(record: unknown, ...path: string[]): unknown {
  let value = record;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

/** A task's run time in seconds, from its record's timestamps. */
function taskSeconds(task: TaskRecord): number | undefined {
  const ms = Date.parse(task.updatedAt) - Date.parse(task.createdAt);
  return Number.isFinite(ms) && ms >= 0 ? ms / 1000 : undefined;
}

/** A scrape's gauges share one read of the VMs' memory (smaps_rollup of each QEMU). */
const SNAPSHOT_MS = 1_000;

interface MemorySnapshot {
  hosts: Map<string, { rss: number; pss: number; shared: number; private: number }>;
  templates: Map<string, { host: string; vms: number; rss: number; pss: number }>;
}

interface CopyTracking {
  /** Seen from its first chunk in this process, so its throughput can be measured. */
  fresh: boolean;
  startedAt: number;
  fileIndex: number;
  /** Largest bytesTotal seen per file index. */
  fileBytes: Map<number, number>;
}

export interface DaemonMetricsOptions {
  engine: VmEngine;
}

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly engine: VmEngine;
  private readonly unsubscribe: () => void;
  private readonly running = new Map<string, string>();
  private readonly finished = new Set<string>();
  private readonly copies = new Map<string, CopyTracking>();
  private snapshot: { at: number; value: Promise<MemorySnapshot> } | undefined;

  private readonly tasksTotal: Counter<'kind' | 'outcome'>;
  private readonly taskErrors: Counter<'kind' | 'code'>;
  private readonly taskDuration: Histogram<'kind' | 'outcome'>;
  private readonly forkStun: Histogram;
  private readonly forkChildren: Counter;
  private readonly checkpointStun: Histogram;
  private readonly restoreRunning: Histogram<'mode'>;
  private readonly restoreTotal: Histogram<'mode'>;
  private readonly migrationDowntime: Histogram;
  private readonly migrationTotal: Histogram;
  private readonly copyBytes: Counter<'purpose'>;
  private readonly copyThroughput: Histogram<'purpose'>;
  private readonly copyJobs: Counter<'purpose' | 'outcome'>;

  constructor(options: DaemonMetricsOptions) {
    this.engine = options.engine;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    const vms: Gauge<'state' | 'host'> = new Gauge({ name: 'offshoot_vms', help: 'VMs by lifecycle state and host', labelNames: ['state', 'host'], registers, collect: (): Promise<void> => this.collectVms(vms) });
    const running = this.running;
    new Gauge({
      name: 'offshoot_tasks_running',
      help: 'Tasks running now in this daemon, by kind',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset();
        for (const kind of new Set(running.values())) this.set({ kind }, [...running.values()].filter((k) => k === kind).length);
      },
    });
    this.tasksTotal = new Counter({ name: 'offshoot_tasks_total', help: 'Finished tasks by kind and outcome (succeeded or failed)', labelNames: ['kind', 'outcome'], registers });
    this.taskErrors = new Counter({ name: 'offshoot_task_errors_total', help: 'Failed tasks by kind and error code', labelNames: ['kind', 'code'], registers });
    this.taskDuration = new Histogram({ name: 'offshoot_task_duration_seconds', help: 'Run time of finished tasks, by kind and outcome', labelNames: ['kind', 'outcome'], buckets: DURATION_BUCKETS, registers });
    this.forkStun = new Histogram({ name: 'offshoot_fork_stun_seconds', help: "Fork stun: the source's vCPUs stopped until running again", buckets: STUN_BUCKETS, registers });
    this.forkChildren = new Counter({ name: 'offshoot_fork_children_total', help: 'Children made by successful forks', registers });
    this.checkpointStun = new Histogram({ name: 'offshoot_checkpoint_stun_seconds', help: 'Checkpoint stun: the VM stopped until it runs on while the file is written', buckets: STUN_BUCKETS, registers });
    this.restoreRunning = new Histogram({ name: 'offshoot_restore_running_seconds', help: 'Restore: until the restored VM runs, by mode (lazy or eager)', labelNames: ['mode'], buckets: DURATION_BUCKETS, registers });
    this.restoreTotal = new Histogram({ name: 'offshoot_restore_seconds', help: 'Restore: the whole task, until the VM no longer needs the checkpoint, by mode', labelNames: ['mode'], buckets: DURATION_BUCKETS, registers });
    this.migrationDowntime = new Histogram({ name: 'offshoot_migration_downtime_seconds', help: 'Live migration downtime (the guest stopped)', buckets: STUN_BUCKETS, registers });
    this.migrationTotal = new Histogram({ name: 'offshoot_migration_seconds', help: 'Live migration, start to end', buckets: DURATION_BUCKETS, registers });
    this.copyBytes = new Counter({ name: 'offshoot_copy_bytes_total', help: 'Data bytes of the files copy jobs completed, by purpose (clone, pool, move)', labelNames: ['purpose'], registers });
    this.copyThroughput = new Histogram({ name: 'offshoot_copy_throughput_bytes_per_second', help: 'Throughput of each copy job that ran from its first chunk to success in this daemon', labelNames: ['purpose'], buckets: THROUGHPUT_BUCKETS, registers });
    this.copyJobs = new Counter({ name: 'offshoot_copy_jobs_total', help: 'Copy jobs that ended, by purpose and outcome', labelNames: ['purpose', 'outcome'], registers });

    // The three memory gauges read one snapshot of the live VMs' memory per scrape.
    const templateVms: Gauge<'template' | 'host'> = new Gauge({
      name: 'offshoot_template_vms',
      help: 'Live VMs that map a memory template (derived memory)',
      labelNames: ['template', 'host'],
      registers,
      collect: async (): Promise<void> => {
        templateVms.reset();
        for (const [template, t] of (await this.memorySnapshot()).templates) templateVms.set({ template, host: t.host }, t.vms);
      },
    });
    const templateSaved: Gauge<'template' | 'host'> = new Gauge({
      name: 'offshoot_template_saved_bytes',
      help: 'Memory the VMs of a template save by sharing it: their RSS summed minus their PSS summed',
      labelNames: ['template', 'host'],
      registers,
      collect: async (): Promise<void> => {
        templateSaved.reset();
        for (const [template, t] of (await this.memorySnapshot()).templates) templateSaved.set({ template, host: t.host }, Math.max(0, t.rss - t.pss));
      },
    });
    const hostMemory: Gauge<'host' | 'kind'> = new Gauge({
      name: 'offshoot_vms_memory_bytes',
      help: "Memory of the live VMs' QEMU processes summed per host: rss, pss (what they really use), shared, private, saved (rss minus pss)",
      labelNames: ['host', 'kind'],
      registers,
      collect: async (): Promise<void> => {
        hostMemory.reset();
        for (const [host, h] of (await this.memorySnapshot()).hosts) {
          for (const kind of ['rss', 'pss', 'shared', 'private'] as const) hostMemory.set({ host, kind }, h[kind]);
          hostMemory.set({ host, kind: 'saved' }, Math.max(0, h.rss - h.pss));
        }
      },
    });

    // This controller's own events only: in a fleet each controller counts what it did (Prometheus sums them).
    this.unsubscribe = this.engine.events.subscribeLocal((event) => this.observe(event));
  }

  /**
   * The text exposition, and its content type. prom-client writes a NaN value as "Nan"; the format
   * spells it "NaN" (OpenMetrics parsers refuse the other), and the event-loop lag series are NaN until
   * their first sample, just after the daemon starts.
   */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: (await this.registry.metrics()).replace(/ Nan$/gm, ' NaN') };
  }

  close(): void {
    this.unsubscribe();
    this.registry.clear();
  }

  /** Host ids to names, and the name of this controller's own host (labels are host names). */
  private hostNames(): { names: Map<string, string>; local: string } {
    const hosts = this.engine.fleet.hosts();
    const names = new Map(hosts.map((h) => [h.id, h.name]));
    const local = hosts.find((h) => h.id === this.engine.fleet.localHostId)?.name ?? hosts[0]?.name ?? 'local';
    return { names, local };
  }

  private async collectVms(gauge: Gauge<'state' | 'host'>): Promise<void> {
    const { names, local } = this.hostNames();
    const counts = new Map<string, Map<string, number>>([...names.values()].map((n) => [n, new Map<string, number>()]));
    if (!counts.has(local)) counts.set(local, new Map());
    for (const vm of await this.engine.list()) {
      const host = hostOfVm(vm, names, local);
      const byState = counts.get(host) ?? new Map<string, number>();
      byState.set(vm.state, (byState.get(vm.state) ?? 0) + 1);
      counts.set(host, byState);
    }
    gauge.reset();
    for (const [host, byState] of counts) for (const state of VM_STATES) gauge.set({ state, host }, byState.get(state) ?? 0);
  }

  /** The memory of the live VMs, summed per host and per template; one read serves the gauges of a scrape. */
  private memorySnapshot(): Promise<MemorySnapshot> {
    const now = Date.now();
    if (!this.snapshot || now - this.snapshot.at > SNAPSHOT_MS) this.snapshot = { at: now, value: this.readMemory() };
    return this.snapshot.value;
  }

  private async readMemory(): Promise<MemorySnapshot> {
    const { names, local } = this.hostNames();
    const live = (await this.engine.list()).filter((vm) => isLive(vm.state) && vm.runtime);
    const stats = await Promise.all(live.map((vm) => this.engine.memory(vm.id).then((m) => ({ vm, m }), () => undefined)));
    const hosts: MemorySnapshot['hosts'] = new Map([[local, { rss: 0, pss: 0, shared: 0, private: 0 }]]);
    const templates: MemorySnapshot['templates'] = new Map();
    for (const entry of stats) {
      if (!entry) continue;
      const { vm, m } = entry;
      const where = hostOfVm(vm, names, local);
      const h = hosts.get(where) ?? { rss: 0, pss: 0, shared: 0, private: 0 };
      h.rss += m.rssKiB * 1024;
      h.pss += m.pssKiB * 1024;
      h.shared += m.sharedKiB * 1024;
      h.private += m.privateKiB * 1024;
      hosts.set(where, h);
      if (m.mode === 'derived' && m.templateId) {
        const t = templates.get(m.templateId) ?? { host: where, vms: 0, rss: 0, pss: 0 };
        t.vms += 1;
        t.rss += m.rssKiB * 1024;
        t.pss += m.pssKiB * 1024;
        templates.set(m.templateId, t);
      }
    }
    return { hosts, templates };
  }

  private observe(event: EngineEvent): void {
    if (event.type === 'task') this.observeTask(event.task);
    else if (event.type === 'copy-job') this.observeCopyJob(event.job);
  }

  private observeTask(task: TaskRecord): void {
    if (task.state === 'running') {
      this.running.set(task.id, task.kind);
      return;
    }
    this.running.delete(task.id);
    if (this.finished.has(task.id)) return;
    this.finished.add(task.id);
    if (this.finished.size > 10_000) this.finished.delete(this.finished.values().next().value as string);
    const outcome = task.state;
    this.tasksTotal.inc({ kind: task.kind, outcome });
    if (task.error) this.taskErrors.inc({ kind: task.kind, code: task.error.code });
    const seconds = taskSeconds(task);
    if (seconds !== undefined) this.taskDuration.observe({ kind: task.kind, outcome }, seconds);
    if (outcome !== 'succeeded') return;
    const result = task.result;
    if (task.kind === 'vm.fork') {
      const stun = finite(field(result, 'timings', 'stunMs'));
      if (stun !== undefined) this.forkStun.observe(stun / 1000);
      const children = field(result, 'children');
      if (Array.isArray(children)) this.forkChildren.inc(children.length);
    } else if (task.kind === 'vm.checkpoint') {
      const stun = finite(field(result, 'stunMs'));
      if (stun !== undefined) this.checkpointStun.observe(stun / 1000);
    } else if (task.kind === 'vm.restore') {
      const mode = String(field(result, 'mode') ?? 'unknown');
      const runningMs = finite(field(result, 'runningMs'));
      if (runningMs !== undefined) this.restoreRunning.observe({ mode }, runningMs / 1000);
      if (seconds !== undefined) this.restoreTotal.observe({ mode }, seconds);
    } else if (task.kind === MIGRATE_TASK_KIND) {
      const downtime = finite(field(result, 'timings', 'downtimeMs'));
      if (downtime !== undefined) this.migrationDowntime.observe(downtime / 1000);
      const total = finite(field(result, 'timings', 'totalMs'));
      const totalSeconds = total !== undefined ? total / 1000 : seconds;
      if (totalSeconds !== undefined) this.migrationTotal.observe(totalSeconds);
    }
  }

  private observeCopyJob(job: CopyJobRecord): void {
    const purpose = job.purpose.kind;
    const p = job.progress;
    let tracking = this.copies.get(job.id);
    if (!tracking) {
      tracking = { fresh: p.fileIndex === 0 && p.chunksCopied === 0 && p.chunksDone === 0, startedAt: Date.now(), fileIndex: p.fileIndex, fileBytes: new Map() };
      this.copies.set(job.id, tracking);
    }
    // The job's progress names the file being copied; an advance of fileIndex means the files before it are complete.
    if (p.fileIndex < job.files.length) tracking.fileBytes.set(p.fileIndex, Math.max(tracking.fileBytes.get(p.fileIndex) ?? 0, p.bytesTotal));
    for (let i = tracking.fileIndex; i < p.fileIndex; i++) this.copyBytes.inc({ purpose }, tracking.fileBytes.get(i) ?? 0);
    tracking.fileIndex = Math.max(tracking.fileIndex, p.fileIndex);
    if (!isCopyJobDone(job.state)) return;
    this.copies.delete(job.id);
    this.copyJobs.inc({ purpose, outcome: job.state });
    const seconds = (Date.now() - tracking.startedAt) / 1000;
    const bytes = [...tracking.fileBytes.values()].reduce((a, b) => a + b, 0);
    if (job.state === 'succeeded' && tracking.fresh && seconds > 0 && bytes > 0) this.copyThroughput.observe({ purpose }, bytes / seconds);
  }
}

/** GET /metrics on an app whose token check runs before it. */
export function mountMetrics(app: Hono, metrics: DaemonMetrics): void {
  app.get('/metrics', async (c) => {
    const { contentType, body } = await metrics.render();
    return c.body(body, 200, { 'content-type': contentType });
  });
}

/** The app of `--metrics-listen`: only GET /metrics, behind the same token. */
export function buildMetricsApp(metrics: DaemonMetrics, token: string): Hono {
  const app = new Hono();
  app.onError((err, c) => {
    const error = toOffshootError(err);
    return c.json(error.toJSON(), error.status as 400);
  });
  app.notFound((c) => c.json(new NotFoundError('route', `${c.req.method} ${c.req.path}`).toJSON(), 404));
  app.use('*', bearerAuth(token, []));
  mountMetrics(app, metrics);
  return app;
}
