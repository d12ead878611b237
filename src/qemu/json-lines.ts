// Protocol layer under the QMP and QGA clients: one connection to a unix
// socket that carries newline-delimited JSON. It knows nothing of commands,
// ids or greetings; it frames, parses, and reports.
//
// - An explicit state: 'connecting' → 'open' → 'closed' (never back).
// - A reader loop: bytes are split on "\n" (QMP ends lines with "\r\n"; JSON
//   ignores the "\r"), each line is parsed and handed to `onMessage`. A line
//   that is not JSON goes to `onInvalidLine` and the connection stays up.
// - An optional sentinel byte (QGA's 0xFF from guest-sync-delimited): a line
//   holding it is cut after its last occurrence, and the message parsed from
//   the rest is flagged `afterSentinel`. Bytes are handled as bytes, so a raw
//   0xFF never goes through a UTF-8 decoder.
// - `closed` settles exactly once, when the socket has ended or failed (or
//   `close()` was called), with the reason and the error if there was one.
import net from 'node:net';
import { SocketClosedError, SocketConnectError } from './qemu-errors.ts';

export type JsonLinesState = 'connecting' | 'open' | 'closed';

export interface JsonLinesCloseInfo {
  /** Why the connection closed, for messages: "closed by peer", "socket error: ECONNRESET", "closed locally: ...". */
  reason: string;
  /** The socket error, when the connection ended because of one. */
  error?: Error;
}

export interface JsonLinesMessageMeta {
  /** The line held the sentinel byte and this message was parsed from what followed it. */
  afterSentinel: boolean;
}

export interface JsonLinesHandler {
  onMessage(value: unknown, meta: JsonLinesMessageMeta): void;
  onInvalidLine?(line: string, error: Error): void;
}

export interface JsonLinesOptions {
  /** Time limit for the socket connect itself. Default 5000 ms. */
  timeoutMs?: number;
  /** A byte that delimits a fresh message within a line (QGA: 0xFF). */
  sentinel?: number;
  /** A line longer than this closes the connection with an error. Default 256 MiB. */
  maxLineBytes?: number;
}

const NEWLINE = 0x0a;
const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const DEFAULT_MAX_LINE_BYTES = 256 * 1024 * 1024;

export class JsonLinesConnection {
  readonly socketPath: string;
  /** Settles once, when the connection has closed for whatever reason. Never rejects. */
  readonly closed: Promise<JsonLinesCloseInfo>;

  #state: JsonLinesState = 'connecting';
  readonly #socket: net.Socket;
  readonly #handler: JsonLinesHandler;
  readonly #sentinel: number | undefined;
  readonly #maxLineBytes: number;
  #chunks: Buffer[] = [];
  #bufferedBytes = 0;
  #closeReason: string | undefined;
  #closeError: Error | undefined;
  #settleClosed!: (info: JsonLinesCloseInfo) => void;

