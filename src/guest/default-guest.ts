// The embedded default guest: finds the kernel, initramfs and data disk that
// scripts/build-guest.sh built from Debian packages (busybox, the real
// qemu-ga, the virtio modules), by reading the build's manifest.json. Also
// the markers the guest's init prints on the serial console.
import { readFile, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OffshootError } from '../common/index.ts';

/** Printed on the console (ttyS0) when the guest starts qemu-ga. */
export const GUEST_READY_MARKER = 'OFFSHOOT-GUEST-READY';
/** Printed on the console right after boot when the kernel command line has PROBE_CMDLINE_FLAG; the guest then powers off. */
export const GUEST_PROBE_MARKER = 'OFFSHOOT-PROBE-OK';
/** Kernel command line flag for the accelerator probe boot (e.g. does KVM really work here). */
export const PROBE_CMDLINE_FLAG = 'offshoot.probe=1';
/** Kernel command line parameter that sets the guest's hostname (default "offshoot"). */
export const HOSTNAME_CMDLINE_PARAM = 'offshoot.hostname';

/** A built default guest. Paths are absolute and point into one immutable build directory. */
export interface GuestImage {
  /** Kernel for QEMU's -kernel (the uncompressed vmlinux when it supports PVH boot, which boots much faster under TCG). */
  kernel: string;
  /** Initramfs for -initrd. */
  initrd: string;
  /** ext4 data disk (qcow2, 1 GiB virtual) that the guest mounts at /data. Read-only: use it as a backing file. */
  dataDisk: string;
  /** Kernel command line for -append. */
  cmdline: string;
  /** What `uname -r` says inside the guest. */
  kernelRelease: string;
  /** The build directory holding all of the above. */
  dir: string;
}

/** The default guest has not been built on this machine (or its build is incomplete). */
export class GuestNotBuiltError extends OffshootError {
  constructor(dir: string, reason: string) {
    super(
      'GUEST_NOT_BUILT',
      `the default guest is not built (${reason} in ${dir}): run \`npm run setup\` to build it`,
      { dir, reason },
      500,
    );
  }
}

/** <repo>/.cache/guest/current, found from this file's location (src/guest/ is two levels below the repo root). */
export function defaultGuestDir(): string {
  const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
  return join(repoRoot, '.cache', 'guest', 'current');
}

interface Manifest {
  kernelRelease: string;
  kernel: string;
  initrd: string;
  dataDisk: string;
  cmdline: string;
}

const REQUIRED_FIELDS = ['kernelRelease', 'kernel', 'initrd', 'dataDisk', 'cmdline'] as const;

function parseManifest(text: string, dir: string): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new GuestNotBuiltError(dir, 'manifest.json is not valid JSON');
  }
  if (typeof value !== 'object' || value === null) throw new GuestNotBuiltError(dir, 'manifest.json is not an object');
  const record = value as Record<string, unknown>;
  for (const field of REQUIRED_FIELDS) {
    if (typeof record[field] !== 'string' || record[field] === '') {
      throw new GuestNotBuiltError(dir, `manifest.json has no "${field}"`);
    }
  }
  return record as unknown as Manifest;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/**
 * Reads the default guest's manifest. The directory is `opts.dir`, else
 * $OFFSHOOT_GUEST_DIR, else <repo>/.cache/guest/current; a symlink (such as
 * `current`) is resolved, so the result keeps pointing at the same build
 * after a rebuild moves `current`. Throws GuestNotBuiltError when the
 * manifest or a file it names is missing.
 */
export async function loadDefaultGuest(opts: { dir?: string } = {}): Promise<GuestImage> {
  const given = opts.dir ?? (process.env['OFFSHOOT_GUEST_DIR'] || undefined) ?? defaultGuestDir();
  let dir: string;
  try {
    dir = await realpath(given);
  } catch {
    throw new GuestNotBuiltError(resolve(given), 'no build directory');
  }
  let text: string;
  try {
    text = await readFile(join(dir, 'manifest.json'), 'utf8');
  } catch {
    throw new GuestNotBuiltError(dir, 'no manifest.json');
  }
  const manifest = parseManifest(text, dir);
  const at = (p: string): string => (isAbsolute(p) ? p : join(dir, p));
  const image: GuestImage = {
    kernel: at(manifest.kernel),
    initrd: at(manifest.initrd),
    dataDisk: at(manifest.dataDisk),
    cmdline: manifest.cmdline,
    kernelRelease: manifest.kernelRelease,
    dir,
  };
  for (const [what, path] of [['kernel', image.kernel], ['initrd', image.initrd], ['dataDisk', image.dataDisk]] as const) {
    if (!(await isFile(path))) throw new GuestNotBuiltError(dir, `the ${what} file ${path} is missing`);
  }
  return image;
}
