// The guest's side of handing a pool child to whoever claimed it: its
// hostname (the kernel's, /etc/hostname, /etc/hosts) and fresh entropy mixed
// into the kernel's pool, the clock when asked (the child continues from its
// template's frozen time, or from when it was paused), then, when there is a
// customisation script, that script run by `sh -s` with the claim's
// environment exported, its output returned.
//
// A claim is on the critical path, and under TCG every process the guest
// starts and every guest-agent command cost the guest's vCPU, which the
// children handed out at once share (20 at once on 2 host CPUs: a fork and
// exec of a shell is some 40 ms of CPU there, a guest-agent command 1 to 5).
// So a pool child is *armed* when it is made (armHandOut, off the critical
// path): a shell started in the guest waits on a FIFO that only qemu-ga holds
// open for writing. The claim then writes its request into that FIFO (one
// agent batch: the write, the close, and guest-set-time when the clock is
// set) and polls the shell's exit: no process is started, unless the clock is
// set (qemu-ga runs hwclock) or a script runs (the shell execs `sh -s`
// reading the rest of the FIFO). Entropy and the script
// travel in the agent's messages (FIFO data), never on a command line other
// guest users could read, and the FIFO's name is unlinked once both ends are
// open. A child not armed (forked on demand, or adopted by a restarted agent,
// which lost its waiters) gets the same identity through guest-agent file
// writes (two batches; guest-set-time for the clock) and a shell only for a
// script.
//
// The exit is polled on this module's schedule (QgaClient.waitExec's
// pollDelayMs) rather than the client's default backoff (5 ms doubling to
// 200 ms, made for long commands): the step takes a few to a few tens of ms,
// and a doubling backoff lets up to half of it go by unseen. Each poll is a
// guest-agent round trip that the guest's vCPU also serves, so the polls are
// a few ms apart rather than back to back, and further apart while several
// hand-outs run at once in this process.
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { sleep } from '../common/index.ts';
import type { QgaBatchCall, QgaClient, QgaExecResult } from '../qemu/index.ts';
import { QgaCommandError, QgaTimeoutError } from '../qemu/index.ts';

/** Exit codes of the waiter's own part (the script's codes are its own). */
const IDENTITY_FAILED = 97;
const NO_REQUEST = 96;
/** Requests larger than this go the unarmed way (a FIFO holds 64 KiB, and qemu-ga's descriptor does not block). */
const MAX_ARMED_REQUEST_BYTES = 48 * 1024;
const FIFO_DIR = '/run/offshoot';
/** The environment of a process the hand-out starts in the guest (the waiter, or the script's shell), besides its own. */
const GUEST_ENV = ['PATH=/sbin:/bin:/usr/sbin:/usr/bin', 'HOME=/root'];

/**
 * The waiter: opens the FIFO for reading (qemu-ga holds it open, so this does not block) and unlinks it, then
 * waits for the request: hostname, entropy, and whether a script follows (then the script).
 */
const WAITER_SCRIPT = [
  'exec 3<"$1" || exit 95',
  'rm -f "$1"',
  `read -r name <&3 && read -r seed <&3 && read -r script <&3 || exit ${NO_REQUEST}`,
  'printf %s "$seed" > /dev/urandom',
  `{ echo "$name" > /proc/sys/kernel/hostname; } 2>/dev/null || { echo "offshoot: cannot set the hostname" >&2; exit ${IDENTITY_FAILED}; }`,
  'echo "$name" > /etc/hostname',
  'printf \'127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n\' "$name" > /etc/hosts',
  'export OFFSHOOT_VM_NAME="$name"',
  'if [ "$script" = 1 ]; then exec /bin/sh -s <&3 3<&-; fi',
].join('\n');

const CPUS = Math.max(1, availableParallelism());
/** Hand-outs running in this process now. */
let running = 0;

/**
 * ms between exit polls: short while a hand-out usually ends, longer for a long customisation script, and
 * stretched while more hand-outs run at once than the host has CPUs.
 */
export function pollDelayMs(elapsedMs: number, concurrent: number, cpus = CPUS): number {
  const base = elapsedMs < 200 ? 2 : elapsedMs < 2000 ? 10 : 100;
  return Math.min(200, base * Math.max(1, Math.ceil(concurrent / cpus)));
}

export interface HandOutGuestRequest {
  hostname: string;
  script?: string;
  env?: string[];
  vmId: string;
  timeoutMs: number;
  /** Set the guest's clock (a paused child, or one that continues from its template's frozen time). */
  setClock: boolean;
}

