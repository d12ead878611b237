// Chooses the accelerator for this host: KVM only when a real trial boot under
// KVM reaches the guest's init, otherwise TCG. The device file is not proof:
// on nested or PVM-backed hosts /dev/kvm opens fine and `-cpu host` aborts or
// the kernel hangs. The trial passes ` offshoot.probe=1` on the kernel command
// line; the embedded guest's init then prints OFFSHOOT-PROBE-OK on the serial
// console and powers off. The result is cached in a JSON file keyed by the
// QEMU binary, kernel, initrd, command line and /dev/kvm presence: the home's
// (across restarts), and one for this boot of the machine that every home on
// it reads (its key adds the boot id; it sits in /run, gone at reboot), so a
// new home or lab host does not wait out another trial (15 s where KVM hangs).
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, mkdtemp, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import { InvalidInputError, OffshootError, sleep } from '../common/index.ts';
import { qemuOptValue } from './argv.ts';
import type { Accelerator } from './launch-spec.ts';
import { DEFAULT_QEMU_BINARY } from './process.ts';

export const PROBE_MARKER = 'OFFSHOOT-PROBE-OK';
export const PROBE_CMDLINE_FLAG = 'offshoot.probe=1';
export const ACCEL_ENV = 'OFFSHOOT_ACCEL';
const DEFAULT_KVM_DEVICE = '/dev/kvm';
const POLL_MS = 50;
const STDERR_KEEP = 2048;

export interface AcceleratorChoice {
  accel: Accelerator;
  /** Why, in a sentence (the trial's stderr tail, 'timed out', ...). */
  reason: string;
  /** ISO time of the decision (of the trial, for a cached result). */
  probedAt: string;
  /** 'env': forced by OFFSHOOT_ACCEL; 'device': /dev/kvm unusable; 'trial': probed now; 'cache': an earlier trial. */
  source: 'env' | 'device' | 'trial' | 'cache';
}

export interface ProbeAcceleratorOptions {
  kernel: string;
  initrd?: string;
  cmdline?: string;
  binary?: string;
  /** Time limit of the trial boot; default 15 s. */
  timeoutMs?: number;
  /** JSON file remembering trial results (the home's). */
  cacheFile?: string;
  /** JSON file remembering trial results for this boot of the machine, shared by its homes (see bootCacheFile()). */
  bootCacheFile?: string;
  /** For tests; default /dev/kvm. */
  kvmDevice?: string;
  /** Where the trial's temporary directory is made; default the OS temp dir. */
  tmpDir?: string;
}

/** `qemu --version` could not be run or read. */
export class QemuVersionError extends OffshootError {
  readonly binary: string;
  constructor(binary: string, reason: string, cause?: unknown) {
    super('QEMU_VERSION_FAILED', `cannot read the version of ${binary}: ${reason}`, { binary, reason }, 500, { cause });
    this.binary = binary;
  }
}

/** Versions read, by binary: the identity (resolved path, size, mtime) they were read for. */
const versions = new Map<string, { identity: string; version: string }>();

/**
 * "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" from the first line of `--version`, read once per build of
 * the binary (its resolved path, size and mtime; an upgrade changes them): every host heartbeat asks,
 * and a spawn from a daemon with a few hundred MiB resident held its event loop ~250 ms at load 17.
 */
export async function qemuVersion(binary = DEFAULT_QEMU_BINARY): Promise<string> {
  const identity = await fileIdentity('binary', await resolveBinary(binary)).catch(() => undefined);
  const known = versions.get(binary);
  if (identity !== undefined && known?.identity === identity) return known.version;
  const version = await spawnVersion(binary);
  if (identity !== undefined) versions.set(binary, { identity, version });
  return version;
}

function spawnVersion(binary: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(binary, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.once('error', (e) => reject(new QemuVersionError(binary, e.message, e)));
    child.once('close', (code) => {
      const match = /version\s+(.+)/i.exec(out.split('\n')[0] ?? '');
      if (code === 0 && match?.[1] !== undefined) resolvePromise(match[1].trim());
      else reject(new QemuVersionError(binary, `exit code ${code}, output "${out.trim().slice(0, 200)}"`));
    });
  });
}

const inFlight = new Map<string, Promise<AcceleratorChoice>>();

/**
 * KVM or TCG for this host. Order: OFFSHOOT_ACCEL=kvm|tcg forces; a /dev/kvm
 * that cannot be opened read-write means TCG; else a cached trial result for
 * the same binary, kernel, initrd, cmdline; else a trial boot (never longer
 * than `timeoutMs` plus cleanup), whose result is cached.
 */
