// A small scriptable fake QMP server on a unix socket, for the protocol edge
// cases real QEMU cannot be made to produce on demand: a missing or broken
// greeting, garbage lines, replies that are late, out of order or never sent,
// and connections dropped with calls pending. Everything else is tested
// against real QEMU (see qmp-contract.ts).
//
// Out of the box it behaves like an idle QEMU 7.2: the greeting, capability
// negotiation (commands before it fail with CommandNotFound), query-status,
// query-version, stop/cont with STOP/RESUME events (sent before the reply, as
// QEMU does), system_powerdown (POWERDOWN), quit (SHUTDOWN, reply, close),
// and CommandNotFound for anything else. A handler per command overrides or
// adds behaviour; a handler may be async, so it can wait for anything (a
// delay, another command) before answering.
//
// With `greeting: null` and `requireCapabilities: false` it also serves as a
// fake guest agent (QGA has no greeting); bytes up to a 0xFF in a request line
// are discarded, like qemu-ga's parser reset.
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export type FakeQmpReply =
  | { return: unknown }
  | { error: { class: string; desc: string } }
  /** Never answer this call. */
  | { noReply: true }
  /** Write these bytes instead of a reply (nothing is added, not even a newline). */
  | { raw: string | Buffer }
  /** Destroy the connection instead of answering. */
  | { drop: true };

export interface FakeQmpCall {
  command: string;
  args: Record<string, unknown>;
  id: unknown;
  connection: FakeQmpConnection;
}

export type FakeQmpHandler = (call: FakeQmpCall, server: FakeQmpServer) => FakeQmpReply | Promise<FakeQmpReply>;

export interface FakeQmpServerOptions {
  /** Socket path; default: a fresh temp dir (removed by close()). */
  socketPath?: string;
  /** The greeting object; `null` sends none. Default: a QEMU 7.2 greeting. */
  greeting?: object | null;
  /** Commands other than qmp_capabilities fail until it is sent. Default true. */
  requireCapabilities?: boolean;
  handlers?: Record<string, FakeQmpHandler>;
  /** Line ending of everything sent. Default "\r\n" (as QEMU). */
  lineEnding?: string;
}

export const FAKE_QMP_VERSION = { qemu: { major: 7, minor: 2, micro: 0 }, package: 'offshoot-fake' };

export class FakeQmpConnection {
  readonly socket: net.Socket;
  negotiated = false;
  #buffer = Buffer.alloc(0);
  readonly #server: FakeQmpServer;

  constructor(socket: net.Socket, server: FakeQmpServer) {
    this.socket = socket;
    this.#server = server;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => undefined);
  }

  /** Sends one JSON object as a line. */
  send(value: object): void {
    this.sendRaw(`${JSON.stringify(value)}${this.#server.lineEnding}`);
  }

  sendRaw(data: string | Buffer): void {
    if (!this.socket.destroyed) this.socket.write(data);
  }

  drop(): void {
    this.socket.destroy();
  }

  #onData(chunk: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    let nl = this.#buffer.indexOf(0x0a);
    while (nl !== -1) {
      let line = this.#buffer.subarray(0, nl);
      this.#buffer = this.#buffer.subarray(nl + 1);
      const reset = line.lastIndexOf(0xff);
      if (reset !== -1) line = line.subarray(reset + 1);
      const text = line.toString('utf8').trim();
      if (text !== '') this.#server.handleLine(this, text);
      nl = this.#buffer.indexOf(0x0a);
    }
  }
}

export class FakeQmpServer {
  readonly socketPath: string;
  readonly lineEnding: string;
  /** Every command received, in order (also while hung). */
  readonly received: FakeQmpCall[] = [];
  readonly connections = new Set<FakeQmpConnection>();
  /** VM run state reported by query-status and changed by stop/cont. */
  running = true;

  readonly #server: net.Server;
  readonly #greeting: object | null;
  readonly #requireCapabilities: boolean;
  readonly #handlers = new Map<string, FakeQmpHandler>();
  readonly #ownedDir: string | undefined;
  readonly #commandWaiters: Array<{ command: string; count: number; resolve: () => void }> = [];
  #hung = false;

  private constructor(socketPath: string, ownedDir: string | undefined, options: FakeQmpServerOptions) {
    this.socketPath = socketPath;
    this.#ownedDir = ownedDir;
    this.lineEnding = options.lineEnding ?? '\r\n';
    this.#greeting = options.greeting === undefined ? { QMP: { version: FAKE_QMP_VERSION, capabilities: ['oob'] } } : options.greeting;
    this.#requireCapabilities = options.requireCapabilities ?? true;
    for (const [name, handler] of Object.entries(options.handlers ?? {})) this.#handlers.set(name, handler);
    this.#server = net.createServer((socket) => this.#accept(socket));
  }

