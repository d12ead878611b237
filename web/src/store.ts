// The console's live state: VMs, tasks, hosts and checkpoints, loaded once
// and then kept current from the daemon's event stream (GET /events through
// the typed client: vm.created, vm.state, vm.deleted, task). A dropped stream
// is reopened with a growing delay and the lists reloaded (events may have
// been missed meanwhile); a refused token (401) signs the console out.
// Listeners are told at most once per animation frame, so a task reporting
// progress hundreds of times a second does not re-render the page each time.
import type { Capabilities, CheckpointRecord, ConsoleApi, EngineEvent, HostInfoView, HostView, OffshootError, TaskRecord, VmMemoryView, VmRecord } from './api.ts';
import { NO_CAPABILITIES, asOffshootError } from './api.ts';
import { isLive } from './operations.ts';

export type StreamState = 'connecting' | 'live' | 'reconnecting';

export interface ConsoleState {
  loaded: boolean;
  vms: VmRecord[];
  tasks: TaskRecord[];
  checkpoints: CheckpointRecord[];
  hostInfo: HostInfoView | null;
  hosts: HostView[];
  capabilities: Capabilities;
  /** Memory of live VMs, by VM id (refreshed by the pages that show it). */
  memory: Record<string, VmMemoryView | undefined>;
  stream: StreamState;
  /** The last failure to load or stream; cleared by the next success. */
  error: OffshootError | null;
}

const TASK_LIMIT = 500;

export class ConsoleStore {
  state: ConsoleState = { loaded: false, vms: [], tasks: [], checkpoints: [], hostInfo: null, hosts: [], capabilities: NO_CAPABILITIES, memory: {}, stream: 'connecting', error: null };
  private readonly listeners = new Set<() => void>();
  private readonly abort = new AbortController();
  private frame: number | undefined;

  constructor(
    readonly api: ConsoleApi,
    private readonly onUnauthorized: (error: OffshootError) => void,
  ) {}

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  start(): void {
    void this.run();
  }

  stop(): void {
    this.abort.abort();
    if (this.frame !== undefined) cancelAnimationFrame(this.frame);
  }

  /** Reloads everything the pages list. */
  async reload(): Promise<void> {
    const { client } = this.api;
    const [capabilities, hostInfo, vms, tasks, checkpoints] = await Promise.all([this.api.capabilities(), client.host(), client.listVms(), client.listTasks(TASK_LIMIT), client.listCheckpoints()]);
    const hosts = await this.api.hosts(capabilities, hostInfo);
    this.set({ loaded: true, capabilities, hostInfo, hosts, vms: sortVms(vms), tasks, checkpoints, error: null });
  }

  async reloadCheckpoints(): Promise<void> {
    this.set({ checkpoints: await this.api.client.listCheckpoints() });
  }

  /** Reads the memory of the live VMs (all, or those given); a VM that stopped meanwhile is dropped. */
  async refreshMemory(ids?: string[]): Promise<void> {
    const live = this.state.vms.filter((v) => isLive(v.state) && v.runtime && (!ids || ids.includes(v.id)));
    const entries = await Promise.all(live.map(async (v) => [v.id, await this.api.client.vmMemory(v.id).catch(() => undefined)] as const));
    const memory = ids ? { ...this.state.memory } : {};
    for (const id of ids ?? []) delete memory[id];
    for (const [id, m] of entries) if (m) memory[id] = m;
    this.set({ memory });
  }

  /** Records an error for the pages to show (code and message). */
  fail(err: unknown): void {
    const error = asOffshootError(err);
    if (error.code === 'UNAUTHORIZED') this.onUnauthorized(error);
    this.set({ error });
  }

  private async run(): Promise<void> {
    let delay = 500;
    while (!this.abort.signal.aborted) {
      try {
        await this.reload();
        const events = this.api.client.events(this.abort.signal);
        this.set({ stream: 'live' });
        delay = 500;
        for await (const event of events) this.apply(event);
      } catch (err) {
        if (this.abort.signal.aborted) return;
        const error = asOffshootError(err);
        if (error.code === 'UNAUTHORIZED' || error.code === 'HTTP_401') {
          this.onUnauthorized(error);
          return;
        }
        this.set({ error });
      }
      if (this.abort.signal.aborted) return;
      this.set({ stream: 'reconnecting' });
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  }

  private apply(event: EngineEvent): void {
    switch (event.type) {
      case 'vm.created':
      case 'vm.state': {
        const others = this.state.vms.filter((v) => v.id !== event.vm.id);
        this.set({ vms: sortVms([...others, event.vm]) });
        if (event.type === 'vm.state' && event.vm.state !== event.previous && (event.previous === 'checkpointing' || event.vm.state === 'checkpointing')) void this.reloadCheckpoints().catch(() => undefined);
        return;
      }
      case 'vm.deleted':
        this.set({ vms: this.state.vms.filter((v) => v.id !== event.vmId) });
        return;
      case 'task': {
        const i = this.state.tasks.findIndex((t) => t.id === event.task.id);
        const tasks = i < 0 ? [event.task, ...this.state.tasks].slice(0, TASK_LIMIT) : this.state.tasks.map((t, j) => (j === i ? event.task : t));
        this.set({ tasks });
        if (event.task.state !== 'running' && (event.task.kind === 'vm.checkpoint' || event.task.kind === 'vm.restore')) void this.reloadCheckpoints().catch(() => undefined);
        return;
      }
      default:
        return;
    }
  }

  private set(patch: Partial<ConsoleState>): void {
    this.state = { ...this.state, ...patch };
    if (this.frame !== undefined) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = undefined;
      for (const listener of this.listeners) listener();
    });
  }
}

function sortVms(vms: VmRecord[]): VmRecord[] {
  return [...vms].sort((a, b) => a.name.localeCompare(b.name));
}
