// The QEMU process supervisor: starts QEMU detached in its own session (so VMs
// outlive the daemon), waits until its QMP monitor answers, re-attaches to
// running QEMUs after a daemon restart, finds orphans in /proc and stops
// processes with a grace period.
//
// A process is ours when its /proc/<pid>/cmdline has `-name ...,process=offshoot-<vmId>`
// (argv.ts writes it). Re-attachment also records the process start time from
// /proc/<pid>/stat, so a reused pid is never mistaken for the VM's QEMU.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, openSync, readFileSync, readdirSync, writeSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { OffshootError, TimeoutError, sleep } from '../common/index.ts';
import { buildQemuArgv } from './argv.ts';
import { PROCESS_NAME_PREFIX } from './launch-spec.ts';
import type { QemuLaunchSpec } from './launch-spec.ts';

export const DEFAULT_QEMU_BINARY = 'qemu-system-x86_64';
const ADOPTED_POLL_MS = 250;
const LOG_TAIL_BYTES = 4096;

export interface QemuExit {
  code: number | null;
  signal: string | null;
}

export interface QemuProcess {
  readonly pid: number;
  readonly vmId: string;
  /** 'spawned' by this daemon, or 'adopted' after a restart (exit found by polling /proc; code and signal then unknown, null). */
  readonly origin: 'spawned' | 'adopted';
  /** Resolves when the process ends. Does not keep the event loop alive by itself. */
  readonly exited: Promise<QemuExit>;
  /** Sends a signal unless the process has already ended; true if sent. */
  kill(signal?: NodeJS.Signals): boolean;
}

/** QEMU did not come up: bad binary, bad option, missing file, or no QMP greeting in time. */
export class QemuStartError extends OffshootError {
  readonly vmId: string;
  readonly binary: string;
  readonly logTail: string;
  constructor(vmId: string, binary: string, reason: string, logTail: string, details: Record<string, unknown> = {}, cause?: unknown) {
    const last = lastLines(logTail, 3);
    super('QEMU_START_FAILED', `QEMU for VM "${vmId}" failed to start: ${reason}${last ? `: ${last}` : ''}`, { vmId, binary, reason, logTail, ...details }, 500, { cause });
    this.vmId = vmId;
    this.binary = binary;
    this.logTail = logTail;
  }
}

function lastLines(text: string, n: number): string {
  return text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0).slice(-n).join(' | ');
}

export interface LaunchQemuOptions {
  vmId: string;
  /** Arguments after the binary. */
  args: string[];
  /** The process is ready when QMP on this socket answers `query-kvm`. */
  qmpSocket: string;
  /** QEMU's stdout and stderr are appended here. */
  logFile: string;
  binary?: string;
  /** Default 20 s. */
  startTimeoutMs?: number;
  /**
   * A command that runs QEMU (its argv prefix, ending where the QEMU binary goes), e.g. setpriv
   * dropping to an unprivileged user; it must exec QEMU so the pid stays the same.
   */
  wrapper?: string[];
}

export interface SpawnQemuOptions {
  logFile: string;
  binary?: string;
  startTimeoutMs?: number;
  wrapper?: string[];
}

/** Builds the argv of `spec` and starts QEMU; see launchQemu. */
export async function spawnQemu(spec: QemuLaunchSpec, options: SpawnQemuOptions): Promise<QemuProcess> {
  return launchQemu({ ...options, vmId: spec.vmId, args: buildQemuArgv(spec), qmpSocket: spec.qmpSocket });
}

/**
 * Starts QEMU detached in its own session, its output appended to the log
 * file, and resolves once QMP answers a command that needs the machine to be
 * created (see qmpReady). So a missing kernel or a bad disk fails here, with
 * QEMU's own message, rather than just after.
 */
