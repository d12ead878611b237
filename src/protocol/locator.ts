// File references: how the control plane names a file on a host without ever
// holding a host path. A locator is "<scope>:<relative path>", e.g.
//   home:vms/5f0c…/disk0.qcow2        a file under the agent's home
//   ds.dst-3a9e01:disks/dsk-1b2c.qcow2 a file in datastore dst-3a9e01
//   ext.0a1b2c3d4e5f:debian/root.qcow2 a file in a folder the operator allowed
// Only an agent turns a locator into a path (and a path it was given into a
// locator); the control plane compares locators and passes them back. The
// relative part is at most 16 segments, none starting with a dot and none
// holding a slash or a control character, so no locator can name anything
// outside its scope ("..", absolute paths); the agent still checks the
// resolved real path, against symlinks.
import { InvalidInputError } from '../common/index.ts';

const SCOPE = '(?:home|ds\\.[a-z0-9][a-z0-9-]{0,63}|ext\\.[0-9a-f]{12})';
const SEGMENT = '[^/\\u0000-\\u001f\\u007f.][^/\\u0000-\\u001f\\u007f]{0,254}';
export const LOCATOR_PATTERN = new RegExp(`^${SCOPE}:${SEGMENT}(?:/${SEGMENT}){0,15}$`, 'u');

export type Locator = string;

export type LocatorScope = { kind: 'home' } | { kind: 'datastore'; datastoreId: string } | { kind: 'allowed'; rootId: string };

export function isLocator(value: string): boolean {
  return value.length <= 4096 && LOCATOR_PATTERN.test(value);
}

/** Splits a locator into its scope and relative path; INVALID_INPUT if it is not one. */
export function parseLocator(locator: string): { scope: LocatorScope; relative: string } {
  if (!isLocator(locator)) throw new InvalidInputError(`"${locator}" is not a file reference (scope:relative/path)`, { locator });
  const colon = locator.indexOf(':');
  const scope = locator.slice(0, colon);
  const relative = locator.slice(colon + 1);
  if (scope === 'home') return { scope: { kind: 'home' }, relative };
  if (scope.startsWith('ds.')) return { scope: { kind: 'datastore', datastoreId: scope.slice(3) }, relative };
  return { scope: { kind: 'allowed', rootId: scope.slice(4) }, relative };
}

/** Builds a locator (for agents, which own the mapping); validates the result. */
export function makeLocator(scope: LocatorScope, ...segments: string[]): Locator {
  const prefix = scope.kind === 'home' ? 'home' : scope.kind === 'datastore' ? `ds.${scope.datastoreId}` : `ext.${scope.rootId}`;
  const locator = `${prefix}:${segments.join('/')}`;
  if (!isLocator(locator)) throw new InvalidInputError(`cannot name file ${segments.join('/')} in scope ${prefix}`, { scope: prefix, segments });
  return locator;
}

/** The last segment of a locator (its file name; a name may hold ':'). */
export function locatorName(locator: Locator): string {
  const relative = locator.slice(locator.indexOf(':') + 1);
  return relative.slice(relative.lastIndexOf('/') + 1);
}