export async function probeAccelerator(options: ProbeAcceleratorOptions): Promise<AcceleratorChoice> {
  const forced = process.env[ACCEL_ENV];
  if (forced !== undefined && forced !== '') {
    if (forced !== 'kvm' && forced !== 'tcg') throw new InvalidInputError(`${ACCEL_ENV} must be "kvm" or "tcg", not "${forced}"`, { variable: ACCEL_ENV, value: forced });
    return { accel: forced, reason: `forced by ${ACCEL_ENV}=${forced}`, probedAt: new Date().toISOString(), source: 'env' };
  }
  const device = options.kvmDevice ?? DEFAULT_KVM_DEVICE;
  const deviceProblem = await kvmDeviceProblem(device);
  if (deviceProblem !== undefined) {
    return { accel: 'tcg', reason: `${device} cannot be opened read-write (${deviceProblem})`, probedAt: new Date().toISOString(), source: 'device' };
  }

  const key = await cacheKey(options, device);
  const pending = inFlight.get(key);
  if (pending !== undefined) return pending;
  const run = (async () => {
    const cached = options.cacheFile === undefined ? undefined : (await readCache(options.cacheFile))[key];
    if (cached !== undefined) return { ...cached, source: 'cache' as const };
    const bootKey = options.bootCacheFile === undefined ? undefined : await bootCacheKey(key);
    const bootCached = options.bootCacheFile === undefined || bootKey === undefined ? undefined : (await readCache(options.bootCacheFile))[bootKey];
    if (bootCached !== undefined) {
      const choice = { ...bootCached, source: 'cache' as const };
      if (options.cacheFile !== undefined) await writeCacheEntry(options.cacheFile, key, choice);
      return choice;
    }
    const choice = await trialBoot(options);
    if (options.cacheFile !== undefined) await writeCacheEntry(options.cacheFile, key, choice);
    if (options.bootCacheFile !== undefined && bootKey !== undefined) await writeCacheEntry(options.bootCacheFile, bootKey, choice).catch(() => undefined);
    return choice;
  })().finally(() => inFlight.delete(key));
  inFlight.set(key, run);
  return run;
}

async function kvmDeviceProblem(device: string): Promise<string | undefined> {
  try {
    const handle = await open(device, constants.O_RDWR);
    await handle.close();
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  }
}

// ---- cache -------------------------------------------------------------------

interface CacheFile {
  version: 1;
  entries: Record<string, Omit<AcceleratorChoice, 'source'>>;
}

/** The binary as found in PATH (as spawn would find it), for its size and mtime. */
async function resolveBinary(binary: string): Promise<string> {
  if (binary.includes('/')) return resolve(binary);
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, binary);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return binary;
}

