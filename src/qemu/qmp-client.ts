// Command layer of the QEMU Machine Protocol (QMP), over json-lines.ts.
//
// connect: read the greeting {"QMP": {...}}, send qmp_capabilities, and the
// client is ready. execute: every command carries a unique id; replies are
// matched by id, so concurrent calls are fine and a late reply (after a
// timeout) is dropped. Events go to scoped subscriptions that buffer from
// the moment they are made and are async-iterable.
//
// Disconnect semantics: when the socket closes (QEMU exited or was killed,
// or close() was called) every pending call rejects with
// QmpDisconnectedError at once, later calls reject immediately, and every
// event subscription ends.
//
// QEMU 7.2 facts this code relies on (checked against the real binary):
// - Lines end with "\r\n". The greeting is the first line.
// - QEMU serves one QMP client per socket at a time: a second client
//   connects, but gets no greeting until the first one disconnects (so a
//   stuck client shows up here as a greeting timeout).
// - An event caused by a command can arrive BEFORE that command's reply
//   (`stop` sends STOP, then {"return": {}}). Subscribe before executing.
// - `quit` replies, sends SHUTDOWN, and closes the socket; the reply may be
//   lost in the race, so quit() treats the disconnect as success.
import { JsonLinesConnection } from './json-lines.ts';
import type { JsonLinesCloseInfo } from './json-lines.ts';
import { QmpCommandError, QmpDisconnectedError, QmpProtocolError, QmpTimeoutError } from './qemu-errors.ts';

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpGreeting {
  QMP: { version: QmpVersion; capabilities: string[] };
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: QmpTimestamp;
}

export interface QmpStatus {
  running: boolean;
  /** QEMU's RunState: "running", "paused", "inmigrate", "postmigrate", "shutdown", ... */
  status: string;
}

export interface QmpConnectOptions {
  /** Time limit for connecting, the greeting and capabilities negotiation. Default 5000 ms. */
  timeoutMs?: number;
  /** Default time limit of each command. Default 30000 ms. */
  commandTimeoutMs?: number;
  /** Called for protocol oddities that do not break the connection (garbage lines, unmatched replies). */
  onWarning?: (message: string, details: Record<string, unknown>) => void;
}

export interface QmpExecuteOptions {
  /** Time limit for this command; overrides the client default. */
  timeoutMs?: number;
}

export interface QmpWaitForEventOptions {
  /** Default: the client's command timeout. */
  timeoutMs?: number;
  predicate?: (event: QmpEvent) => boolean;
  signal?: AbortSignal;
}

export type QmpCloseInfo = JsonLinesCloseInfo;

const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_BUFFERED_EVENTS = 10_000;

interface PendingCall {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

type ClientState = 'greeting' | 'ready' | 'closed';

export class QmpClient {
  readonly socketPath: string;
  /** Settles once when the connection has closed. Never rejects. */
  readonly closed: Promise<QmpCloseInfo>;

  #conn: JsonLinesConnection | undefined;
  #state: ClientState = 'greeting';
  #greeting: QmpGreeting | undefined;
  #greetingWaiter: { resolve: (g: QmpGreeting) => void; reject: (e: Error) => void } | undefined;
  #nextId = 1;
  readonly #idPrefix = `os${process.pid.toString(36)}`;
  readonly #pending = new Map<string, PendingCall>();
  readonly #subscriptions = new Set<QmpEventSubscription>();
  readonly #commandTimeoutMs: number;
  readonly #onWarning: QmpConnectOptions['onWarning'];
  #closeInfo: QmpCloseInfo | undefined;
  #settleClosed!: (info: QmpCloseInfo) => void;

  private constructor(socketPath: string, options: QmpConnectOptions) {
    this.socketPath = socketPath;
    this.#commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.#onWarning = options.onWarning;
    this.closed = new Promise((resolve) => {
      this.#settleClosed = resolve;
    });
  }