export async function launchQemu(options: LaunchQemuOptions): Promise<QemuProcess> {
  const binary = options.binary ?? DEFAULT_QEMU_BINARY;
  const timeoutMs = options.startTimeoutMs ?? 20_000;
  const { vmId, logFile, qmpSocket } = options;
  let logStart = 0;
  const fail = async (reason: string, details: Record<string, unknown> = {}, cause?: unknown): Promise<never> => {
    throw new QemuStartError(vmId, binary, reason, await readFrom(logFile, logStart), { logFile, ...details }, cause);
  };

  // A stale socket from an earlier process would answer nothing; QEMU would replace it anyway.
  await rm(qmpSocket, { force: true });
  let fd: number;
  try {
    fd = openSync(logFile, 'a');
  } catch (err) {
    return fail(`cannot open log file ${logFile} (${(err as Error).message})`, {}, err);
  }
  let child: ChildProcess;
  try {
    writeSync(fd, `--- ${new Date().toISOString()} offshoot: starting ${[...(options.wrapper ?? []), binary].join(' ')} ${options.args.join(' ')}\n`);
    logStart = fstatSync(fd).size;
    const [command, ...prefix] = [...(options.wrapper ?? []), binary];
    child = spawn(command as string, [...prefix, ...options.args], { detached: true, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
  const started = await new Promise<Error | undefined>((resolve) => {
    child.once('spawn', () => resolve(undefined));
    child.once('error', resolve);
  });
  if (started !== undefined || child.pid === undefined) return fail(`cannot run ${binary} (${started?.message ?? 'no pid'})`, {}, started);
  child.on('error', () => undefined); // later errors (a failed kill) are seen through `exited` and /proc
  child.unref();
  const proc = spawnedProcess(child, child.pid, vmId);

  let exit: QemuExit | undefined;
  void proc.exited.then((e) => (exit = e));
  const deadline = Date.now() + timeoutMs;
  while (true) {
    if (await qmpReady(qmpSocket, Math.max(100, Math.min(5000, deadline - Date.now())))) return proc;
    // Let a pending 'exit' event run before deciding.
    await sleep(25);
    if (exit !== undefined) {
      return fail(`QEMU exited (${exit.signal ?? `code ${exit.code}`})`, { pid: proc.pid, exitCode: exit.code, signal: exit.signal });
    }
    if (Date.now() >= deadline) {
      proc.kill('SIGKILL');
      await proc.exited;
      return fail(`QMP on ${qmpSocket} not ready within ${timeoutMs} ms`, { pid: proc.pid, timeoutMs });
    }
  }
}

function spawnedProcess(child: ChildProcess, pid: number, vmId: string): QemuProcess {
  let done = false;
  const exited = new Promise<QemuExit>((resolve) => {
    child.once('exit', (code, signal) => {
      done = true;
      resolve({ code, signal });
    });
  });
  return {
    pid,
    vmId,
    origin: 'spawned',
    exited,
    // Until node has reaped the child, its pid cannot be reused.
    kill: (signal = 'SIGTERM') => !done && signalPid(pid, signal),
  };
}

/**
 * One readiness attempt: connect, read the greeting, negotiate, then ask
 * `query-kvm`. QEMU greets from its monitor I/O thread while the main thread
 * may still be creating the machine (and loading the kernel); `query-kvm` is
 * refused until machine creation has completed, so its answer is the signal.
 * false on any failure (no socket yet, refused, EOF, not ready yet).
 */
function qmpReady(path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    let buffer = '';
    let step: 'greeting' | 'capabilities' | 'query' = 'greeting';
    const finish = (ok: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const msg = parseObject(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
        if (msg === undefined) return finish(false);
        if ('event' in msg) continue;
        if (step === 'greeting') {
          if (!('QMP' in msg)) return finish(false);
          step = 'capabilities';
          socket.write('{"execute":"qmp_capabilities"}\n');
        } else if (step === 'capabilities') {
          if (!('return' in msg)) return finish(false);
          step = 'query';
          socket.write('{"execute":"query-kvm"}\n');
        } else {
          return finish('return' in msg);
        }
      }
    });
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(false));
  });
}

function parseObject(line: string): Record<string, unknown> | undefined {
  try {
    const msg: unknown = JSON.parse(line);
    return typeof msg === 'object' && msg !== null && !Array.isArray(msg) ? (msg as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

async function readFrom(path: string, offset: number): Promise<string> {
  try {
    const handle = await open(path, 'r');
    try {
      const { size } = await handle.stat();
      const start = Math.max(offset, size - LOG_TAIL_BYTES);
      const buf = Buffer.alloc(Math.max(0, size - start));
      await handle.read(buf, 0, buf.length, start);
      return buf.toString('utf8');
    } finally {
      await handle.close();
    }
  } catch {
    return '';
  }
}

function signalPid(pid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false; // ESRCH: gone. EPERM: not ours to signal.
  }
}

// ---- /proc -----------------------------------------------------------------

interface ProcStat {
  state: string;
  /** Clock ticks since boot; with the pid, identifies one process. */
  startTime: string;
}

function readStat(pid: number): ProcStat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may contain spaces.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const state = fields[0];
    const startTime = fields[19]; // field 22
    return state !== undefined && startTime !== undefined ? { state, startTime } : undefined;
  } catch {
    return undefined;
  }
}