  static async start(options: FakeQmpServerOptions = {}): Promise<FakeQmpServer> {
    let ownedDir: string | undefined;
    let socketPath = options.socketPath;
    if (socketPath === undefined) {
      ownedDir = await mkdtemp(path.join(tmpdir(), 'offshoot-fake-qmp-'));
      socketPath = path.join(ownedDir, 'qmp.sock');
    }
    const server = new FakeQmpServer(socketPath, ownedDir, options);
    await new Promise<void>((resolve, reject) => {
      server.#server.once('error', reject);
      server.#server.listen(socketPath, () => {
        server.#server.off('error', reject);
        resolve();
      });
    });
    return server;
  }

  /** Adds or replaces the handler of one command. */
  setHandler(command: string, handler: FakeQmpHandler): void {
    this.#handlers.set(command, handler);
  }

  /** Sends an event to every connection. */
  emitEvent(event: string, data?: Record<string, unknown>): void {
    for (const conn of this.connections) conn.send(eventMessage(event, data));
  }

  /** Sends raw bytes (garbage, partial lines) to every connection. */
  sendRaw(data: string | Buffer): void {
    for (const conn of this.connections) conn.sendRaw(data);
  }

  /** From now on, record commands but answer none (like a frozen QEMU). */
  hang(): void {
    this.#hung = true;
  }

  /** Destroys every connection (calls pending on them stay unanswered). */
  dropConnections(): void {
    for (const conn of this.connections) conn.drop();
  }

  /** Resolves once `count` calls of `command` have been received in total. */
  waitForCommand(command: string, count = 1): Promise<void> {
    if (this.#count(command) >= count) return Promise.resolve();
    return new Promise((resolve) => this.#commandWaiters.push({ command, count, resolve }));
  }

  /** Like a QEMU that died: drops every connection and stops listening. */
  async kill(): Promise<void> {
    this.dropConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** Stops the server and removes its temp dir (if it made one). Idempotent. */
  async close(): Promise<void> {
    this.dropConnections();
    if (this.#server.listening) await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    if (this.#ownedDir) await rm(this.#ownedDir, { recursive: true, force: true });
  }

  /** Parses one request line from a connection and answers it. */
  handleLine(conn: FakeQmpConnection, text: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      conn.send({ error: { class: 'GenericError', desc: `JSON parse error, invalid keyword '${text.slice(0, 20)}'` } });
      return;
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      conn.send({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
      return;
    }
    const req = msg as Record<string, unknown>;
    const command = typeof req.execute === 'string' ? req.execute : '';
    const args = typeof req.arguments === 'object' && req.arguments !== null ? (req.arguments as Record<string, unknown>) : {};
    const call: FakeQmpCall = { command, args, id: req.id, connection: conn };
    this.received.push(call);
    this.#notifyWaiters();
    if (this.#hung) return;
    void this.#answer(call);
  }

  async #answer(call: FakeQmpCall): Promise<void> {
    const { connection: conn } = call;
    let reply: FakeQmpReply;
    try {
      reply = await this.#dispatch(call);
    } catch (err) {
      reply = { error: { class: 'GenericError', desc: `fake handler threw: ${err instanceof Error ? err.message : String(err)}` } };
    }
    if (this.#hung) return;
    if ('noReply' in reply) return;
    if ('drop' in reply) {
      conn.drop();
      return;
    }
    if ('raw' in reply) {
      conn.sendRaw(reply.raw);
      return;
    }
    conn.send(call.id === undefined ? reply : { ...reply, id: call.id });
  }

  #dispatch(call: FakeQmpCall): FakeQmpReply | Promise<FakeQmpReply> {
    const handler = this.#handlers.get(call.command);
    if (handler) {
      if (call.command === 'qmp_capabilities') call.connection.negotiated = true;
      return handler(call, this);
    }
    if (call.command === 'qmp_capabilities') {
      call.connection.negotiated = true;
      return { return: {} };
    }
    if (this.#requireCapabilities && !call.connection.negotiated) {
      return { error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } };
    }
    return this.#builtin(call);
  }

  #builtin(call: FakeQmpCall): FakeQmpReply {
    const conn = call.connection;
    switch (call.command) {
      case 'query-status':
        return { return: { status: this.running ? 'running' : 'paused', singlestep: false, running: this.running } };
      case 'query-version':
        return { return: FAKE_QMP_VERSION };
      case 'stop':
        if (this.running) {
          this.running = false;
          this.emitEvent('STOP');
        }
        return { return: {} };
      case 'cont':
        if (!this.running) {
          this.running = true;
          this.emitEvent('RESUME');
        }
        return { return: {} };
      case 'system_powerdown':
        this.emitEvent('POWERDOWN');
        return { return: {} };
      case 'quit':
        this.emitEvent('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
        conn.send({ return: {}, id: call.id });
        setImmediate(() => this.dropConnections());
        return { noReply: true };
      default:
        return { error: { class: 'CommandNotFound', desc: `The command ${call.command} has not been found` } };
    }
  }

  #accept(socket: net.Socket): void {
    const conn = new FakeQmpConnection(socket, this);
    this.connections.add(conn);
    socket.on('close', () => this.connections.delete(conn));
    if (this.#greeting !== null) conn.send(this.#greeting);
  }

  #count(command: string): number {
    return this.received.filter((c) => c.command === command).length;
  }

  #notifyWaiters(): void {
    for (let i = this.#commandWaiters.length - 1; i >= 0; i--) {
      const waiter = this.#commandWaiters[i];
      if (waiter && this.#count(waiter.command) >= waiter.count) {
        this.#commandWaiters.splice(i, 1);
        waiter.resolve();
      }
    }
  }
}

function eventMessage(event: string, data?: Record<string, unknown>): object {
  const now = Date.now();
  const timestamp = { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 };
  return data === undefined ? { timestamp, event } : { timestamp, event, data };
}