  /**
   * Connects to a QMP socket, reads the greeting and negotiates capabilities.
   * Throws SocketConnectError (no socket), QmpTimeoutError (no greeting in
   * time, e.g. another client holds the socket), QmpProtocolError or
   * QmpDisconnectedError.
   */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const client = new QmpClient(socketPath, options);
    const greeting = new Promise<QmpGreeting>((resolve, reject) => {
      client.#greetingWaiter = { resolve, reject };
    });
    const started = Date.now();
    const conn = await JsonLinesConnection.connect(
      socketPath,
      {
        onMessage: (value) => client.#onMessage(value),
        onInvalidLine: (line, error) => client.#warn('unparseable line from QMP server', { line: line.slice(0, 200), error: error.message }),
      },
      { timeoutMs },
    );
    client.#conn = conn;
    void conn.closed.then((info) => client.#onClosed(info));
    let timer: NodeJS.Timeout | undefined;
    try {
      const remaining = Math.max(1, timeoutMs - (Date.now() - started));
      await Promise.race([
        greeting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new QmpTimeoutError('greeting', timeoutMs, { socketPath })), remaining);
        }),
      ]);
      await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, timeoutMs - (Date.now() - started)) });
      client.#state = 'ready';
      return client;
    } catch (err) {
      await client.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The server's greeting (version and capabilities). */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new QmpProtocolError('no QMP greeting received yet', { socketPath: this.socketPath });
    return this.#greeting;
  }

  get version(): QmpVersion {
    return this.greeting.QMP.version;
  }

  get isClosed(): boolean {
    return this.#state === 'closed';
  }

  /**
   * Runs a QMP command and resolves with its "return" value. Rejects with
   * QmpCommandError (QEMU said no), QmpTimeoutError (no reply in time; a late
   * reply is dropped) or QmpDisconnectedError.
   */
  execute<T = unknown>(command: string, args?: object, options: QmpExecuteOptions = {}): Promise<T> {
    const conn = this.#conn;
    if (this.#state === 'closed' || !conn) {
      return Promise.reject(new QmpDisconnectedError(command, this.#closeInfo?.reason ?? 'client is closed'));
    }
    const id = `${this.#idPrefix}-${this.#nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.#commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const call: PendingCall = { command, resolve: resolve as (value: unknown) => void, reject, timer: undefined };
      if (Number.isFinite(timeoutMs) && timeoutMs > 0) {
        call.timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new QmpTimeoutError(`command ${command}`, timeoutMs, { command, id, socketPath: this.socketPath }));
        }, timeoutMs);
      }
      this.#pending.set(id, call);
      try {
        conn.send(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
      } catch (err) {
        clearTimeout(call.timer);
        this.#pending.delete(id);
        reject(new QmpDisconnectedError(command, conn.closeReason ?? 'write failed', err));
      }
    });
  }

  /**
   * Subscribes to events (all, or those named). The subscription buffers
   * every matching event from this moment on, so make it BEFORE running the
   * command that causes the event: QEMU may send the event before the reply.
   * Iterate with `for await`; iteration ends when the client closes or the
   * subscription is closed. Close it when done, or it keeps buffering.
   */
  events(names?: string | string[]): QmpEventSubscription {
    const filter = names === undefined ? undefined : new Set(Array.isArray(names) ? names : [names]);
    const sub = new QmpEventSubscription(filter, DEFAULT_MAX_BUFFERED_EVENTS, (s) => this.#subscriptions.delete(s));
    if (this.#state === 'closed') sub.end();
    else this.#subscriptions.add(sub);
    return sub;
  }

  /**
   * Waits for the next event named `name` (that passes `predicate`). The
   * subscription starts when this is called, so call it before the command
   * that triggers the event and await it after:
   *
   *   const stopped = qmp.waitForEvent('STOP');
   *   await qmp.stop();
   *   await stopped;
   *
   * Rejects with QmpTimeoutError, QmpDisconnectedError, or the signal's reason.
   */
  async waitForEvent(name: string, options: QmpWaitForEventOptions = {}): Promise<QmpEvent> {
    const timeoutMs = options.timeoutMs ?? this.#commandTimeoutMs;
    const sub = this.events(name);
    const { signal, predicate } = options;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      signal?.throwIfAborted();
      const stop = new Promise<never>((_, reject) => {
        if (Number.isFinite(timeoutMs) && timeoutMs > 0) {
          timer = setTimeout(() => reject(new QmpTimeoutError(`wait for event ${name}`, timeoutMs, { event: name })), timeoutMs);
        }
        if (signal) {
          onAbort = () => reject(signal.reason);
          signal.addEventListener('abort', onAbort, { once: true });
        }
      });
      const found = (async (): Promise<QmpEvent> => {
        for await (const event of sub) {
          if (!predicate || predicate(event)) return event;
        }
        throw new QmpDisconnectedError(undefined, `${this.#closeInfo?.reason ?? 'client closed'} while waiting for event ${name}`);
      })();
      // Once `stop` wins, closing the subscription ends `found` with a rejection nobody awaits.
      found.catch(() => undefined);
      return await Promise.race([found, stop]);
    } finally {
      clearTimeout(timer);
      if (signal && onAbort) signal.removeEventListener('abort', onAbort);
      sub.close();
    }
  }

  /** Calls `callback` once when the connection closes (at once if it already has). Returns an unsubscribe function. */
  onClose(callback: (info: QmpCloseInfo) => void): () => void {
    let active = true;
    void this.closed.then((info) => {
      if (active) callback(info);
    });
    return () => {
      active = false;
    };
  }

  /** Closes the connection (idempotent). Pending calls reject with QmpDisconnectedError. */
  async close(): Promise<void> {
    if (this.#conn) await this.#conn.close('closed by client');
    else this.#onClosed({ reason: 'closed by client' });
    await this.closed;
  }

  // ---- typed helpers for the VM lifecycle ----

  async queryStatus(): Promise<QmpStatus> {
    const r = await this.execute<{ running: boolean; status: string }>('query-status');
    return { running: r.running, status: r.status };
  }

  /** Pauses the guest's vCPUs (QEMU sends the STOP event). */
  async stop(): Promise<void> {
    await this.execute('stop');
  }

  /** Resumes the guest's vCPUs (QEMU sends the RESUME event). */
  async cont(): Promise<void> {
    await this.execute('cont');
  }

  /** Asks the guest to power off (ACPI); it returns before the guest reacts, if it does. */
  async systemPowerdown(): Promise<void> {
    await this.execute('system_powerdown');
  }

  /** Ends QEMU. The disconnect that follows (even before the reply) counts as success. */
  async quit(options: QmpExecuteOptions = {}): Promise<void> {
    try {
      await this.execute('quit', undefined, options);
    } catch (err) {
      if (err instanceof QmpDisconnectedError) return;
      throw err;
    }
  }

  // ---- internals ----

  #onMessage(value: unknown): void {
    if (!isObject(value)) {
      this.#warn('QMP message is not an object', { value });
      return;
    }
    if (this.#state === 'greeting' && this.#greetingWaiter) {
      const waiter = this.#greetingWaiter;
      this.#greetingWaiter = undefined;
      if (isGreeting(value)) {
        this.#greeting = value;
        waiter.resolve(value);
      } else {
        waiter.reject(new QmpProtocolError('the first QMP message is not a greeting', { socketPath: this.socketPath, message: value }));
      }
      return;
    }
    if (typeof value.event === 'string') {
      const event: QmpEvent = {
        event: value.event,
        data: isObject(value.data) ? value.data : {},
        timestamp: isTimestamp(value.timestamp) ? value.timestamp : { seconds: 0, microseconds: 0 },
      };
      for (const sub of this.#subscriptions) sub.push(event);
      return;
    }
    const id = typeof value.id === 'string' ? value.id : undefined;
    const call = id === undefined ? undefined : this.#pending.get(id);
    if (!call || id === undefined) {
      this.#warn('QMP reply matches no pending command (late reply after a timeout, or an error without id)', { message: value });
      return;
    }
    this.#pending.delete(id);
    clearTimeout(call.timer);
    if ('return' in value) {
      call.resolve(value.return);
    } else if (isObject(value.error)) {
      const errorClass = typeof value.error.class === 'string' ? value.error.class : 'GenericError';
      const desc = typeof value.error.desc === 'string' ? value.error.desc : JSON.stringify(value.error);
      call.reject(new QmpCommandError(call.command, errorClass, desc));
    } else {
      call.reject(new QmpProtocolError(`QMP reply to ${call.command} has neither "return" nor "error"`, { message: value }));
    }
  }

  #onClosed(info: QmpCloseInfo): void {
    if (this.#closeInfo) return;
    this.#closeInfo = info;
    this.#state = 'closed';
    if (this.#greetingWaiter) {
      this.#greetingWaiter.reject(new QmpDisconnectedError(undefined, `${info.reason} before the greeting`, info.error));
      this.#greetingWaiter = undefined;
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const call of pending) {
      clearTimeout(call.timer);
      call.reject(new QmpDisconnectedError(call.command, info.reason, info.error));
    }
    for (const sub of this.#subscriptions) sub.end();
    this.#subscriptions.clear();
    this.#settleClosed(info);
  }

  #warn(message: string, details: Record<string, unknown>): void {
    this.#onWarning?.(message, { socketPath: this.socketPath, ...details });
  }
}

