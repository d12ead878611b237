// Gives a forked child its own identity through the guest agent: hostname,
// the NIC's MAC address, a new machine-id, fresh entropy mixed into the
// kernel's pool, then the user's script (run with `sh -s`, the VM's name and
// id in OFFSHOOT_VM_NAME / OFFSHOOT_VM_ID).
import { randomBytes } from 'node:crypto';
import type { QgaClient } from '../qemu/index.ts';
import type { CustomizeResult, Identity } from './types.ts';

const IDENTITY_SCRIPT = [
  'set -e',
  'hostname "$1"',
  'echo "$1" > /etc/hostname',
  'echo "$2" > /etc/machine-id',
  'if [ -n "$3" ]; then',
  '  for dev in /sys/class/net/*; do',
  '    n="${dev##*/}"; [ "$n" = lo ] && continue',
  '    ip link set dev "$n" address "$3" 2>/dev/null || true',
  '    break',
  '  done',
  'fi',
  'cat > /dev/urandom',
].join('\n');

export async function customizeGuest(qga: QgaClient, vmId: string, identity: Identity): Promise<CustomizeResult> {
  const t0 = performance.now();
  const base = await qga.exec('/bin/sh', ['-c', IDENTITY_SCRIPT, 'customize', identity.name, identity.machineId, identity.mac ?? ''], { input: randomBytes(512), timeoutMs: identity.timeoutMs });
  if (base.exitCode !== 0) {
    return { ok: false, error: `identity step exited with ${base.exitCode ?? base.signal}: ${base.stderr.toString('utf8').trim()}`, script: null, ms: performance.now() - t0 };
  }
  if (identity.script === undefined) return { ok: true, error: null, script: null, ms: performance.now() - t0 };
  const run = await qga.exec('/bin/sh', ['-s'], { input: identity.script, env: [`OFFSHOOT_VM_NAME=${identity.name}`, `OFFSHOOT_VM_ID=${vmId}`, 'PATH=/sbin:/bin:/usr/sbin:/usr/bin'], timeoutMs: identity.timeoutMs });
  const script = { exitCode: run.exitCode, stdout: run.stdout.toString('utf8'), stderr: run.stderr.toString('utf8') };
  const ok = run.exitCode === 0;
  return { ok, error: ok ? null : `customize script exited with ${run.exitCode ?? `signal ${run.signal}`}`, script, ms: performance.now() - t0 };
}
