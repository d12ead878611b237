// The typed Offshoot API client, used by the CLI and the web console. It
// turns error responses back into OffshootErrors with the server's stable
// code. It loads in a browser as well as in Node (fetch, no Node modules;
// only exec() returns Node Buffers); finding the daemon from the environment
// is Node's part, in environment.ts.
import { createParser } from 'eventsource-parser';
import { OffshootError, sleep } from '../common/browser.ts';
import type { CheckpointRecord, CheckpointRequest, CreateVmRequest, EngineEvent, ForkRequest, RestoreRequest, TaskRecord, VmRecord } from '../vm/index.ts';

export interface ExecOutput {
  exitCode: number | null;
  signal: number | null;
  stdout: Buffer;
  stderr: Buffer;
}

export interface HostInfoView {
  hostId: string;
  accel: 'kvm' | 'tcg';
  accelReason: string;
  qemuVersion: string;
  memoryDir: string;
  vmsDir: string;
  allowedRoots: string[];
  confinement: { user: string | null; confined: boolean; sandbox: boolean; lazyRestoreConfined: boolean; reasons: string[] };
}

export interface VmMemoryView {
  rssKiB: number;
  pssKiB: number;
  sharedKiB: number;
  privateKiB: number;
  mode: string;
  templateId: string | null;
}

export interface VmAndTaskView {
  vm: VmRecord;
  task?: TaskRecord;
}

/** The daemon could not be reached. */
export class DaemonUnreachableError extends OffshootError {
  constructor(url: string, cause: unknown) {
    super('DAEMON_UNREACHABLE', `cannot reach the Offshoot daemon at ${url}: ${(cause as Error)?.message ?? cause}. Is \`offshoot serve\` running?`, { url }, 503, { cause });
  }
}

export interface ClientOptions {
  /** The daemon's URL, or the URLs of several controllers of a fleet separated by commas (tried in turn). */
  url: string;
  token: string;
}

/** Connection errors that mean a request never reached the controller, so another may be asked safely. */
const NOT_DELIVERED = ['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT'];

function causeOf(err: unknown): unknown {
  return (err as Error & { cause?: unknown }).cause ?? err;
}

export class OffshootClient {
  private readonly urls: string[];
  /** The controller that answered last: asked first next time. */
  private current = 0;

  constructor(private readonly options: ClientOptions) {
    this.urls = options.url.split(',').map((u) => u.trim().replace(/\/+$/, '')).filter(Boolean);
    if (this.urls.length === 0) this.urls = [options.url];
  }

  get url(): string {
    return this.urls[this.current] as string;
  }

