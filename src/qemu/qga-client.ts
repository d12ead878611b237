// Client of the QEMU guest agent (qemu-ga), over the unix socket of a
// `-chardev socket,server=on,wait=off` attached to the guest's virtserialport
// (or qemu-ga's own `-m unix-listen` socket, as the tests use).
//
// QGA is not QMP: there is no greeting, and the channel outlives agents and
// clients, so it may hold stale bytes (replies nobody read, a half-sent
// request) or have no agent behind it yet. Hence:
// - sync() sends 0xFF (which makes qemu-ga's JSON parser drop any partial
//   request; it answers that with a parse error we ignore) and then
//   guest-sync-delimited with a random id. Everything is discarded until the
//   0xFF the agent puts before its reply, followed by {"return": <our id>}.
// - One command at a time (a queue). Each carries an id, which qemu-ga
//   echoes, so a late reply to a timed-out command is dropped.
// - waitForAgent() retries connect + sync with short attempts until an
//   agent answers.
// On disconnect every pending and queued call rejects with
// QgaDisconnectedError. Over virtio-serial the socket belongs to QEMU, so a
// dead agent is not a disconnect there: it shows up as QgaTimeoutError.
import { randomInt } from 'node:crypto';
import { sleep } from '../common/index.ts';
import { JsonLinesConnection } from './json-lines.ts';
import type { JsonLinesCloseInfo } from './json-lines.ts';
import { QgaCommandError, QgaDisconnectedError, QgaTimeoutError, SocketClosedError, SocketConnectError } from './qemu-errors.ts';

export interface QgaConnectOptions {
  /** Time limit for the connect and the initial sync. Default 5000 ms. */
  timeoutMs?: number;
  /** Sync right after connecting (default true). */
  sync?: boolean;
  /** Default time limit of each command. Default 30000 ms. */
  commandTimeoutMs?: number;
  /** Bytes per guest-file-read/-write call. Default 256 KiB. */
  fileChunkBytes?: number;
  /** Called for discarded stale replies and unparseable lines. */
  onWarning?: (message: string, details: Record<string, unknown>) => void;
}

export interface QgaWaitOptions extends Omit<QgaConnectOptions, 'timeoutMs' | 'sync'> {
  /** Overall time limit. */
  timeoutMs: number;
  /** Time limit of one connect + sync attempt. Default 1000 ms. */
  attemptTimeoutMs?: number;
  signal?: AbortSignal;
}

export interface QgaExecOptions {
  /** Bytes for the process's stdin. */
  input?: Buffer | string;
  /** Environment as "NAME=value" strings (replaces the agent's environment). */
  env?: string[];
  /** Limit for the whole run, polling included. Default: the client's command timeout. */
  timeoutMs?: number;
  /**
   * ms to wait before each exit poll, given the ms since the guest-exec was sent and the polls made so far.
   * Default: the first poll at once, then 5 ms doubling to 200 ms (made for long commands).
   */
  pollDelayMs?: (elapsedMs: number, polls: number) => number;
}

export interface QgaExecResult {
  /** Exit status, or null when a signal ended the process. */
  exitCode: number | null;
  /** The signal that ended the process, or null. */
  signal: number | null;
  stdout: Buffer;
  stderr: Buffer;
  /** qemu-ga caps captured output (16 MiB in 7.2) and says when it cut it. */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** ms: the guest-exec round trip (the guest started the process), then until its exit was seen; the exit polls made. */
  timings: { execMs: number; exitMs: number; polls: number };
}

/** One command of a batch (see executeBatch). */
export interface QgaBatchCall {
  command: string;
  args?: object;
}

/** The outcome of one command of a batch: its "return" value, or the agent's error for it. */
export type QgaBatchOutcome = { ok: true; value: unknown } | { ok: false; error: QgaCommandError };

export interface QgaInfo {
  version: string;
  supported_commands: Array<{ name: string; enabled: boolean; 'success-response': boolean }>;
}

export type QgaShutdownMode = 'powerdown' | 'halt' | 'reboot';
export type QgaCloseInfo = JsonLinesCloseInfo;

interface GuestExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

