// Typed errors of the QMP and QGA protocol clients. Every error has a stable
// code and readonly context fields, so callers branch on the class (or code)
// and operators read what happened from the message and `details`.
//
//   SOCKET_CONNECT_FAILED   the unix socket could not be connected
//   SOCKET_CLOSED           a write on a connection that is already closed
//   QMP_COMMAND_FAILED      QEMU answered a command with {"error": ...}
//   QMP_TIMEOUT             no answer (greeting, reply, event) in time
//   QMP_DISCONNECTED        the connection closed while a call was pending
//   QMP_PROTOCOL_ERROR      the server broke the protocol (e.g. bad greeting)
//   QGA_COMMAND_FAILED      the guest agent answered with {"error": ...}
//   QGA_TIMEOUT             no answer from the agent in time
//   QGA_DISCONNECTED        the agent's connection closed with calls pending
//
// The timeout errors extend the common TimeoutError, so code that handles
// timeouts generically keeps working; their `code` is the protocol's own.
import { OffshootError, TimeoutError } from '../common/index.ts';

export type QemuProtocol = 'qmp' | 'qga';

/** The unix socket could not be connected (no file, nobody listening, ...). */
export class SocketConnectError extends OffshootError {
  readonly socketPath: string;
  readonly errno: string | undefined;
  constructor(socketPath: string, cause: unknown) {
    const errno = errnoOf(cause);
    const why = cause instanceof Error ? cause.message : String(cause);
    super('SOCKET_CONNECT_FAILED', `cannot connect to unix socket ${socketPath}: ${why}`, { socketPath, errno }, 502, { cause });
    this.socketPath = socketPath;
    this.errno = errno;
  }
}

/** A write was attempted on a connection that has closed. */
export class SocketClosedError extends OffshootError {
  readonly socketPath: string;
  readonly reason: string;
  constructor(socketPath: string, reason: string) {
    super('SOCKET_CLOSED', `connection to ${socketPath} is closed (${reason})`, { socketPath, reason }, 502);
    this.socketPath = socketPath;
    this.reason = reason;
  }
}

/** QEMU answered a QMP command with an error object. */
export class QmpCommandError extends OffshootError {
  readonly command: string;
  readonly errorClass: string;
  readonly desc: string;
  constructor(command: string, errorClass: string, desc: string) {
    super('QMP_COMMAND_FAILED', `QMP command ${command} failed: ${errorClass}: ${desc}`, { command, errorClass, desc }, 500);
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** A QMP greeting, reply or event did not arrive in time. A late reply is ignored. */
export class QmpTimeoutError extends TimeoutError {
  override readonly code = 'QMP_TIMEOUT';
  readonly operation: string;
  readonly ms: number;
  constructor(operation: string, ms: number, details: Record<string, unknown> = {}) {
    super(`QMP ${operation}`, ms, details);
    this.operation = operation;
    this.ms = ms;
  }
}

/** The QMP connection closed (QEMU exited, or the client was closed) before the call finished. */
export class QmpDisconnectedError extends OffshootError {
  readonly command: string | undefined;
  readonly reason: string;
  constructor(command: string | undefined, reason: string, cause?: unknown) {
    const what = command === undefined ? 'QMP connection' : `QMP command ${command}`;
    super('QMP_DISCONNECTED', `${what} failed: disconnected (${reason})`, { command, reason }, 502, { cause });
    this.command = command;
    this.reason = reason;
  }
}

/** The QMP server sent something the protocol does not allow (e.g. no valid greeting). */
export class QmpProtocolError extends OffshootError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('QMP_PROTOCOL_ERROR', message, details, 502);
  }
}

/** The guest agent answered a command with an error object. */
export class QgaCommandError extends OffshootError {
  readonly command: string;
  readonly errorClass: string;
  readonly desc: string;
  constructor(command: string, errorClass: string, desc: string) {
    super('QGA_COMMAND_FAILED', `guest agent command ${command} failed: ${errorClass}: ${desc}`, { command, errorClass, desc }, 500);
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** The guest agent did not answer in time (not running yet, hung, or the guest is stopped). */
export class QgaTimeoutError extends TimeoutError {
  override readonly code = 'QGA_TIMEOUT';
  readonly operation: string;
  readonly ms: number;
  constructor(operation: string, ms: number, details: Record<string, unknown> = {}) {
    super(`guest agent ${operation}`, ms, details);
    this.operation = operation;
    this.ms = ms;
  }
}

/** The guest agent's connection closed before the call finished. */
export class QgaDisconnectedError extends OffshootError {
  readonly command: string | undefined;
  readonly reason: string;
  constructor(command: string | undefined, reason: string, cause?: unknown) {
    const what = command === undefined ? 'guest agent connection' : `guest agent command ${command}`;
    super('QGA_DISCONNECTED', `${what} failed: disconnected (${reason})`, { command, reason }, 502, { cause });
    this.command = command;
    this.reason = reason;
  }
}

function errnoOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}