/**
 * Events of one subscription: async-iterable, buffered from creation. When
 * more than `maxBuffered` events wait unread, the oldest are dropped (and
 * counted in `dropped`). Ends when closed or when the client closes.
 */
export class QmpEventSubscription implements AsyncIterable<QmpEvent> {
  #buffer: QmpEvent[] = [];
  #waiters: Array<(result: IteratorResult<QmpEvent>) => void> = [];
  #ended = false;
  #dropped = 0;
  readonly #filter: Set<string> | undefined;
  readonly #maxBuffered: number;
  readonly #detach: (sub: QmpEventSubscription) => void;

  constructor(filter: Set<string> | undefined, maxBuffered: number, detach: (sub: QmpEventSubscription) => void) {
    this.#filter = filter;
    this.#maxBuffered = maxBuffered;
    this.#detach = detach;
  }

  /** Events dropped because the buffer was full. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Delivered by the client. */
  push(event: QmpEvent): void {
    if (this.#ended || (this.#filter && !this.#filter.has(event.event))) return;
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter({ value: event, done: false });
      return;
    }
    this.#buffer.push(event);
    if (this.#buffer.length > this.#maxBuffered) {
      this.#buffer.shift();
      this.#dropped++;
    }
  }

  /** Ends iteration after the buffered events (the client closed). */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const waiter of this.#waiters.splice(0)) waiter({ value: undefined, done: true });
  }

  /** Stops the subscription now; buffered events are discarded. Idempotent. */
  close(): void {
    this.#buffer = [];
    this.end();
    this.#detach(this);
  }

  /** The next event, or done when the subscription has ended. */
  next(): Promise<IteratorResult<QmpEvent>> {
    const event = this.#buffer.shift();
    if (event) return Promise.resolve({ value: event, done: false });
    if (this.#ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  [Symbol.asyncIterator](): AsyncIterator<QmpEvent> {
    return {
      next: () => this.next(),
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isGreeting(value: Record<string, unknown>): value is Record<string, unknown> & QmpGreeting {
  const qmp = value.QMP;
  if (!isObject(qmp) || !isObject(qmp.version) || !Array.isArray(qmp.capabilities)) return false;
  const qemu = qmp.version.qemu;
  return isObject(qemu) && typeof qemu.major === 'number' && typeof qemu.minor === 'number' && typeof qemu.micro === 'number';
}

function isTimestamp(value: unknown): value is QmpTimestamp {
  return isObject(value) && typeof value.seconds === 'number' && typeof value.microseconds === 'number';
}