/** Running (or stopped), not a zombie and, if given, still the same process. */
function isAlive(pid: number, startTime?: string): boolean {
  const st = readStat(pid);
  if (st === undefined || st.state === 'Z' || st.state === 'X') return false;
  return startTime === undefined || st.startTime === startTime;
}

/** Splits QEMU "a=b,c=d" options; a doubled comma is a literal comma. */
function splitQemuOpts(value: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i];
    if (ch === ',' && value[i + 1] === ',') {
      current += ',';
      i++;
    } else if (ch === ',') {
      parts.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts;
}

/** The vmId in an argv written by argv.ts, from `-name ...,process=offshoot-<vmId>`. */
export function vmIdFromArgv(argv: readonly string[]): string | undefined {
  const at = argv.indexOf('-name');
  const name = at >= 0 ? argv[at + 1] : undefined;
  if (name === undefined) return undefined;
  for (const part of splitQemuOpts(name)) {
    if (part.startsWith(`process=${PROCESS_NAME_PREFIX}`)) {
      const vmId = part.slice(`process=${PROCESS_NAME_PREFIX}`.length);
      return vmId.length > 0 ? vmId : undefined;
    }
  }
  return undefined;
}

/** The Offshoot vmId of a running process, or undefined if it is not an Offshoot QEMU (or gone). */
export function readProcessVmId(pid: number): string | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return vmIdFromArgv(raw.split('\0'));
  } catch {
    return undefined;
  }
}

/** Every live process started from an argv.ts command line (used to find orphans). */
export function findOffshootQemus(): Array<{ pid: number; vmId: string }> {
  const found: Array<{ pid: number; vmId: string }> = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    const vmId = readProcessVmId(pid);
    if (vmId !== undefined && isAlive(pid)) found.push({ pid, vmId });
  }
  return found.sort((a, b) => a.pid - b.pid);
}

/**
 * Re-attaches to the running QEMU of `vmId` (e.g. after a daemon restart).
 * Undefined if `pid` is gone or is not that VM's QEMU. Its `exited` is found
 * by polling /proc every 250 ms, as the process is not our child.
 */
export function adoptQemu(pid: number, vmId: string): QemuProcess | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const before = readStat(pid);
  if (before === undefined || readProcessVmId(pid) !== vmId) return undefined;
  // Read the stat again: the cmdline we checked belongs to this start time.
  if (!isAlive(pid, before.startTime)) return undefined;
  const { startTime } = before;
  let done = false;
  const exited = new Promise<QemuExit>((resolve) => {
    const timer = setInterval(() => {
      if (isAlive(pid, startTime)) return;
      clearInterval(timer);
      done = true;
      resolve({ code: null, signal: null });
    }, ADOPTED_POLL_MS);
    timer.unref();
  });
  return {
    pid,
    vmId,
    origin: 'adopted',
    exited,
    kill: (signal = 'SIGTERM') => !done && isAlive(pid, startTime) && signalPid(pid, signal),
  };
}

export type KillOutcome = 'not-running' | 'terminated' | 'killed';

/**
 * SIGTERM, wait up to `graceMs` (default 5 s) for the process to end, then
 * SIGKILL and wait up to `killWaitMs` (default 5 s). QEMU shuts down cleanly
 * on SIGTERM. Throws TimeoutError if even SIGKILL does not end it in time.
 */
export async function killAndWait(pid: number, options: { graceMs?: number; killWaitMs?: number; pollMs?: number } = {}): Promise<KillOutcome> {
  const { graceMs = 5000, killWaitMs = 5000, pollMs = 25 } = options;
  const first = readStat(pid);
  if (first === undefined || !isAlive(pid)) return 'not-running';
  const gone = async (ms: number): Promise<boolean> => {
    const deadline = Date.now() + ms;
    while (isAlive(pid, first.startTime)) {
      if (Date.now() >= deadline) return false;
      await sleep(pollMs);
    }
    return true;
  };
  if (!signalPid(pid, 'SIGTERM')) return 'not-running';
  if (await gone(graceMs)) return 'terminated';
  if (isAlive(pid, first.startTime)) signalPid(pid, 'SIGKILL');
  if (await gone(killWaitMs)) return 'killed';
  throw new TimeoutError(`killing process ${pid}`, graceMs + killWaitMs, { pid });
}