  /**
   * Sends a request to the current controller; when it cannot be reached, to the next one of the list. A request
   * that may have been delivered (the connection broke after it was sent) is retried elsewhere only if it is a GET.
   */
  private async send(path: string, init: RequestInit): Promise<Response> {
    let last: unknown;
    for (let tried = 0; tried < this.urls.length; tried++) {
      const i = (this.current + tried) % this.urls.length;
      try {
        const response = await fetch(`${this.urls[i]}${path}`, init);
        this.current = i;
        return response;
      } catch (err) {
        last = causeOf(err);
        const code = (last as { code?: string }).code ?? '';
        if (init.signal?.aborted || (init.method !== 'GET' && !NOT_DELIVERED.includes(code))) throw new DaemonUnreachableError(this.urls[i] as string, last);
      }
    }
    throw new DaemonUnreachableError(this.urls.join(', '), last);
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await this.send(path, {
      method,
      headers: { authorization: `Bearer ${this.options.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) {
      let parsed: { code?: string; message?: string; details?: Record<string, unknown> } = {};
      try {
        parsed = JSON.parse(text) as typeof parsed;
      } catch {
        // not JSON: keep the raw text as message
      }
      throw new OffshootError(parsed.code ?? `HTTP_${response.status}`, parsed.message ?? (text || response.statusText), parsed.details ?? {}, response.status);
    }
    const type = response.headers.get('content-type') ?? '';
    return (type.includes('json') ? JSON.parse(text) : text) as T;
  }

  /** Any API call, for the typed clients of other resources (see storage-client.ts). */
  call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.request<T>(method, path, body);
  }

  health(): Promise<{ ok: boolean; version: string }> {
    return this.request('GET', '/health');
  }

  host(): Promise<HostInfoView> {
    return this.request('GET', '/host');
  }

  listVms(): Promise<VmRecord[]> {
    return this.request('GET', '/vms');
  }

  getVm(ref: string): Promise<VmRecord> {
    return this.request('GET', `/vms/${encodeURIComponent(ref)}`);
  }

  createVm(request: CreateVmRequest): Promise<VmAndTaskView> {
    return this.request('POST', '/vms', request);
  }

  startVm(ref: string, options: { timeoutMs?: number } = {}): Promise<VmAndTaskView> {
    return this.request('POST', `/vms/${encodeURIComponent(ref)}/start`, options.timeoutMs === undefined ? undefined : options);
  }

  stopVm(ref: string, options: { timeoutMs?: number } = {}): Promise<VmAndTaskView> {
    return this.request('POST', `/vms/${encodeURIComponent(ref)}/stop`, options);
  }

  forkVm(ref: string, request: ForkRequest = {}): Promise<VmAndTaskView> {
    return this.request('POST', `/vms/${encodeURIComponent(ref)}/fork`, request);
  }

  vmMemory(ref: string): Promise<VmMemoryView> {
    return this.request('GET', `/vms/${encodeURIComponent(ref)}/memory`);
  }

  checkpointVm(ref: string, request: CheckpointRequest = {}): Promise<VmAndTaskView> {
    return this.request('POST', `/vms/${encodeURIComponent(ref)}/checkpoint`, request);
  }

  restore(request: RestoreRequest): Promise<VmAndTaskView> {
    return this.request('POST', '/restore', request);
  }

  listCheckpoints(): Promise<CheckpointRecord[]> {
    return this.request('GET', '/checkpoints');
  }

  getCheckpoint(ref: string): Promise<CheckpointRecord> {
    return this.request('GET', `/checkpoints/${encodeURIComponent(ref)}`);
  }

  deleteCheckpoint(ref: string): Promise<CheckpointRecord> {
    return this.request('DELETE', `/checkpoints/${encodeURIComponent(ref)}`);
  }

  pauseVm(ref: string): Promise<VmRecord> {
    return this.request('POST', `/vms/${encodeURIComponent(ref)}/pause`);
  }

  resumeVm(ref: string): Promise<VmRecord> {
    return this.request('POST', `/vms/${encodeURIComponent(ref)}/resume`);
  }

  killVm(ref: string): Promise<VmRecord> {
    return this.request('POST', `/vms/${encodeURIComponent(ref)}/kill`);
  }

  deleteVm(ref: string): Promise<VmRecord> {
    return this.request('DELETE', `/vms/${encodeURIComponent(ref)}`);
  }

  async exec(ref: string, path: string, args: string[], options: { input?: Buffer; timeoutMs?: number } = {}): Promise<ExecOutput> {
    const result = await this.request<{ exitCode: number | null; signal: number | null; stdout: string; stderr: string }>('POST', `/vms/${encodeURIComponent(ref)}/exec`, {
      path,
      args,
      ...(options.input ? { input: options.input.toString('base64') } : {}),
      ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
    });
    return { exitCode: result.exitCode, signal: result.signal, stdout: Buffer.from(result.stdout, 'base64'), stderr: Buffer.from(result.stderr, 'base64') };
  }

  console(ref: string, bytes?: number): Promise<string> {
    return this.request('GET', `/vms/${encodeURIComponent(ref)}/console${bytes ? `?bytes=${bytes}` : ''}`);
  }

  listTasks(limit = 50): Promise<TaskRecord[]> {
    return this.request('GET', `/tasks?limit=${limit}`);
  }

  getTask(id: string): Promise<TaskRecord> {
    return this.request('GET', `/tasks/${encodeURIComponent(id)}`);
  }

  /** Cancels a running task that allows it (a checkpoint being written); resolves with the task once it has rolled back. */
  cancelTask(id: string): Promise<TaskRecord> {
    return this.request('POST', `/tasks/${encodeURIComponent(id)}/cancel`);
  }

  /** Polls the task until it finishes, reporting progress; throws the task's error if it failed. */
  async waitTask(id: string, onProgress?: (task: TaskRecord) => void, intervalMs = 200): Promise<TaskRecord> {
    let last = '';
    while (true) {
      const task = await this.getTask(id);
      const seen = `${task.progress}|${task.message}|${task.state}`;
      if (seen !== last) onProgress?.(task);
      last = seen;
      if (task.state === 'succeeded') return task;
      if (task.state === 'failed') {
        const e = task.error ?? { code: 'TASK_FAILED', message: task.message, details: {} };
        throw new OffshootError(e.code, e.message, { ...e.details, taskId: task.id }, 500);
      }
      await sleep(intervalMs);
    }
  }

  /** The server-sent event stream, as an async iterable of engine events. */
  async *events(signal?: AbortSignal): AsyncGenerator<EngineEvent> {
    const response = await this.send('/events', { method: 'GET', headers: { authorization: `Bearer ${this.options.token}` }, signal });
    if (!response.ok || !response.body) throw new OffshootError(`HTTP_${response.status}`, `cannot open the event stream: ${response.statusText}`, {}, response.status);
    const pending: EngineEvent[] = [];
    const parser = createParser({
      onEvent: (message) => {
        if (message.event === 'hello' || message.event === 'ping') return;
        pending.push(JSON.parse(message.data) as EngineEvent);
      },
    });
    const decoder = new TextDecoder();
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      parser.feed(decoder.decode(chunk, { stream: true }));
      while (pending.length > 0) yield pending.shift() as EngineEvent;
    }
  }
}
