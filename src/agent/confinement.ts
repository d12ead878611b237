// How QEMU is confined on this host, found once when the agent starts:
// - a dedicated unprivileged user (`offshoot-qemu`, made by scripts/setup.sh;
//   OFFSHOOT_QEMU_USER names another, `none` turns it off) that QEMU is started
//   as through util-linux `setpriv` (uid, gid, supplementary groups cleared
//   but for /dev/kvm's, no capabilities, no_new_privs), as libvirt does: it
//   drops privileges before exec. QEMU 7.2's own `-runas` cannot be used: it
//   changes user after `-sandbox ...,elevateprivileges=deny` has forbidden
//   setuid, and QEMU is killed by SIGSYS (checked on this machine);
// - QEMU's seccomp sandbox `-sandbox on,obsolete=deny,elevateprivileges=deny,
//   spawn=deny,resourcecontrol=deny` (no exec, no fork, no setuid), probed by
//   starting QEMU once with it;
// - lazy restore needs userfaultfd, which QEMU 7.2 opens with the syscall:
//   an unprivileged process may only if vm.unprivileged_userfaultfd is 1.
//   Otherwise the QEMU of a lazy restore runs as root (still sandboxed), and
//   this says so.
// Where a part is impossible (no such user, the home's folders not
// searchable by it, a daemon not running as root, no seccomp), `reasons` says
// why; `offshoot host show` and the log report it. Nothing falls back silently.
import { execFile, spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { userInfo } from 'node:os';

export const DEFAULT_QEMU_USER = 'offshoot-qemu';
export const SANDBOX_OPTIONS = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

export interface QemuUser {
  name: string;
  uid: number;
  gid: number;
}

export interface Confinement {
  /** The user QEMU runs as; null: it runs as the daemon's own user (see `confined`). */
  user: QemuUser | null;
  /** Whether QEMU runs without root's privileges (as `user`, or as a daemon that is not root). */
  confined: boolean;
  /** Whether QEMU runs with its seccomp sandbox. */
  sandbox: boolean;
  /** Whether a lazy restore's QEMU is confined too (needs vm.unprivileged_userfaultfd=1 when `user` is set). */
  lazyRestoreConfined: boolean;
  /** Why a part of the confinement is missing; empty when QEMU is fully confined. */
  reasons: string[];
}

function lookupUser(name: string): QemuUser | undefined {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const [user, , uid, gid] = line.split(':');
      if (user === name && uid !== undefined && gid !== undefined) return { name, uid: Number(uid), gid: Number(gid) };
    }
  } catch {
    // no passwd file: no such user
  }
  return undefined;
}

/** Whether `user` may search (x) `dir` and every folder above it, by their mode bits (ACLs are not read). */
export function searchableBy(user: QemuUser, dir: string, extraGroups: readonly number[] = []): { ok: true } | { ok: false; blocking: string } {
  for (let d = dir; ; d = dirname(d)) {
    let info;
    try {
      info = statSync(d);
    } catch {
      return { ok: false, blocking: d };
    }
    const mode = info.mode;
    const ok = info.uid === user.uid ? (mode & 0o100) !== 0 : info.gid === user.gid || extraGroups.includes(info.gid) ? (mode & 0o010) !== 0 : (mode & 0o001) !== 0;
    if (!ok) return { ok: false, blocking: d };
    if (d === dirname(d)) return { ok: true };
  }
}

/**
 * Whether `user` can pass through `dir` (and every folder above it), by trying it as that user: unlike
 * searchableBy this honours ACLs (e.g. `setfacl -m u:offshoot-qemu:x /root`, as scripts/setup.sh does).
 */
export function canReachAs(user: QemuUser, dir: string): boolean {
  const [command, ...args] = [...runAsPrefix(user, []), 'test', '-x', dir];
  return spawnSync(command as string, args, { stdio: 'ignore', timeout: 10_000 }).status === 0;
}

/** The argv prefix that starts a program as `user` (setpriv, util-linux): no capabilities, no new privileges. */
export function runAsPrefix(user: QemuUser, groups: readonly number[]): string[] {
  return ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, groups.length > 0 ? `--groups=${groups.join(',')}` : '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--'];
}