export interface HandOutGuestResult {
  ok: boolean;
  error: string | null;
  script: { exitCode: number | null; stdout: string; stderr: string } | null;
  /**
   * ms: armed, sending the request to the waiter, then until its exit was seen (exit polls); not armed, the
   * identity (two agent batches), and for a script its guest-exec round trip, until its exit was seen, polls.
   */
  steps: { armed: boolean; identityMs: number; execMs?: number; exitMs?: number; polls?: number };
}

/** A waiter left in a child's guest for its next hand-out: the shell's pid and qemu-ga's handle of its FIFO. */
export interface ArmedHandOut {
  pid: number;
  handle: number;
}

/** The guest files that carry a child's identity, and their contents (the unarmed way). */
export function identityFiles(hostname: string, entropy: Buffer): Array<{ path: string; data: Buffer | string }> {
  return [
    { path: '/proc/sys/kernel/hostname', data: hostname },
    { path: '/etc/hostname', data: `${hostname}\n` },
    { path: '/etc/hosts', data: `127.0.0.1\tlocalhost\n127.0.1.1\t${hostname}\n` },
    { path: '/dev/urandom', data: entropy },
  ];
}

/** POSIX shell single quoting. */
function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/**
 * Leaves a waiter in the guest for the child's next hand-out (when a pool child is made): a FIFO in
 * /run/offshoot, qemu-ga's handle on it (read-write, so opening it never blocks and writing never meets a
 * closed pipe), and the shell waiting on it, which holds it open once this returns.
 */
export async function armHandOut(qga: QgaClient, vmId: string, timeoutMs: number): Promise<ArmedHandOut> {
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const fifo = `${FIFO_DIR}/hand-out-${randomBytes(8).toString('hex')}`;
  const made = await qga.exec('/bin/sh', ['-c', 'umask 077 && mkdir -p "$1" && mkfifo "$2"', 'offshoot-arm', FIFO_DIR, fifo], { timeoutMs: left() });
  if (made.exitCode !== 0) throw new Error(`cannot make the hand-out FIFO ${fifo}: ${made.stderr.toString('utf8').trim()}`);
  const handle = await qga.execute<number>('guest-file-open', { path: fifo, mode: 'r+' }, { timeoutMs: left() });
  const env = [...GUEST_ENV, `OFFSHOOT_VM_ID=${vmId}`];
  try {
    const pid = await qga.start('/bin/sh', ['-c', WAITER_SCRIPT, 'offshoot-hand-out', fifo], { env, timeoutMs: left() });
    // The waiter unlinks the FIFO once it holds it open: from then on, a request written and qemu-ga's end
    // closed stays in the pipe for it (were no end open, the kernel would drop it).
    for (let attempt = 0; ; attempt++) {
      const probe = await qga.executeBatch([{ command: 'guest-file-open', args: { path: fifo, mode: 'r' } }], { timeoutMs: left() });
      const [opened] = probe;
      if (opened && !opened.ok) break;
      if (opened?.ok) await qga.execute('guest-file-close', { handle: opened.value }, { timeoutMs: left() });
      if (Date.now() >= deadline) throw new Error(`the hand-out waiter did not open its FIFO within ${timeoutMs} ms (guest pid ${pid})`);
      await sleep(Math.min(100, 5 * 2 ** attempt));
    }
    return { pid, handle };
  } catch (err) {
    await qga.execute('guest-file-close', { handle }, { timeoutMs: left() }).catch(() => undefined);
    throw err;
  }
}

/** Hands the child out in its guest: through its waiter when it is armed (and the request fits), else the unarmed way. */
export async function handOutInGuest(qga: QgaClient, request: HandOutGuestRequest, armed?: ArmedHandOut): Promise<HandOutGuestResult> {
  running++;
  try {
    if (armed) {
      const payload = armedRequest(request);
      if (payload) return await handOutArmed(qga, request, armed, payload);
      // The waiter reads the end of its FIFO and exits.
      await qga.execute('guest-file-close', { handle: armed.handle }, { timeoutMs: request.timeoutMs });
    }
    return await handOutUnarmed(qga, request);
  } finally {
    running--;
  }
}

/** The waiter's request (its environment exported ahead of the script), or undefined when it does not fit. */
function armedRequest(request: HandOutGuestRequest): Buffer | undefined {
  const head = `${request.hostname}\n${randomBytes(32).toString('hex')}\n${request.script === undefined ? 0 : 1}\n`;
  const env = request.env ?? [];
  if (env.some((e) => !/^[A-Za-z_][A-Za-z0-9_]*=/.test(e)) || /[\n\s]/.test(request.hostname)) return undefined;
  const script = request.script === undefined ? '' : `${env.map((e) => `export ${shellQuote(e)}`).join('\n')}\n${request.script}`;
  const payload = Buffer.from(head + script, 'utf8');
  return payload.length <= MAX_ARMED_REQUEST_BYTES ? payload : undefined;
}

