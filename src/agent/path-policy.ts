// Which host files Offshoot may hand to QEMU or write: the one rule, kept by
// the host agent (the control plane never decides it). Allowed roots are the
// Offshoot home, the registered datastores, and the folders the operator
// named with `offshoot serve --allow-images DIR` (or OFFSHOOT_ALLOW_IMAGES,
// colon-separated). A path is resolved with realpath (symlinks followed) and
// must lie inside a root; anything else is PATH_NOT_ALLOWED, naming the path
// and the roots. `offshoot disk import` is how an outside file comes in (it
// copies). Files are checked without ever opening them first: a FIFO, socket
// or device is refused by stat, before anything could block on it.
//
// Datastore folders have their own rule (checkDatastorePath): not `/` or a
// system folder, not the home or around it or in a folder Offshoot fills in
// it (vms, images, bases, work, checkpoints), not inside or
// around another datastore, not under a file; checked before any mkdir.
import { constants, realpathSync, statSync } from 'node:fs';
import { access, lstat, realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { InvalidInputError, OffshootError } from '../common/index.ts';

/** A path outside every allowed root. HTTP 403. */
export class PathNotAllowedError extends OffshootError {
  constructor(field: string, path: string, resolved: string, roots: readonly string[]) {
    super(
      'PATH_NOT_ALLOWED',
      `${field}: ${path}${resolved !== path ? ` (resolves to ${resolved})` : ''} is outside the folders Offshoot may use (${roots.join(', ')}); import the file with \`offshoot disk import\`, or start the daemon with --allow-images DIR`,
      { field, path, resolved, allowedRoots: [...roots] },
      403,
    );
  }
}

/** Not a regular file: a folder, FIFO, socket or device. HTTP 400. */
export class NotRegularFileError extends OffshootError {
  constructor(field: string, path: string, what: string) {
    super('NOT_A_REGULAR_FILE', `${field}: ${path} ${what}; Offshoot only uses regular files`, { field, path, what }, 400);
  }
}

/** A file to create exists already. HTTP 409. */
export class TargetExistsError extends OffshootError {
  constructor(field: string, path: string) {
    super('ALREADY_EXISTS', `${field}: ${path} already exists; Offshoot never overwrites a file`, { field, path, kind: 'file', name: path }, 409);
  }
}

export class DatastorePlacementError extends OffshootError {
  constructor(path: string, reason: string) {
    super('DATASTORE_PATH_INVALID', `cannot use ${path} as a datastore: ${reason}`, { path, reason }, 400);
  }
}

/** Folders that are never a datastore themselves (places under them may be: /var/lib/offshoot, /tmp/ds). */
const SYSTEM_FOLDERS = ['/', '/home', '/media', '/mnt', '/opt', '/root', '/srv', '/tmp', '/var', '/var/lib', '/var/tmp'];
/** Trees that hold the system or virtual file systems: no datastore in them at any depth. */
const SYSTEM_TREES = ['/bin', '/boot', '/dev', '/etc', '/lib', '/lib32', '/lib64', '/libx32', '/proc', '/run', '/sbin', '/sys', '/usr', '/var/lib/dpkg', '/var/lib/apt'];
/** Folders of the home that Offshoot fills itself (see layout.ts); a datastore may be elsewhere in the home. */
const HOME_FOLDERS = ['vms', 'images', 'bases', 'work', 'checkpoints'];

export function isInside(path: string, root: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

function describeKind(info: { isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isBlockDevice(): boolean; isCharacterDevice(): boolean }): string {
  if (info.isDirectory()) return 'is a folder';
  if (info.isFIFO()) return 'is a FIFO';
  if (info.isSocket()) return 'is a socket';
  if (info.isBlockDevice() || info.isCharacterDevice()) return 'is a device';
  return 'is not a regular file';
}

function realOrResolved(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

function assertPathText(field: string, path: string): void {
  if (typeof path !== 'string' || path.length === 0 || !isAbsolute(path)) throw new InvalidInputError(`${field} must be an absolute path`, { field, path });
  if (path.includes('\0')) throw new InvalidInputError(`${field} must not contain NUL`, { field });
}

/**
 * Refuses anything but an existing regular file, by stat (which follows symlinks but never opens the
 * file, so a FIFO cannot block). Returns its size and mode.
 */
export async function assertRegularFile(field: string, path: string): Promise<{ size: number; mode: number }> {
  assertPathText(field, path);
  let info;
  try {
    info = await stat(path);
  } catch (err) {
    throw new InvalidInputError(`${field}: cannot read file ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { field, path });
  }
  if (!info.isFile()) throw new NotRegularFileError(field, path, describeKind(info));
  return { size: info.size, mode: info.mode & 0o7777 };
}

export class PathPolicy {
  readonly home: string;
  private readonly datastores = new Set<string>();
  private readonly allowed: string[] = [];

  /** `allowedDirs` must be existing folders (else INVALID_INPUT); `home` is the Offshoot home. */
  constructor(home: string, allowedDirs: readonly string[] = []) {
    this.home = realOrResolved(home);
    for (const dir of allowedDirs) {
      assertPathText('--allow-images', dir);
      let real: string;
      try {
        real = realpathSync(dir);
      } catch (err) {
        throw new InvalidInputError(`--allow-images ${dir}: the folder cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { path: dir });
      }
      if (!statSync(real).isDirectory()) throw new InvalidInputError(`--allow-images ${dir} is not a folder`, { path: dir });
      if (real === '/') throw new InvalidInputError('--allow-images / would allow every file on the host', { path: dir });
      this.allowed.push(real);
    }
  }

  /** The allowed roots (real paths): the home, the datastores, the allowed image folders. */
  roots(): string[] {
    return [this.home, ...this.datastores, ...this.allowed];
  }

  allowedImageDirs(): string[] {
    return [...this.allowed];
  }

  /** The datastores are exactly these folders (the control plane's list). */
  setDatastores(paths: readonly string[]): void {
    this.datastores.clear();
    for (const path of paths) this.addDatastore(path);
  }

  addDatastore(path: string): void {
    this.datastores.add(realOrResolved(path));
  }

  removeDatastore(path: string): void {
    this.datastores.delete(realOrResolved(path));
    this.datastores.delete(resolve(path));
  }

  /** The real path of `path` if it lies inside an allowed root; PATH_NOT_ALLOWED otherwise. The file must exist. */
  async allowedPath(field: string, path: string): Promise<string> {
    assertPathText(field, path);
    let real: string;
    try {
      real = await realpath(path);
    } catch (err) {
      throw new InvalidInputError(`${field}: cannot read file ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { field, path });
    }
    const roots = this.roots();
    if (!roots.some((root) => isInside(real, root))) throw new PathNotAllowedError(field, path, real, roots);
    return real;
  }

  /** An existing, readable regular file inside an allowed root (a disk, kernel, initrd or checkpoint to read). */
  async allowedFile(field: string, path: string, options: { writable?: boolean } = {}): Promise<string> {
    const real = await this.allowedPath(field, path);
    await assertRegularFile(field, real);
    try {
      await access(real, options.writable ? constants.R_OK | constants.W_OK : constants.R_OK);
    } catch (err) {
      throw new InvalidInputError(`${field}: cannot ${options.writable ? 'write' : 'read'} file ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { field, path });
    }
    return real;
  }

  /**
   * A new file to create: its folder must exist inside an allowed root and the file must not exist
   * (not even as a dangling symlink). Returns the path in the real folder.
   */
  async newFile(field: string, path: string): Promise<string> {
    assertPathText(field, path);
    const name = basename(path);
    if (name === '' || name === '.' || name === '..') throw new InvalidInputError(`${field} must name a file`, { field, path });
    const folder = await this.allowedPath(field, dirname(path)).catch((err: unknown) => {
      if (err instanceof InvalidInputError) throw new InvalidInputError(`${field}: the folder of ${path} does not exist`, { field, path });
      throw err;
    });
    if (!(await stat(folder)).isDirectory()) throw new NotRegularFileError(field, path, 'is under something that is not a folder');
    const target = join(folder, name);
    const existing = await lstat(target).catch(() => undefined);
    if (existing) throw new TargetExistsError(field, path);
    return target;
  }

  /**
   * Where a datastore may be: checked before anything is created. Returns the real path it will have
   * (the real path of its deepest existing folder, plus the rest).
   */
  async checkDatastorePath(path: string): Promise<string> {
    if (typeof path !== 'string' || !isAbsolute(path)) throw new DatastorePlacementError(String(path), 'the path must be absolute');
    if (path.includes('\0')) throw new DatastorePlacementError(path.replaceAll('\0', '\\0'), 'the path contains NUL');
    const wanted = resolve(path);
    // The deepest folder that exists, every part of it a folder.
    let existing = wanted;
    const rest: string[] = [];
    for (;;) {
      const info = await stat(existing).catch((err: NodeJS.ErrnoException) => err);
      if (!(info instanceof Error)) {
        if (!info.isDirectory()) throw new DatastorePlacementError(path, existing === wanted ? `it ${describeKind(info)}` : `${existing} ${describeKind(info)}`);
        break;
      }
      if (info.code === 'ENOTDIR') throw new DatastorePlacementError(path, `part of it is a file, not a folder`);
      if (info.code !== 'ENOENT') throw new DatastorePlacementError(path, `${existing} cannot be read (${info.code})`);
      rest.unshift(basename(existing));
      existing = dirname(existing);
    }
    const real = join(await realpath(existing), ...rest);
    if (SYSTEM_FOLDERS.includes(real) || SYSTEM_TREES.some((t) => isInside(real, t))) throw new DatastorePlacementError(path, `${real} is a system folder`);
    if (isInside(this.home, real)) throw new DatastorePlacementError(path, `it ${real === this.home ? 'is' : 'contains'} the Offshoot home ${this.home}`);
    const reserved = HOME_FOLDERS.map((f) => join(this.home, f)).find((f) => isInside(real, f));
    if (reserved) throw new DatastorePlacementError(path, `${reserved} is a folder of the Offshoot home`);
    for (const ds of this.datastores) {
      if (isInside(real, ds) || isInside(ds, real)) throw new DatastorePlacementError(path, `it ${real === ds ? 'is' : isInside(real, ds) ? 'is inside' : 'contains'} the datastore at ${ds}`);
    }
    return real;
  }
}