async function fileIdentity(field: string, path: string): Promise<string> {
  try {
    const st = await stat(path);
    return `${resolve(path)}:${st.size}:${Math.trunc(st.mtimeMs)}`;
  } catch (err) {
    throw new InvalidInputError(`${field} ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { field, path });
  }
}

/**
 * Identifies one QEMU build (its resolved path, size and mtime change with
 * every package upgrade, unlike a bare version string), the kernel and
 * initrd, the command line and /dev/kvm presence. Reading it spawns nothing.
 */
async function cacheKey(options: ProbeAcceleratorOptions, device: string): Promise<string> {
  const binaryPath = await resolveBinary(options.binary ?? DEFAULT_QEMU_BINARY);
  let qemu: string;
  try {
    qemu = await fileIdentity('binary', binaryPath);
  } catch {
    qemu = binaryPath; // not found: the trial will say so
  }
  const kernel = await fileIdentity('kernel', options.kernel);
  const initrd = options.initrd === undefined ? '-' : await fileIdentity('initrd', options.initrd);
  return JSON.stringify({ qemu, kernel, initrd, cmdline: options.cmdline ?? '', kvm: `${device}:present` });
}

/**
 * The boot cache's key: the home cache's and this boot's id (a reboot may bring another kernel module or
 * setting), undefined where the kernel gives no boot id (then the boot cache is not used).
 */
async function bootCacheKey(key: string): Promise<string | undefined> {
  const bootId = await readFile('/proc/sys/kernel/random/boot_id', 'utf8').then(
    (s) => s.trim(),
    () => '',
  );
  return bootId === '' ? undefined : JSON.stringify({ boot: bootId, ...(JSON.parse(key) as Record<string, string>) });
}

/**
 * Where this boot's trial results are shared by the homes on the machine: /run/offshoot/accel.json for root
 * (a tmpfs, emptied at reboot), $XDG_RUNTIME_DIR/offshoot/accel.json for another user; none without either.
 * Its folder is made private to the user (0700): a result read from it chooses the accelerator.
 */
export function bootCacheFile(): string | undefined {
  if (process.getuid?.() === 0) return '/run/offshoot/accel.json';
  const runtime = process.env.XDG_RUNTIME_DIR;
  return runtime !== undefined && isAbsolute(runtime) ? join(runtime, 'offshoot', 'accel.json') : undefined;
}

async function readCache(file: string): Promise<CacheFile['entries']> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as Partial<CacheFile>;
    return parsed.version === 1 && typeof parsed.entries === 'object' && parsed.entries !== null ? parsed.entries : {};
  } catch {
    return {}; // missing or unreadable: probe again
  }
}

async function writeCacheEntry(file: string, key: string, choice: AcceleratorChoice): Promise<void> {
  const entries = await readCache(file);
  entries[key] = { accel: choice.accel, reason: choice.reason, probedAt: choice.probedAt };
  const content: CacheFile = { version: 1, entries };
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(content, null, 2)}\n`);
  await rename(tmp, file);
}

// ---- trial boot --------------------------------------------------------------

/** Arguments of the KVM trial boot. */
export function probeArgv(options: Pick<ProbeAcceleratorOptions, 'kernel' | 'initrd' | 'cmdline'>, consoleFile: string): string[] {
  const argv = [
    '-name', 'guest=offshoot-accel-probe',
    '-no-user-config', '-nodefaults', '-display', 'none', '-no-reboot',
    '-machine', 'q35', '-accel', 'kvm', '-cpu', 'host', '-smp', '1', '-m', '256M',
    '-chardev', `file,id=probe-console,path=${qemuOptValue(consoleFile)}`,
    '-serial', 'chardev:probe-console',
    '-kernel', options.kernel,
  ];
  if (options.initrd !== undefined) argv.push('-initrd', options.initrd);
  argv.push('-append', [options.cmdline ?? '', PROBE_CMDLINE_FLAG].filter((s) => s.length > 0).join(' '));
  return argv;
}

async function markerSeen(consoleFile: string): Promise<boolean> {
  try {
    return (await readFile(consoleFile, 'utf8')).includes(PROBE_MARKER);
  } catch {
    return false;
  }
}

function lastLines(text: string, n: number): string {
  return text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0).slice(-n).join(' | ');
}

async function trialBoot(options: ProbeAcceleratorOptions): Promise<AcceleratorChoice> {
  const binary = options.binary ?? DEFAULT_QEMU_BINARY;
  const timeoutMs = options.timeoutMs ?? 15_000;
  const dir = await mkdtemp(join(options.tmpDir ?? tmpdir(), 'offshoot-accel-'));
  const consoleFile = join(dir, 'console.log');
  const started = Date.now();
  const choice = (accel: Accelerator, reason: string): AcceleratorChoice => ({ accel, reason, probedAt: new Date().toISOString(), source: 'trial' });
  const kernel = isAbsolute(options.kernel) ? options.kernel : resolve(options.kernel);
  const initrd = options.initrd === undefined ? undefined : resolve(options.initrd);
  try {
    // cwd is the temp dir: a core dump of an aborting QEMU lands there and is removed with it.
    const child = spawn(binary, probeArgv({ kernel, initrd, cmdline: options.cmdline }, consoleFile), { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-STDERR_KEEP)));
    let exit: { code: number | null; signal: string | null; error?: Error } | undefined;
    const exited = new Promise<void>((done) => {
      child.once('error', (error) => {
        exit = { code: null, signal: null, error };
        done();
      });
      child.once('close', (code, signal) => {
        exit ??= { code, signal };
        done();
      });
    });
    const stop = async (): Promise<void> => {
      if (exit === undefined) child.kill('SIGKILL');
      await Promise.race([exited, sleep(5000)]);
    };

    while (true) {
      if (await markerSeen(consoleFile)) {
        await stop();
        return choice('kvm', `a trial boot under KVM reached the guest's init in ${Date.now() - started} ms`);
      }
      if (exit !== undefined) {
        if (await markerSeen(consoleFile)) return choice('kvm', `a trial boot under KVM reached the guest's init in ${Date.now() - started} ms`);
        const how = exit.error !== undefined ? `could not run ${binary} (${exit.error.message})` : exit.signal !== null ? `killed by ${exit.signal}` : `exit code ${exit.code}`;
        const tail = lastLines(stderr, 3);
        return choice('tcg', `the KVM trial boot failed after ${Date.now() - started} ms: QEMU ${how}${tail ? `: ${tail}` : ''}`);
      }
      if (Date.now() - started >= timeoutMs) {
        await stop();
        return choice('tcg', `the KVM trial boot timed out: no ${PROBE_MARKER} on the console within ${timeoutMs} ms`);
      }
      await Promise.race([exited, sleep(POLL_MS)]);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
