// Locators on this host: the one place where a file reference from the
// control plane (see protocol/locator.ts) becomes a host path, and a host path
// becomes a reference. Scopes: `home` is the agent's home; `ds.<id>` a
// datastore this agent registered (its folder is remembered in
// <home>/datastores.json, so references resolve after a restart);
// `ext.<root>` a folder the operator allowed with --allow-images (the root id
// is a hash of its real path, stable across restarts). A reference resolves
// only inside its scope's folder, also through symlinks, and a path outside
// every scope has no reference (PATH_NOT_ALLOWED).
import { createHash } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { InvalidInputError, NotFoundError, OffshootError, parseJsonOr, writeFileAtomic } from '../common/index.ts';
import type { Locator, LocatorScope } from '../protocol/index.ts';
import { makeLocator, parseLocator } from '../protocol/index.ts';
import type { PathPolicy } from './path-policy.ts';
import { isInside } from './path-policy.ts';

export interface RegisteredDatastore {
  id: string;
  name: string;
  path: string;
}

function real(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

export function allowedRootId(path: string): string {
  return createHash('sha256').update(path).digest('hex').slice(0, 12);
}

export class Locations {
  private readonly datastores = new Map<string, RegisteredDatastore>();
  private readonly registryFile: string;

  constructor(
    private readonly home: string,
    private readonly policy: PathPolicy,
  ) {
    this.registryFile = join(home, 'datastores.json');
  }

  /** Reads the datastores this agent registered before (call once at start). */
  async load(): Promise<void> {
    const text = await readFile(this.registryFile, 'utf8').catch(() => '[]');
    for (const ds of parseJsonOr<RegisteredDatastore[]>(text, [])) this.datastores.set(ds.id, ds);
    this.policy.setDatastores([...this.datastores.values()].map((d) => d.path));
  }

  listDatastores(): RegisteredDatastore[] {
    return [...this.datastores.values()];
  }

  datastore(id: string): RegisteredDatastore {
    const ds = this.datastores.get(id);
    if (!ds) throw new NotFoundError('datastore', id);
    return ds;
  }

  /** Remembers a datastore folder under its id (idempotent for the same folder). */
  async addDatastore(ds: RegisteredDatastore): Promise<void> {
    const existing = this.datastores.get(ds.id);
    if (existing && existing.path !== ds.path) throw new OffshootError('ALREADY_EXISTS', `datastore ${ds.id} is already registered on this host at ${existing.path}`, { kind: 'datastore', name: ds.id, path: existing.path }, 409);
    this.datastores.set(ds.id, ds);
    this.policy.addDatastore(ds.path);
    await this.save();
  }

  async removeDatastore(id: string): Promise<void> {
    const ds = this.datastores.get(id);
    if (!ds) return;
    this.datastores.delete(id);
    this.policy.removeDatastore(ds.path);
    await this.save();
  }

  private async save(): Promise<void> {
    await mkdir(dirname(this.registryFile), { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.registryFile, `${JSON.stringify([...this.datastores.values()], null, 2)}\n`);
  }

  private rootOf(scope: LocatorScope): string {
    if (scope.kind === 'home') return this.home;
    if (scope.kind === 'datastore') return this.datastore(scope.datastoreId).path;
    const root = this.policy.allowedImageDirs().find((dir) => allowedRootId(dir) === scope.rootId);
    if (!root) throw new OffshootError('PATH_NOT_ALLOWED', `folder ext.${scope.rootId} is not allowed on this host (start the agent with --allow-images for it)`, { scope: `ext.${scope.rootId}`, allowedRoots: this.policy.roots() }, 403);
    return root;
  }

  /** The host path of a reference; INVALID_INPUT for a malformed one, PATH_NOT_ALLOWED if a symlink leads out of its scope. */
  path(locator: Locator): string {
    const { scope, relative: rel } = parseLocator(locator);
    const root = this.rootOf(scope);
    const path = join(root, ...rel.split('/'));
    const resolved = real(path);
    if (resolved !== path && !isInside(resolved, real(root))) throw new OffshootError('PATH_NOT_ALLOWED', `${locator} leads out of its folder (to ${resolved})`, { locator, resolved }, 403);
    return path;
  }

  /** The reference of a host path inside a scope (the deepest scope that holds it). */
  locator(path: string): Locator {
    const candidates: Array<{ root: string; scope: LocatorScope }> = [
      ...this.listDatastores().map((d) => ({ root: d.path, scope: { kind: 'datastore' as const, datastoreId: d.id } })),
      ...this.policy.allowedImageDirs().map((dir) => ({ root: dir, scope: { kind: 'allowed' as const, rootId: allowedRootId(dir) } })),
      { root: this.home, scope: { kind: 'home' as const } },
    ];
    for (const form of [path, real(path)]) {
      const match = candidates.filter((c) => isInside(form, c.root) && form !== c.root).sort((a, b) => b.root.length - a.root.length)[0];
      if (match) return makeLocator(match.scope, ...relative(match.root, form).split(sep));
    }
    throw new OffshootError('PATH_NOT_ALLOWED', `${path} is outside the folders Offshoot may use on this host`, { path, allowedRoots: this.policy.roots() }, 403);
  }

  /** A reference, or a path a person typed (checked by the path policy), as a host path. */
  async source(field: string, source: { file: Locator } | { hostPath: string }): Promise<string> {
    if ('file' in source) return this.path(source.file);
    return this.policy.allowedFile(field, source.hostPath);
  }
}

export function assertLocator(value: string, field: string): void {
  try {
    parseLocator(value);
  } catch {
    throw new InvalidInputError(`${field} is not a file reference`, { field, value });
  }
}
