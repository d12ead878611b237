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
// exec of a shell is some 40 ms of CPU there, a guest-agent command 1 to 5;
// fabric-templates.ts lets one hand-out per host CPU run at once).
// So a pool child is *armed* when it is made (armHandOut, off the critical
// path): qemu-ga opens the identity files and keeps their handles
// (/proc/sys/kernel/hostname, /etc/hostname, /etc/hosts: mode "w", so they are
// truncated then and stay empty until the claim, a pool child nobody uses;
// /dev/urandom, where a write mixes in entropy), and a shell started in the
// guest waits on a FIFO that only qemu-ga holds open for writing. A claim is
// then ONE agent batch and no guest process: each identity file's bytes
// written and its handle closed (stdio buffers them; the close flushes, and a
// failed flush fails the close), guest-set-time when the clock is set
// (qemu-ga runs hwclock), and the FIFO closed, which lets the waiter exit
// after the answer (nobody waits for it). With a customisation script the
// batch also writes the script (its environment exported ahead of it) into
// the FIFO before closing it, the waiter execs `sh -s` on the rest of the
// FIFO, and its exit is polled. Entropy and the script travel in the agent's
// messages, never on a command line other guest users could read, and the
// FIFO's name is unlinked once both ends are open. A child not armed (forked
// on demand, or armed by an agent whose record of it is gone) gets the same
// identity through guest-agent file writes (two batches; guest-set-time for
// the clock) and a shell only for a script. The handles live in qemu-ga, not
// in this process: an agent that restarts finds them again from the record
// HostTemplates keeps beside the child (ArmedHandOut is plain data).
// Measured (warm child, one claim at a time, its QEMU's CPU over the claim,
// load 4-7): this batch of 9 commands costs ~17 ms, about what the waiter
// doing the identity in its shell, plus the exit polls, cost (~16 ms). So a
// guest-agent command is worth ~1.5 ms of the guest's CPU under TCG, and
// fewer commands, not fewer processes, is what would shrink it further.
//
// The exit is polled on this module's schedule (QgaClient.waitExec's
// pollDelayMs) rather than the client's default backoff (5 ms doubling to
// 200 ms, made for long commands): the step takes a few to a few tens of ms,
// and a doubling backoff lets up to half of it go by unseen. Each poll is a
// guest-agent round trip that the guest's vCPU also serves, so the polls are
// a few ms apart rather than back to back. (No more hand-outs run at once
// than the host has CPUs: fabric-templates.ts takes turns.)
import { randomBytes } from 'node:crypto';
import { sleep } from '../common/index.ts';
import type { QgaBatchCall, QgaBatchOutcome, QgaClient, QgaExecResult } from '../qemu/index.ts';
import { QgaCommandError, QgaTimeoutError } from '../qemu/index.ts';

/** Exit code of the waiter when no request reached it (the script's codes are its own). */
const NO_REQUEST = 96;
/** Scripts larger than this go the unarmed way (a FIFO holds 64 KiB, and qemu-ga's descriptor does not block). */
const MAX_ARMED_REQUEST_BYTES = 48 * 1024;
const FIFO_DIR = '/run/offshoot';
/** The environment of a process the hand-out starts in the guest (the waiter, or the script's shell), besides its own. */
const GUEST_ENV = ['PATH=/sbin:/bin:/usr/sbin:/usr/bin', 'HOME=/root'];
/** Entropy mixed into the guest's pool at each hand-out, bytes. */
const ENTROPY_BYTES = 32;

/**
 * The waiter: opens the FIFO for reading (qemu-ga holds it open, so this does not block) and unlinks it, then
 * waits for a script: the VM's name on the first line, the script after it. A FIFO closed with nothing in it (a
 * claim without a script) ends it.
 */
const WAITER_SCRIPT = [
  'exec 3<"$1" || exit 95',
  'rm -f "$1"',
  `read -r name <&3 || exit ${NO_REQUEST}`,
  'export OFFSHOOT_VM_NAME="$name"',
  'exec /bin/sh -s <&3 3<&-',
].join('\n');

