// The guest's side of handing a pool child to whoever claimed it: one
// guest-exec of the shell that sets the hostname (and /etc/hostname,
// /etc/hosts), the clock when asked (the child continues from its
// template's frozen time, or from when it was paused), mixes fresh entropy
// into the kernel's pool, and then, when there is a customisation script,
// becomes that script (`exec sh -s`) with the claim's environment exported.
// One process start in the guest, not one per step: a claim is on the
// critical path (the shell itself writes the hostname into
// /proc/sys/kernel/hostname; only `date` is another process, and only when
// the clock is set). Entropy travels on standard input, never on a command
// line other guest users could read. The pool warmed this very path once
// when the child was made (same commands), so under TCG its code is already
// translated when a claim comes.
//
// The exit is polled here rather than with QgaClient.exec's backoff (5 ms
// doubling to 200 ms, made for long commands): the step takes a few to a few
// tens of ms, and a doubling backoff lets up to half of it go by unseen. Each
// poll is a guest-agent round trip that the guest's vCPU also serves, so the
// polls are a few ms apart rather than back to back, and further apart while
// several hand-outs run at once in this process (their guests share the
// host's CPUs, so each step takes longer, and every poll costs CPU).
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { sleep } from '../common/index.ts';
import type { QgaClient } from '../qemu/index.ts';

/** Exit code of the identity part (the script's own codes are its own). */
const IDENTITY_FAILED = 97;

const HAND_OUT_SCRIPT = [
  'read -r seed',
  'printf %s "$seed" > /dev/urandom',
  `{ echo "$1" > /proc/sys/kernel/hostname; } 2>/dev/null || { echo "offshoot: cannot set the hostname" >&2; exit ${IDENTITY_FAILED}; }`,
  'echo "$1" > /etc/hostname',
  'printf \'127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n\' "$1" > /etc/hosts',
  'if [ -n "$2" ]; then date -u -s "@$2" > /dev/null 2>&1 || echo "offshoot: cannot set the clock" >&2; fi',
  'if [ "$3" = 1 ]; then exec /bin/sh -s; fi',
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
  /** ms: the guest-exec round trip (the guest starts the shell), from there until its exit was seen; exit polls. */
  steps: { execMs: number; exitMs: number; polls: number };
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
}

export async function handOutInGuest(qga: QgaClient, request: HandOutGuestRequest): Promise<HandOutGuestResult> {
  running++;
  try {
    return await handOut(qga, request);
  } finally {
    running--;
  }
}

async function handOut(qga: QgaClient, request: HandOutGuestRequest): Promise<HandOutGuestResult> {
  const t0 = performance.now();
  const deadline = Date.now() + request.timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const seconds = request.setClock ? String(Math.floor(Date.now() / 1000)) : '';
  const hasScript = request.script !== undefined;
  const input = Buffer.concat([Buffer.from(`${randomBytes(32).toString('hex')}\n`), Buffer.from(request.script ?? '')]);
  const env = ['PATH=/sbin:/bin:/usr/sbin:/usr/bin', 'HOME=/root', `OFFSHOOT_VM_NAME=${request.hostname}`, `OFFSHOOT_VM_ID=${request.vmId}`, ...(request.env ?? [])];
  const args = ['-c', HAND_OUT_SCRIPT, 'offshoot-claim', request.hostname, seconds, hasScript ? '1' : '0'];
  const { pid } = await qga.execute<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: args, env, 'input-data': input.toString('base64'), 'capture-output': true }, { timeoutMs: left() });
  const execMs = performance.now() - t0;
  let polls = 0;
  let status: ExecStatus;
  for (;;) {
    const elapsed = performance.now() - t0;
    const pause = pollDelayMs(elapsed, running);
    if (Date.now() + pause >= deadline) throw new Error(`the hand-out step did not end within ${request.timeoutMs} ms (guest pid ${pid})`);
    await sleep(pause);
    polls++;
    status = await qga.execute<ExecStatus>('guest-exec-status', { pid }, { timeoutMs: left() });
    if (status.exited) break;
  }
  const steps = { execMs, exitMs: performance.now() - t0 - execMs, polls };
  const exitCode = status.signal === undefined ? (status.exitcode ?? null) : null;
  const how = exitCode ?? `signal ${status.signal ?? '?'}`;
  const stdout = Buffer.from(status['out-data'] ?? '', 'base64').toString('utf8');
  const stderr = Buffer.from(status['err-data'] ?? '', 'base64').toString('utf8');
  if (!hasScript || (exitCode === IDENTITY_FAILED && stderr.includes('offshoot: cannot set the hostname'))) {
    const ok = exitCode === 0;
    return { ok, error: ok ? null : `the identity step exited with ${how}: ${stderr.trim()}`, script: null, steps };
  }
  const ok = exitCode === 0;
  return { ok, error: ok ? null : `the customisation script exited with ${how}`, script: { exitCode, stdout, stderr }, steps };
}