interface InFlight {
  command: string;
  /** Command id, or the guest-sync-delimited id for a sync. */
  id: string | number;
  sync: boolean;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

const SENTINEL = 0xff;
const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
const DEFAULT_ATTEMPT_TIMEOUT_MS = 1000;
const DEFAULT_FILE_CHUNK_BYTES = 256 * 1024;
/** How long shutdown() waits for an error reply before taking silence as success. */
const SHUTDOWN_GRACE_MS = 1000;

export class QgaClient {
  readonly socketPath: string;
  /** Settles once when the connection has closed. Never rejects. */
  readonly closed: Promise<QgaCloseInfo>;

  readonly #conn: JsonLinesConnection;
  readonly #commandTimeoutMs: number;
  readonly #chunkBytes: number;
  readonly #onWarning: QgaConnectOptions['onWarning'];
  #tail: Promise<unknown> = Promise.resolve();
  #inFlight: InFlight | undefined;
  #nextId = 1;
  #closeInfo: QgaCloseInfo | undefined;

  private constructor(conn: JsonLinesConnection, options: QgaConnectOptions, closed: Promise<QgaCloseInfo>) {
    this.socketPath = conn.socketPath;
    this.#conn = conn;
    this.#commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.#chunkBytes = options.fileChunkBytes ?? DEFAULT_FILE_CHUNK_BYTES;
    this.#onWarning = options.onWarning;
    this.closed = closed;
  }

  /**
   * Connects to the agent's socket and (unless `sync: false`) syncs. Throws
   * SocketConnectError, or QgaTimeoutError when no agent answers the sync.
   */
  static async connect(socketPath: string, options: QgaConnectOptions = {}): Promise<QgaClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const started = Date.now();
    // The connection exists before the client does; its callbacks find the client here.
    const ref: { client?: QgaClient } = {};
    const conn = await JsonLinesConnection.connect(
      socketPath,
      {
        onMessage: (value, meta) => {
          if (ref.client) ref.client.#onMessage(value, meta.afterSentinel);
        },
        onInvalidLine: (line, error) => {
          if (ref.client) ref.client.#warn('unparseable line from guest agent', { line: line.slice(0, 200), error: error.message });
        },
      },
      { timeoutMs, sentinel: SENTINEL },
    );
    const closed = conn.closed.then((info) => {
      if (ref.client) ref.client.#onClosed(info);
      return info;
    });
    const client = new QgaClient(conn, options, closed);
    ref.client = client;
    if (options.sync ?? true) {
      try {
        await client.sync({ timeoutMs: Math.max(1, timeoutMs - (Date.now() - started)) });
      } catch (err) {
        await client.close();
        throw err;
      }
    }
    return client;
  }

  /**
   * Waits until an agent answers on `socketPath`: connects (retrying while
   * the socket is missing or refuses) and syncs with short attempts, keeping
   * the connection between attempts. Throws QgaTimeoutError (a TimeoutError)
   * when nothing answers within `timeoutMs`.
   */
  static async waitForAgent(socketPath: string, options: QgaWaitOptions): Promise<QgaClient> {
    const { timeoutMs, signal } = options;
    const attemptMs = options.attemptTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    let client: QgaClient | undefined;
    let lastError: unknown;
    let attempts = 0;
    try {
      while (true) {
        signal?.throwIfAborted();
        const remaining = deadline - Date.now();
        if (remaining <= 0) break;
        const limit = Math.min(attemptMs, remaining);
        attempts++;
        try {
          if (!client || client.isClosed) {
            client = undefined;
            client = await QgaClient.connect(socketPath, { ...options, timeoutMs: limit, sync: false });
          }
          await client.sync({ timeoutMs: limit });
          const ready = client;
          client = undefined;
          return ready;
        } catch (err) {
          lastError = err;
          if (!(err instanceof SocketConnectError || err instanceof QgaTimeoutError || err instanceof QgaDisconnectedError)) throw err;
          // A sync timeout already waited; a refused or missing socket retries after a pause.
          if (!(err instanceof QgaTimeoutError)) await sleep(Math.max(0, Math.min(100, deadline - Date.now())));
        }
      }
    } finally {
      await client?.close();
    }
    const last = lastError instanceof Error ? lastError.message : String(lastError);
    throw new QgaTimeoutError('wait for agent', timeoutMs, { socketPath, attempts, lastError: last });
  }