/** ms between exit polls: short while a hand-out usually ends, longer for a long customisation script. */
export function pollDelayMs(elapsedMs: number): number {
  return elapsedMs < 200 ? 2 : elapsedMs < 2000 ? 10 : 100;
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
   * ms: armed, the one batch (identity, clock, the script sent), then for a script until its exit was seen
   * (exit polls); not armed, the identity (two agent batches), and for a script its guest-exec round trip,
   * until its exit was seen, polls.
   */
  steps: { armed: boolean; identityMs: number; execMs?: number; exitMs?: number; polls?: number };
}

/** The guest files that carry a child's identity. */
export const IDENTITY_PATHS = ['/proc/sys/kernel/hostname', '/etc/hostname', '/etc/hosts', '/dev/urandom'] as const;
export type IdentityPath = (typeof IDENTITY_PATHS)[number];

/**
 * What is left in a child's guest for its next hand-out (plain data: kept beside the child, so an agent that
 * restarts finds it): the waiter's pid, qemu-ga's handle of its FIFO, and qemu-ga's handles of the identity
 * files, opened for writing.
 */
export interface ArmedHandOut {
  pid: number;
  handle: number;
  files: Record<IdentityPath, number>;
}

/** Whether `value` is an ArmedHandOut (a record read back from disk). */
export function isArmedHandOut(value: unknown): value is ArmedHandOut {
  const v = value as Partial<ArmedHandOut> | null;
  const isHandle = (n: unknown): boolean => Number.isSafeInteger(n) && (n as number) >= 0;
  return typeof v === 'object' && v !== null && isHandle(v.pid) && isHandle(v.handle) && typeof v.files === 'object' && v.files !== null && IDENTITY_PATHS.every((p) => isHandle((v.files as Record<string, unknown>)[p]));
}

/** The identity files' contents for a hand-out as `hostname`, with fresh entropy. */
export function identityFiles(hostname: string, entropy: Buffer): Array<{ path: IdentityPath; data: Buffer | string }> {
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
 * Arms a child for its next hand-out (when a pool child is made): qemu-ga's handles on the identity files (see
 * above), a FIFO in /run/offshoot with qemu-ga's handle on it (read-write, so opening it never blocks and
 * writing never meets a closed pipe), and the shell waiting on it, which holds it open once this returns.
 * Every handle is closed again if it fails.
 */
