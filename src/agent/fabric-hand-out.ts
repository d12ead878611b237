// The guest's side of handing a pool child to whoever claimed it: one
// guest-exec of the shell that sets the hostname (and /etc/hostname,
// /etc/hosts), the clock (the child continues from its template's frozen
// time), mixes fresh entropy into the kernel's pool, and then, when there is
// a customisation script, becomes that script (`exec sh -s`) with the claim's
// environment exported. One process start in the guest, not one per step: a
// claim is on the critical path (the shell itself writes the hostname into
// /proc/sys/kernel/hostname; only `date` is another process). Entropy
// travels on standard input, never on a command line other guest users
// could read. The pool warmed this very
// path once when the child was made (same commands), so under TCG its code is
// already translated when a claim comes.
import { randomBytes } from 'node:crypto';
import type { QgaClient } from '../qemu/index.ts';

/** Exit code of the identity part (the script's own codes are its own). */
const IDENTITY_FAILED = 97;

const HAND_OUT_SCRIPT = [
  'read -r seed',
  'printf %s "$seed" > /dev/urandom',
  `{ echo "$1" > /proc/sys/kernel/hostname; } 2>/dev/null || { echo "offshoot: cannot set the hostname" >&2; exit ${IDENTITY_FAILED}; }`,
  'echo "$1" > /etc/hostname',
  'printf \'127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n\' "$1" > /etc/hosts',
  'date -u -s "@$2" > /dev/null 2>&1 || echo "offshoot: cannot set the clock" >&2',
  'if [ "$3" = 1 ]; then exec /bin/sh -s; fi',
].join('\n');

export interface HandOutGuestRequest {
  hostname: string;
  script?: string;
  env?: string[];
  vmId: string;
  timeoutMs: number;
}

export interface HandOutGuestResult {
  ok: boolean;
  error: string | null;
  script: { exitCode: number | null; stdout: string; stderr: string } | null;
}

export async function handOutInGuest(qga: QgaClient, request: HandOutGuestRequest): Promise<HandOutGuestResult> {
  const seconds = String(Math.floor(Date.now() / 1000));
  const hasScript = request.script !== undefined;
  const input = Buffer.concat([Buffer.from(`${randomBytes(32).toString('hex')}\n`), Buffer.from(request.script ?? '')]);
  const env = ['PATH=/sbin:/bin:/usr/sbin:/usr/bin', 'HOME=/root', `OFFSHOOT_VM_NAME=${request.hostname}`, `OFFSHOOT_VM_ID=${request.vmId}`, ...(request.env ?? [])];
  const run = await qga.exec('/bin/sh', ['-c', HAND_OUT_SCRIPT, 'offshoot-claim', request.hostname, seconds, hasScript ? '1' : '0'], { input, env, timeoutMs: request.timeoutMs });
  const stdout = run.stdout.toString('utf8');
  const stderr = run.stderr.toString('utf8');
  if (!hasScript || (run.exitCode === IDENTITY_FAILED && stderr.includes('offshoot: cannot set the hostname'))) {
    const ok = run.exitCode === 0;
    return { ok, error: ok ? null : `the identity step exited with ${run.exitCode ?? `signal ${run.signal}`}: ${stderr.trim()}`, script: null };
  }
  const ok = run.exitCode === 0;
  return { ok, error: ok ? null : `the customisation script exited with ${run.exitCode ?? `signal ${run.signal}`}`, script: { exitCode: run.exitCode, stdout, stderr } };
}