  private constructor(socketPath: string, handler: JsonLinesHandler, options: JsonLinesOptions) {
    this.socketPath = socketPath;
    this.#handler = handler;
    this.#sentinel = options.sentinel;
    this.#maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    this.closed = new Promise((resolve) => {
      this.#settleClosed = resolve;
    });
    this.#socket = new net.Socket();
  }

  /**
   * Connects to the unix socket at `socketPath`. The handler is attached
   * before the first byte can arrive, so nothing (a QMP greeting) is missed.
   * Throws SocketConnectError if the socket cannot be connected in time.
   */
  static async connect(socketPath: string, handler: JsonLinesHandler, options: JsonLinesOptions = {}): Promise<JsonLinesConnection> {
    const conn = new JsonLinesConnection(socketPath, handler, options);
    await conn.#open(options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    return conn;
  }

  get state(): JsonLinesState {
    return this.#state;
  }

  /** Why the connection closed, once it has (undefined while open). */
  get closeReason(): string | undefined {
    return this.#state === 'closed' ? this.#closeReason : undefined;
  }

  /** Sends one JSON value as a line. Throws SocketClosedError when the connection is not open. */
  send(value: unknown): void {
    this.sendRaw(Buffer.from(`${JSON.stringify(value)}\n`, 'utf8'));
  }

  /** Sends bytes as they are (e.g. QGA's 0xFF parser reset). */
  sendRaw(bytes: Buffer): void {
    if (this.#state !== 'open') throw new SocketClosedError(this.socketPath, this.#closeReason ?? this.#state);
    this.#socket.write(bytes);
  }

  /** Closes the connection (idempotent) and resolves when it is closed. */
  async close(reason = 'closed locally'): Promise<JsonLinesCloseInfo> {
    if (this.#state !== 'closed') {
      this.#closeReason ??= reason;
      this.#state = 'closed';
      this.#chunks = [];
      this.#bufferedBytes = 0;
      this.#socket.destroy();
    }
    return this.closed;
  }

  #open(timeoutMs: number): Promise<void> {
    const socket = this.#socket;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        fail(new Error(`connect timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      let failed = false;
      const fail = (err: Error): void => {
        if (failed) return;
        failed = true;
        clearTimeout(timer);
        this.#state = 'closed';
        this.#closeReason = `connect failed: ${err.message}`;
        this.#closeError = err;
        socket.destroy();
        reject(new SocketConnectError(this.socketPath, err));
      };
      socket.once('error', fail);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', fail);
        this.#state = 'open';
        this.#attach();
        resolve();
      });
      // 'close' after a failed connect still settles `closed`, so it settles exactly once in every path.
      socket.once('close', () => this.#onSocketClose());
      socket.connect({ path: this.socketPath });
    });
  }

  #attach(): void {
    const socket = this.#socket;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('end', () => {
      this.#closeReason ??= 'closed by peer';
    });
    socket.on('error', (err: Error) => {
      this.#closeError ??= err;
      const code = (err as NodeJS.ErrnoException).code;
      this.#closeReason ??= `socket error: ${code ?? err.message}`;
    });
  }

  #onSocketClose(): void {
    if (this.#state !== 'closed') this.#state = 'closed';
    this.#flushTail();
    const info: JsonLinesCloseInfo = { reason: this.#closeReason ?? 'closed by peer' };
    this.#closeReason = info.reason;
    if (this.#closeError) info.error = this.#closeError;
    this.#settleClosed(info);
  }

  #onData(chunk: Buffer): void {
    if (this.#state === 'closed') return;
    let start = 0;
    let nl = chunk.indexOf(NEWLINE, start);
    while (nl !== -1) {
      const piece = chunk.subarray(start, nl);
      const line = this.#chunks.length === 0 ? piece : Buffer.concat([...this.#chunks, piece]);
      this.#chunks = [];
      this.#bufferedBytes = 0;
      this.#deliver(line);
      // A handler may have closed the connection.
      if (this.state === 'closed') return;
      start = nl + 1;
      nl = chunk.indexOf(NEWLINE, start);
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.#chunks.push(rest);
      this.#bufferedBytes += rest.length;
      if (this.#bufferedBytes > this.#maxLineBytes) {
        this.#closeError = new Error(`line longer than ${this.#maxLineBytes} bytes`);
        void this.close(`protocol error: line longer than ${this.#maxLineBytes} bytes`);
      }
    }
  }

  /** Bytes left without a final newline when the socket closed: try them as a last line. */
  #flushTail(): void {
    if (this.#chunks.length === 0) return;
    const tail = Buffer.concat(this.#chunks);
    this.#chunks = [];
    this.#bufferedBytes = 0;
    this.#deliver(tail);
  }

  #deliver(raw: Buffer): void {
    let line = raw;
    let afterSentinel = false;
    if (this.#sentinel !== undefined) {
      const at = line.lastIndexOf(this.#sentinel);
      if (at !== -1) {
        const before = line.subarray(0, at);
        if (before.toString('latin1').trim() !== '') this.#invalid(before, new Error('bytes before the sentinel'));
        line = line.subarray(at + 1);
        afterSentinel = true;
      }
    }
    const text = line.toString('utf8').trim();
    if (text === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      this.#invalid(line, err instanceof Error ? err : new Error(String(err)));
      return;
    }
    try {
      this.#handler.onMessage(value, { afterSentinel });
    } catch (err) {
      this.#closeError = err instanceof Error ? err : new Error(String(err));
      void this.close(`message handler threw: ${this.#closeError.message}`);
    }
  }

  #invalid(line: Buffer, error: Error): void {
    this.#handler.onInvalidLine?.(line.toString('utf8'), error);
  }
}