  get isClosed(): boolean {
    return this.#closeInfo !== undefined || this.#conn.state === 'closed';
  }

  /**
   * Resynchronises the channel: resets the agent's parser, sends
   * guest-sync-delimited with a random id, and discards everything until the
   * matching delimited reply. Throws QgaTimeoutError when no agent answers.
   */
  sync(options: { timeoutMs?: number } = {}): Promise<void> {
    const syncId = randomInt(1, 2 ** 31);
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    return this.#run<void>('guest-sync-delimited', timeoutMs, async () => {
      const reply = this.#await('guest-sync-delimited', syncId, true);
      const request = Buffer.from(`${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id: syncId } })}\n`, 'utf8');
      this.#conn.sendRaw(Buffer.concat([Buffer.from([SENTINEL]), request]));
      await reply;
    });
  }

  /**
   * Runs one agent command and resolves with its "return" value. Rejects with
   * QgaCommandError, QgaTimeoutError (the time counts from this call, queue
   * included) or QgaDisconnectedError.
   */
  execute<T = unknown>(command: string, args?: object, options: { timeoutMs?: number } = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.#commandTimeoutMs;
    return this.#run<T>(command, timeoutMs, () => {
      const id = `og${this.#nextId++}`;
      const reply = this.#await(command, id, false);
      this.#conn.send(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
      return reply as Promise<T>;
    });
  }

  async ping(options: { timeoutMs?: number } = {}): Promise<void> {
    await this.execute('guest-ping', undefined, options);
  }

  info(): Promise<QgaInfo> {
    return this.execute<QgaInfo>('guest-info');
  }

  /**
   * Runs a program in the guest with guest-exec (output captured) and polls
   * guest-exec-status until it ends (on the `pollDelayMs` schedule): start()
   * then waitExec(). On timeout the process keeps running in the guest
   * (QGA 7.2 cannot kill it); the error carries its pid.
   */
  async exec(path: string, args: string[] = [], options: QgaExecOptions = {}): Promise<QgaExecResult> {
    const t0 = performance.now();
    const timeoutMs = options.timeoutMs ?? this.#commandTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    const pid = await this.start(path, args, { ...options, timeoutMs });
    const execMs = performance.now() - t0;
    const result = await this.waitExec(pid, { timeoutMs: Math.max(1, deadline - Date.now()), label: `exec ${path}`, details: { path }, ...(options.pollDelayMs ? { pollDelayMs: options.pollDelayMs } : {}) });
    return { ...result, timings: { ...result.timings, execMs } };
  }

  /** Starts a program in the guest with guest-exec (output captured) and returns its pid (waitExec waits for its end). */
  async start(path: string, args: string[] = [], options: Omit<QgaExecOptions, 'pollDelayMs'> = {}): Promise<number> {
    const request: Record<string, unknown> = { path, arg: args, 'capture-output': true };
    if (options.env) request.env = options.env;
    if (options.input !== undefined) request['input-data'] = Buffer.from(options.input).toString('base64');
    const { pid } = await this.execute<{ pid: number }>('guest-exec', request, { timeoutMs: options.timeoutMs ?? this.#commandTimeoutMs });
    return pid;
  }

  /**
   * Polls guest-exec-status for a process start() began until it ends, on the `pollDelayMs` schedule (its
   * elapsed ms count from this call); timings.execMs is 0. Throws QgaTimeoutError with the pid (and `details`)
   * when it does not end in `timeoutMs` (it keeps running in the guest).
   */
  async waitExec(pid: number, options: { timeoutMs?: number; pollDelayMs?: QgaExecOptions['pollDelayMs']; label?: string; details?: Record<string, unknown> } = {}): Promise<QgaExecResult> {
    const t0 = performance.now();
    const timeoutMs = options.timeoutMs ?? this.#commandTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    const pollDelayMs = options.pollDelayMs ?? defaultPollDelayMs;
    const label = options.label ?? `exec pid ${pid}`;
    const details = { ...options.details, pid };
    const left = (): number => Math.max(1, deadline - Date.now());
    let polls = 0;
    while (true) {
      const pause = pollDelayMs(performance.now() - t0, polls);
      if (pause > 0) {
        if (Date.now() + pause >= deadline) throw new QgaTimeoutError(label, timeoutMs, details);
        await sleep(pause);
      }
      let status: GuestExecStatus;
      try {
        polls++;
        status = await this.execute<GuestExecStatus>('guest-exec-status', { pid }, { timeoutMs: left() });
      } catch (err) {
        if (err instanceof QgaTimeoutError) throw new QgaTimeoutError(label, timeoutMs, details);
        throw err;
      }
      if (status.exited) {
        return {
          exitCode: status.signal === undefined ? (status.exitcode ?? null) : null,
          signal: status.signal ?? null,
          stdout: Buffer.from(status['out-data'] ?? '', 'base64'),
          stderr: Buffer.from(status['err-data'] ?? '', 'base64'),
          stdoutTruncated: status['out-truncated'] ?? false,
          stderrTruncated: status['err-truncated'] ?? false,
          timings: { execMs: 0, exitMs: performance.now() - t0, polls },
        };
      }
      if (Date.now() >= deadline) throw new QgaTimeoutError(label, timeoutMs, details);
    }
  }

  /** Reads a whole guest file (guest-file-open/read/close, in chunks). */
  async readFile(path: string): Promise<Buffer> {
    const handle = await this.execute<number>('guest-file-open', { path, mode: 'r' });
    const parts: Buffer[] = [];
    try {
      while (true) {
        const r = await this.execute<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', { handle, count: this.#chunkBytes });
        if (r.count > 0) parts.push(Buffer.from(r['buf-b64'], 'base64'));
        if (r.eof || r.count === 0) break;
      }
    } finally {
      await this.#closeFile(handle);
    }
    return Buffer.concat(parts);
  }

  /** Creates or truncates a guest file and writes `data` to it (in chunks). */
  async writeFile(path: string, data: Buffer | string): Promise<void> {
    const bytes = Buffer.from(data);
    const handle = await this.execute<number>('guest-file-open', { path, mode: 'w' });
    try {
      let offset = 0;
      while (offset < bytes.length) {
        const chunk = bytes.subarray(offset, offset + this.#chunkBytes);
        const w = await this.execute<{ count: number; eof: boolean }>('guest-file-write', { handle, 'buf-b64': chunk.toString('base64'), count: chunk.length });
        if (w.count <= 0) throw new QgaCommandError('guest-file-write', 'GenericError', `wrote 0 bytes at offset ${offset} of ${path}`);
        offset += w.count;
      }
    } finally {
      await this.#closeFile(handle);
    }
  }

  /**
   * Runs several agent commands sent in one write: the agent reads them together and answers each in order,
   * so the guest wakes once for all of them rather than once per command (under TCG every wake-up costs the
   * guest's vCPU). Commands cannot use each other's results. Resolves with each command's outcome (an error
   * of one does not stop the others); rejects with QgaTimeoutError (for the whole batch) or QgaDisconnectedError.
   */
  executeBatch(calls: QgaBatchCall[], options: { timeoutMs?: number } = {}): Promise<QgaBatchOutcome[]> {
    const timeoutMs = options.timeoutMs ?? this.#commandTimeoutMs;
    const label = calls.map((c) => c.command).join(',');
    return this.#run<QgaBatchOutcome[]>(label, timeoutMs, () => {
      if (calls.length === 0) return Promise.resolve([]);
      const ids = calls.map(() => `og${this.#nextId++}`);
      const outcomes: QgaBatchOutcome[] = [];
      const all = new Promise<QgaBatchOutcome[]>((resolve, reject) => {
        // Each reply is taken synchronously in #onMessage, which then expects the next command's id.
        const expect = (i: number): void => {
          const call = calls[i] as QgaBatchCall;
          const next = (outcome: QgaBatchOutcome): void => {
            outcomes.push(outcome);
            if (i + 1 < calls.length) expect(i + 1);
            else resolve(outcomes);
          };
          this.#inFlight = {
            command: call.command,
            id: ids[i] as string,
            sync: false,
            resolve: (value) => next({ ok: true, value }),
            reject: (error) => (error instanceof QgaCommandError ? next({ ok: false, error }) : reject(error)),
          };
        };
        expect(0);
      });
      const lines = calls.map((c, i) => JSON.stringify(c.args === undefined ? { execute: c.command, id: ids[i] } : { execute: c.command, arguments: c.args, id: ids[i] }));
      this.#conn.sendRaw(Buffer.from(`${lines.join('\n')}\n`, 'utf8'));
      return all;
    });
  }

  /**
   * Creates or truncates several small guest files and writes each one's bytes, in two batches (the opens;
   * then the writes and closes): two wake-ups of the guest whatever the number of files. Each file's bytes
   * go in one guest-file-write, so each must fit the client's chunk size. `then`: more commands sent in the
   * second batch, after the closes (the same wake-up). Throws QgaCommandError naming the first file that
   * failed (every file opened is closed), or else the first of `then` that failed.
   */
  async writeFiles(files: Array<{ path: string; data: Buffer | string }>, options: { timeoutMs?: number; then?: QgaBatchCall[] } = {}): Promise<void> {
    const deadline = Date.now() + (options.timeoutMs ?? this.#commandTimeoutMs);
    const left = (): number => Math.max(1, deadline - Date.now());
    const bytes = files.map((f) => Buffer.from(f.data));
    const tooBig = files.find((_, i) => (bytes[i] as Buffer).length > this.#chunkBytes);
    if (tooBig) throw new QgaCommandError('guest-file-write', 'GenericError', `${tooBig.path} is larger than one chunk (${this.#chunkBytes} bytes): write it with writeFile`);
    const opened = await this.executeBatch(files.map((f) => ({ command: 'guest-file-open', args: { path: f.path, mode: 'w' } })), { timeoutMs: left() });
    const calls: QgaBatchCall[] = [];
    const written: number[] = [];
    opened.forEach((o, i) => {
      if (!o.ok) return;
      const data = bytes[i] as Buffer;
      written.push(i);
      if (data.length > 0) calls.push({ command: 'guest-file-write', args: { handle: o.value, 'buf-b64': data.toString('base64'), count: data.length } });
      calls.push({ command: 'guest-file-close', args: { handle: o.value } });
    });
    const then = options.then ?? [];
    const done = await this.executeBatch([...calls, ...then], { timeoutMs: left() });
    const failedOpen = opened.findIndex((o) => !o.ok);
    if (failedOpen >= 0) {
      const { error } = opened[failedOpen] as { ok: false; error: QgaCommandError };
      throw new QgaCommandError('guest-file-open', error.errorClass, `${files[failedOpen]?.path}: ${error.desc}`);
    }
    let k = 0;
    for (const i of written) {
      const data = bytes[i] as Buffer;
      if (data.length > 0) {
        const w = done[k++] as QgaBatchOutcome;
        if (!w.ok) throw new QgaCommandError('guest-file-write', w.error.errorClass, `${files[i]?.path}: ${w.error.desc}`);
        const count = (w.value as { count: number }).count;
        if (count !== data.length) throw new QgaCommandError('guest-file-write', 'GenericError', `wrote ${count} of ${data.length} bytes of ${files[i]?.path}`);
      }
      const c = done[k++] as QgaBatchOutcome;
      if (!c.ok) throw new QgaCommandError('guest-file-close', c.error.errorClass, `${files[i]?.path}: ${c.error.desc}`);
    }
    for (const outcome of done.slice(k)) if (!outcome.ok) throw outcome.error;
  }

  /**
   * Asks the guest to power down (or halt, reboot). qemu-ga never answers a
   * successful guest-shutdown, so silence for a moment, or the disconnect
   * that follows, counts as success; an error reply (e.g. the command is
   * disabled) rejects with QgaCommandError.
   */
  shutdown(mode: QgaShutdownMode = 'powerdown'): Promise<void> {
    return this.#run<void>('guest-shutdown', this.#commandTimeoutMs, async () => {
      const id = `og${this.#nextId++}`;
      const reply = this.#await('guest-shutdown', id, false);
      this.#conn.send({ execute: 'guest-shutdown', arguments: { mode }, id });
      let timer: NodeJS.Timeout | undefined;
      const silence = new Promise<'silence'>((resolve) => {
        timer = setTimeout(() => resolve('silence'), SHUTDOWN_GRACE_MS);
      });
      try {
        await Promise.race([reply, silence]);
      } catch (err) {
        if (!(err instanceof QgaDisconnectedError)) throw err;
      } finally {
        clearTimeout(timer);
        // Nobody waits for a late answer any more.
        reply.catch(() => undefined);
        if (this.#inFlight?.id === id) this.#inFlight = undefined;
      }
    });
  }

  /** Closes the connection (idempotent). Pending and queued calls reject with QgaDisconnectedError. */
  async close(): Promise<void> {
    await this.#conn.close('closed by client');
    await this.closed;
  }

  // ---- internals ----

  async #closeFile(handle: number): Promise<void> {
    try {
      await this.execute('guest-file-close', { handle });
    } catch (err) {
      // The handle dies with the agent; nothing to close after a disconnect.
      if (!(err instanceof QgaDisconnectedError)) throw err;
    }
  }

  /** Queues `fn` behind the call in flight; rejects on timeout (counted from now) or disconnect. */
  #run<T>(command: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    const result = this.#tail.then(async () => {
      if (this.isClosed) throw this.#disconnected(command);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new QgaTimeoutError(command, timeoutMs, { command, socketPath: this.socketPath, queued: true });
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          this.#inFlight = undefined;
          reject(new QgaTimeoutError(command, timeoutMs, { command, socketPath: this.socketPath }));
        }, remaining);
      });
      const work = Promise.resolve().then(fn);
      work.catch(() => undefined);
      try {
        return await Promise.race([work, expired]);
      } catch (err) {
        // The socket closed between the check above and the write.
        if (err instanceof SocketClosedError) {
          this.#inFlight = undefined;
          throw this.#disconnected(command);
        }
        throw err;
      } finally {
        clearTimeout(timer);
      }
    });
    this.#tail = result.catch(() => undefined);
    return result;
  }

  /** Registers the reply the call in flight waits for. */
  #await(command: string, id: string | number, sync: boolean): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.#inFlight = { command, id, sync, resolve, reject };
    });
  }

  #onMessage(value: unknown, afterSentinel: boolean): void {
    const call = this.#inFlight;
    if (!isObject(value)) {
      this.#warn('guest agent message is not an object', { value });
      return;
    }
    if (call?.sync) {
      if (afterSentinel && value.return === call.id) {
        this.#inFlight = undefined;
        call.resolve(undefined);
      } else {
        this.#warn('discarded while syncing', { message: value });
      }
      return;
    }
    if (!call || value.id !== call.id) {
      this.#warn('stale reply from guest agent discarded', { message: value, waitingFor: call?.id });
      return;
    }
    this.#inFlight = undefined;
    if ('return' in value) {
      call.resolve(value.return);
    } else if (isObject(value.error)) {
      const errorClass = typeof value.error.class === 'string' ? value.error.class : 'GenericError';
      const desc = typeof value.error.desc === 'string' ? value.error.desc : JSON.stringify(value.error);
      call.reject(new QgaCommandError(call.command, errorClass, desc));
    } else {
      call.reject(new QgaCommandError(call.command, 'ProtocolError', `reply has neither "return" nor "error": ${JSON.stringify(value)}`));
    }
  }

  #onClosed(info: QgaCloseInfo): void {
    if (this.#closeInfo) return;
    this.#closeInfo = info;
    const call = this.#inFlight;
    this.#inFlight = undefined;
    call?.reject(new QgaDisconnectedError(call.command, info.reason, info.error));
  }

  #disconnected(command: string): QgaDisconnectedError {
    return new QgaDisconnectedError(command, this.#closeInfo?.reason ?? this.#conn.closeReason ?? 'client is closed');
  }

  #warn(message: string, details: Record<string, unknown>): void {
    this.#onWarning?.(message, { socketPath: this.socketPath, ...details });
  }
}

/** exec's default poll schedule: the first poll at once, then 5 ms doubling to 200 ms. */
function defaultPollDelayMs(_elapsedMs: number, polls: number): number {
  return polls === 0 ? 0 : Math.min(200, 5 * 2 ** (polls - 1));
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
