// Locators: the scope and relative path round-trip, names may hold ':', and
// nothing that could leave its scope is a locator.
import { describe, expect, it } from 'vitest';
import { isLocator, locatorName, makeLocator, parseLocator } from './locator.ts';

describe('locators', () => {
  it('round-trip through makeLocator and parseLocator', () => {
    const locator = makeLocator({ kind: 'datastore', datastoreId: 'dst-3a9e01' }, 'disks', 'dsk-1b2c.qcow2');
    expect(locator).toBe('ds.dst-3a9e01:disks/dsk-1b2c.qcow2');
    expect(parseLocator(locator)).toEqual({ scope: { kind: 'datastore', datastoreId: 'dst-3a9e01' }, relative: 'disks/dsk-1b2c.qcow2' });
    expect(parseLocator('ext.0a1b2c3d4e5f:debian/root.qcow2').scope).toEqual({ kind: 'allowed', rootId: '0a1b2c3d4e5f' });
  });

  it('names the last segment, also when it holds a colon or there is no folder', () => {
    expect(locatorName('home:vms/5f0c/disk0.qcow2')).toBe('disk0.qcow2');
    expect(locatorName('home:disk0.qcow2')).toBe('disk0.qcow2');
    expect(locatorName('home:vms/5f0c/a:b.qcow2')).toBe('a:b.qcow2');
    expect(locatorName('ds.dst-1:x:y.raw')).toBe('x:y.raw');
  });

  it('refuses what could leave its scope', () => {
    for (const bad of ['home:../etc/passwd', 'home:/etc/passwd', 'home:a/../../b', 'home:.hidden', 'nowhere:a', 'home:', `home:a\u0000b`]) {
      expect(isLocator(bad), bad).toBe(false);
      expect(() => parseLocator(bad)).toThrow(/not a file reference/);
    }
  });
});