async function handOutArmed(qga: QgaClient, request: HandOutGuestRequest, armed: ArmedHandOut, payload: Buffer): Promise<HandOutGuestResult> {
  const t0 = performance.now();
  const deadline = Date.now() + request.timeoutMs;
  const [written, closed, clock] = await qga.executeBatch(
    [
      { command: 'guest-file-write', args: { handle: armed.handle, 'buf-b64': payload.toString('base64'), count: payload.length } },
      { command: 'guest-file-close', args: { handle: armed.handle } },
      ...(request.setClock ? [setTime()] : []),
    ],
    { timeoutMs: request.timeoutMs },
  );
  const identityMs = performance.now() - t0;
  if (!written?.ok || (written.value as { count: number }).count !== payload.length || !closed?.ok) {
    const why = written?.ok === false ? written.error.message : closed?.ok === false ? closed.error.message : `wrote ${(written?.value as { count?: number } | undefined)?.count ?? 0} of ${payload.length} bytes`;
    return { ok: false, error: `the hand-out request did not reach the guest's waiter: ${why}`, script: null, steps: { armed: true, identityMs } };
  }
  if (clock?.ok === false) return { ok: false, error: `cannot set the guest's clock: ${clock.error.message}`, script: null, steps: { armed: true, identityMs } };
  const run = await waitFor(qga, armed.pid, request.timeoutMs, Math.max(1, deadline - Date.now()));
  return outcome(run, request.script !== undefined, { armed: true, identityMs, exitMs: run.timings.exitMs, polls: run.timings.polls });
}

async function handOutUnarmed(qga: QgaClient, request: HandOutGuestRequest): Promise<HandOutGuestResult> {
  const t0 = performance.now();
  const deadline = Date.now() + request.timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  try {
    const clock = request.setClock ? [setTime()] : [];
    await qga.writeFiles(identityFiles(request.hostname, randomBytes(32)), { timeoutMs: left(), then: clock });
  } catch (err) {
    if (!(err instanceof QgaCommandError)) throw err;
    return { ok: false, error: `the identity step failed: ${err.message}`, script: null, steps: { armed: false, identityMs: performance.now() - t0 } };
  }
  const identityMs = performance.now() - t0;
  if (request.script === undefined) return { ok: true, error: null, script: null, steps: { armed: false, identityMs } };
  const env = [...GUEST_ENV, `OFFSHOOT_VM_NAME=${request.hostname}`, `OFFSHOOT_VM_ID=${request.vmId}`, ...(request.env ?? [])];
  const s0 = performance.now();
  const pid = await qga.start('/bin/sh', ['-s'], { input: request.script, env, timeoutMs: left() });
  const execMs = performance.now() - s0;
  const run = await waitFor(qga, pid, request.timeoutMs, left());
  return outcome(run, true, { armed: false, identityMs, execMs, exitMs: run.timings.exitMs, polls: run.timings.polls });
}

/** guest-set-time to now, in ns (qemu-ga sets the system clock, then the RTC from it with hwclock). */
function setTime(): QgaBatchCall {
  return { command: 'guest-set-time', args: { time: Date.now() * 1_000_000 } };
}

/** Waits for the guest process on the hand-out's poll schedule; the hand-out's own error when it does not end in time. */
async function waitFor(qga: QgaClient, pid: number, limitMs: number, leftMs: number): Promise<QgaExecResult> {
  try {
    return await qga.waitExec(pid, { timeoutMs: leftMs, pollDelayMs: (elapsed) => pollDelayMs(elapsed, running) });
  } catch (err) {
    if (err instanceof QgaTimeoutError) throw new Error(`the hand-out step did not end within ${limitMs} ms (guest pid ${pid})`);
    throw err;
  }
}

function outcome(run: QgaExecResult, hasScript: boolean, steps: HandOutGuestResult['steps']): HandOutGuestResult {
  const exitCode = run.exitCode;
  const how = exitCode ?? `signal ${run.signal ?? '?'}`;
  const stdout = run.stdout.toString('utf8');
  const stderr = run.stderr.toString('utf8');
  const ok = exitCode === 0;
  const identityFailed = (exitCode === IDENTITY_FAILED && stderr.includes('offshoot: cannot set the hostname')) || (steps.armed && exitCode === NO_REQUEST);
  if (!hasScript || identityFailed) return { ok, error: ok ? null : `the identity step exited with ${how}: ${stderr.trim()}`, script: null, steps };
  return { ok, error: ok ? null : `the customisation script exited with ${how}`, script: { exitCode, stdout, stderr }, steps };
}