export async function armHandOut(qga: QgaClient, vmId: string, timeoutMs: number): Promise<ArmedHandOut> {
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const fifo = `${FIFO_DIR}/hand-out-${randomBytes(8).toString('hex')}`;
  const made = await qga.exec('/bin/sh', ['-c', 'umask 077 && mkdir -p "$1" && mkfifo "$2"', 'offshoot-arm', FIFO_DIR, fifo], { timeoutMs: left() });
  if (made.exitCode !== 0) throw new Error(`cannot make the hand-out FIFO ${fifo}: ${made.stderr.toString('utf8').trim()}`);
  const paths = [fifo, ...IDENTITY_PATHS];
  const opened = await qga.executeBatch(
    paths.map((path, i) => ({ command: 'guest-file-open', args: { path, mode: i === 0 ? 'r+' : 'w' } })),
    { timeoutMs: left() },
  );
  const handles = opened.flatMap((o) => (o.ok ? [o.value as number] : []));
  const closeAll = (): Promise<unknown> => qga.executeBatch(handles.map((handle) => ({ command: 'guest-file-close', args: { handle } })), { timeoutMs: left() }).catch(() => undefined);
  const failed = opened.findIndex((o) => !o.ok);
  if (failed >= 0) {
    await closeAll();
    throw new Error(`cannot open ${paths[failed]} for the hand-out: ${(opened[failed] as { ok: false; error: Error }).error.message}`);
  }
  const [handle, ...fileHandles] = handles as [number, ...number[]];
  const files = Object.fromEntries(IDENTITY_PATHS.map((p, i) => [p, fileHandles[i] as number])) as Record<IdentityPath, number>;
  const env = [...GUEST_ENV, `OFFSHOOT_VM_ID=${vmId}`];
  try {
    const pid = await qga.start('/bin/sh', ['-c', WAITER_SCRIPT, 'offshoot-hand-out', fifo], { env, timeoutMs: left() });
    // The waiter unlinks the FIFO once it holds it open: from then on, a request written and qemu-ga's end
    // closed stays in the pipe for it (were no end open, the kernel would drop it).
    for (let attempt = 0; ; attempt++) {
      const probe = await qga.executeBatch([{ command: 'guest-file-open', args: { path: fifo, mode: 'r' } }], { timeoutMs: left() });
      const [probed] = probe;
      if (probed && !probed.ok) break;
      if (probed?.ok) await qga.execute('guest-file-close', { handle: probed.value }, { timeoutMs: left() });
      if (Date.now() >= deadline) throw new Error(`the hand-out waiter did not open its FIFO within ${timeoutMs} ms (guest pid ${pid})`);
      await sleep(Math.min(100, 5 * 2 ** attempt));
    }
    return { pid, handle, files };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

/** Hands the child out in its guest: through what was armed in it when it is armed, else the unarmed way. */
export async function handOutInGuest(qga: QgaClient, request: HandOutGuestRequest, armed?: ArmedHandOut): Promise<HandOutGuestResult> {
  return armed ? handOutArmed(qga, request, armed) : handOutUnarmed(qga, request);
}

/** The script as the waiter reads it (the VM's name, then the environment exported ahead of the script), or undefined when it cannot go that way. */
function armedScript(request: HandOutGuestRequest): Buffer | undefined {
  if (request.script === undefined) return undefined;
  const env = request.env ?? [];
  if (env.some((e) => !/^[A-Za-z_][A-Za-z0-9_]*=/.test(e)) || /[\n\s]/.test(request.hostname)) return undefined;
  const text = `${request.hostname}\n${env.map((e) => `export ${shellQuote(e)}\n`).join('')}${request.script}`;
  const payload = Buffer.from(text, 'utf8');
  return payload.length <= MAX_ARMED_REQUEST_BYTES ? payload : undefined;
}

function writeCall(handle: number, data: Buffer): QgaBatchCall {
  return { command: 'guest-file-write', args: { handle, 'buf-b64': data.toString('base64'), count: data.length } };
}

/**
 * One batch: each identity file written and closed, the clock, the script into the FIFO (when it goes that way)
 * and the FIFO closed. Then, for a script, its exit (the waiter's shell) or, when the script cannot go
 * through the FIFO, a shell of its own (as unarmed).
 */
async function handOutArmed(qga: QgaClient, request: HandOutGuestRequest, armed: ArmedHandOut): Promise<HandOutGuestResult> {
  const t0 = performance.now();
  const deadline = Date.now() + request.timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const files = identityFiles(request.hostname, randomBytes(ENTROPY_BYTES)).map((f) => ({ ...f, data: Buffer.from(f.data) }));
  const script = armedScript(request);
  const calls: QgaBatchCall[] = files.flatMap((f) => [writeCall(armed.files[f.path], f.data), { command: 'guest-file-close', args: { handle: armed.files[f.path] } }]);
  if (request.setClock) calls.push(setTime());
  if (script) calls.push(writeCall(armed.handle, script));
  calls.push({ command: 'guest-file-close', args: { handle: armed.handle } });
  const outcomes = await qga.executeBatch(calls, { timeoutMs: request.timeoutMs });
  const identityMs = performance.now() - t0;
  const failed = (why: string): HandOutGuestResult => ({ ok: false, error: why, script: null, steps: { armed: true, identityMs } });
  // Each outcome in the order sent: a write and a close per file, the clock, the script's write, the FIFO's close.
  let k = 0;
  for (const f of files) {
    const written = outcomes[k++] as QgaBatchOutcome;
    const closed = outcomes[k++] as QgaBatchOutcome;
    const count = written.ok ? (written.value as { count?: number }).count : undefined;
    if (!written.ok || count !== f.data.length) return failed(`the identity step failed: ${f.path}: ${written.ok ? `wrote ${count ?? 0} of ${f.data.length} bytes` : written.error.message}`);
    if (!closed.ok) return failed(`the identity step failed: ${f.path}: ${closed.error.message}`);
  }
  const clock = request.setClock ? (outcomes[k++] as QgaBatchOutcome) : undefined;
  const sent = script ? (outcomes[k++] as QgaBatchOutcome) : undefined;
  const fifoClosed = outcomes[k++] as QgaBatchOutcome;
  if (clock && !clock.ok) return failed(`cannot set the guest's clock: ${clock.error.message}`);
  if (script) {
    const count = sent?.ok ? (sent.value as { count?: number }).count : undefined;
    if (!sent?.ok || count !== script.length || !fifoClosed.ok) {
      const why = sent?.ok === false ? sent.error.message : !fifoClosed.ok ? fifoClosed.error.message : `wrote ${count ?? 0} of ${script.length} bytes`;
      return failed(`the customisation script did not reach the guest's waiter: ${why}`);
    }
    const run = await waitFor(qga, armed.pid, request.timeoutMs, left());
    return outcome(run, { armed: true, identityMs, exitMs: run.timings.exitMs, polls: run.timings.polls });
  }
  // Without a script the waiter is not waited for (it reads the end of its FIFO and exits); a FIFO that would
  // not close is only a waiter left asleep, not a failed identity.
  if (request.script === undefined) return { ok: true, error: null, script: null, steps: { armed: true, identityMs } };
  return runScript(qga, request, identityMs, true, left);
}

async function handOutUnarmed(qga: QgaClient, request: HandOutGuestRequest): Promise<HandOutGuestResult> {
  const t0 = performance.now();
  const deadline = Date.now() + request.timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  try {
    const clock = request.setClock ? [setTime()] : [];
    await qga.writeFiles(identityFiles(request.hostname, randomBytes(ENTROPY_BYTES)), { timeoutMs: left(), then: clock });
  } catch (err) {
    if (!(err instanceof QgaCommandError)) throw err;
    return { ok: false, error: `the identity step failed: ${err.message}`, script: null, steps: { armed: false, identityMs: performance.now() - t0 } };
  }
  const identityMs = performance.now() - t0;
  if (request.script === undefined) return { ok: true, error: null, script: null, steps: { armed: false, identityMs } };
  return runScript(qga, request, identityMs, false, left);
}

/** The customisation script in a shell of its own (`sh -s`, the script on its stdin), until its exit was seen. */
async function runScript(qga: QgaClient, request: HandOutGuestRequest, identityMs: number, armed: boolean, left: () => number): Promise<HandOutGuestResult> {
  const env = [...GUEST_ENV, `OFFSHOOT_VM_NAME=${request.hostname}`, `OFFSHOOT_VM_ID=${request.vmId}`, ...(request.env ?? [])];
  const s0 = performance.now();
  const pid = await qga.start('/bin/sh', ['-s'], { input: request.script ?? '', env, timeoutMs: left() });
  const execMs = performance.now() - s0;
  const run = await waitFor(qga, pid, request.timeoutMs, left());
  return outcome(run, { armed, identityMs, execMs, exitMs: run.timings.exitMs, polls: run.timings.polls });
}

/** guest-set-time to now, in ns (qemu-ga sets the system clock, then the RTC from it with hwclock). */
function setTime(): QgaBatchCall {
  return { command: 'guest-set-time', args: { time: Date.now() * 1_000_000 } };
}

/** Waits for the guest process on the hand-out's poll schedule; the hand-out's own error when it does not end in time. */
async function waitFor(qga: QgaClient, pid: number, limitMs: number, leftMs: number): Promise<QgaExecResult> {
  try {
    return await qga.waitExec(pid, { timeoutMs: leftMs, pollDelayMs });
  } catch (err) {
    if (err instanceof QgaTimeoutError) throw new Error(`the hand-out step did not end within ${limitMs} ms (guest pid ${pid})`);
    throw err;
  }
}

/** A script's outcome; the waiter's own exit when no script reached it is a failed hand-out, not the script's. */
function outcome(run: QgaExecResult, steps: HandOutGuestResult['steps']): HandOutGuestResult {
  const exitCode = run.exitCode;
  const how = exitCode ?? `signal ${run.signal ?? '?'}`;
  const stdout = run.stdout.toString('utf8');
  const stderr = run.stderr.toString('utf8');
  const ok = exitCode === 0;
  if (steps.armed && steps.execMs === undefined && exitCode === NO_REQUEST && stdout === '' && stderr === '') return { ok: false, error: `the guest's waiter got no script (exit ${NO_REQUEST})`, script: null, steps };
  return { ok, error: ok ? null : `the customisation script exited with ${how}`, script: { exitCode, stdout, stderr }, steps };
}