/** Extra groups QEMU needs: the group of /dev/kvm when KVM is used and the device is not open to everyone. */
export function kvmGroups(accel: 'kvm' | 'tcg'): number[] {
  if (accel !== 'kvm') return [];
  try {
    const info = statSync('/dev/kvm');
    return (info.mode & 0o006) === 0o006 ? [] : [info.gid];
  } catch {
    return [];
  }
}

function unprivilegedUserfaultfd(): boolean {
  try {
    return readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1';
  } catch {
    return false;
  }
}

/** Starts QEMU once with the sandbox (as `user` if given) and has it quit over QMP; true if it ran. */
function probeSandbox(binary: string, user: QemuUser | null): Promise<{ ok: boolean; detail: string }> {
  const qemuArgs = ['-machine', 'none', '-nodefaults', '-display', 'none', '-sandbox', SANDBOX_OPTIONS, '-qmp', 'stdio'];
  const [command, ...args] = user ? [...runAsPrefix(user, []), binary, ...qemuArgs] : [binary, ...qemuArgs];
  return new Promise((resolve) => {
    const child = execFile(command as string, args, { timeout: 10_000 }, (err, _stdout, stderr) => {
      resolve(err ? { ok: false, detail: `${err.message.split('\n')[0]} ${stderr.trim().split('\n').slice(-1)[0] ?? ''}`.trim() } : { ok: true, detail: '' });
    });
    child.stdin?.end('{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n');
  });
}

export interface ProbeConfinementOptions {
  /** Folders QEMU must reach (the home, the memory folder): each one's parents must be searchable by the user. */
  folders: string[];
  binary: string;
  env?: NodeJS.ProcessEnv;
}

export async function probeConfinement(options: ProbeConfinementOptions): Promise<Confinement> {
  const env = options.env ?? process.env;
  const reasons: string[] = [];
  const wanted = env.OFFSHOOT_QEMU_USER ?? DEFAULT_QEMU_USER;
  let user: QemuUser | null = null;
  let confined = false;
  if (process.getuid?.() !== 0) {
    confined = true;
    reasons.push(`the daemon runs as ${userInfo().username} (not root), so QEMU runs as that user; no dedicated QEMU user is used`);
  } else if (wanted === 'none' || wanted === '') {
    reasons.push('OFFSHOOT_QEMU_USER=none: QEMU runs as root');
  } else {
    const found = lookupUser(wanted);
    if (!found) {
      reasons.push(`user ${wanted} does not exist (scripts/setup.sh creates it): QEMU runs as root`);
    } else if (found.uid === 0) {
      reasons.push(`user ${wanted} is root: QEMU runs as root`);
    } else {
      const blocked = options.folders.find((f) => !canReachAs(found, dirname(f)));
      if (blocked) {
        const check = searchableBy(found, dirname(blocked));
        const where = check.ok ? dirname(blocked) : check.blocking;
        reasons.push(`${where} is not searchable by ${wanted}, so it could not reach ${blocked}: QEMU runs as root (use an OFFSHOOT_HOME it can reach, or let it through: setfacl -m u:${wanted}:x ${where}, which scripts/setup.sh does for the default home)`);
      } else {
        user = found;
        confined = true;
      }
    }
  }
  const sandbox = await probeSandbox(options.binary, user);
  if (!sandbox.ok) reasons.push(`QEMU cannot start with -sandbox ${SANDBOX_OPTIONS} (${sandbox.detail}): it runs without its seccomp sandbox`);
  let lazyRestoreConfined = confined;
  if (confined && !unprivilegedUserfaultfd()) {
    lazyRestoreConfined = false;
    reasons.push(
      user
        ? 'vm.unprivileged_userfaultfd is 0: QEMU 7.2 needs userfaultfd for a lazy restore, so the QEMU of a lazy restore runs as root (sandboxed); set the sysctl to 1 to confine it too'
        : 'vm.unprivileged_userfaultfd is 0 and the daemon is not root: a lazy restore cannot work (use --eager)',
    );
  }
  return { user, confined, sandbox: sandbox.ok, lazyRestoreConfined, reasons };
}
