import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../common/index.ts';
import { parseCreateVmRequest, parseSizeMiB, resolveMemoryMiB } from './spec.ts';

describe('sizes', () => {
  it('parses units into MiB', () => {
    expect(parseSizeMiB('512M')).toBe(512);
    expect(parseSizeMiB('1G')).toBe(1024);
    expect(parseSizeMiB('2GiB')).toBe(2048);
    expect(parseSizeMiB('1048576K')).toBe(1024);
    expect(parseSizeMiB('300')).toBe(300);
    expect(parseSizeMiB(128)).toBe(128);
  });

  it('rejects nonsense and fractions', () => {
    expect(() => parseSizeMiB('lots')).toThrow(InvalidInputError);
    expect(() => parseSizeMiB('1.5G')).toThrow(InvalidInputError);
    expect(() => parseSizeMiB('100K')).toThrow(/whole number/);
    expect(() => resolveMemoryMiB('8M')).toThrow(/out of range/);
  });
});

describe('create request', () => {
  it('fills defaults', () => {
    const r = parseCreateVmRequest({ name: 'web-1' });
    expect(r).toMatchObject({ name: 'web-1', vcpus: 1, memory: '256M', network: 'user', start: false, disks: [] });
  });

  it.each([
    ['../x', 'path tricks'],
    ['a/b', 'slash'],
    ['.hidden', 'leading dot'],
    ['', 'empty'],
    ['x'.repeat(64), 'too long'],
    ['spaces here', 'spaces'],
  ])('rejects the name %j (%s)', (name) => {
    expect(() => parseCreateVmRequest({ name })).toThrow(InvalidInputError);
  });

  it('rejects unknown fields, naming them', () => {
    try {
      parseCreateVmRequest({ name: 'a', colour: 'blue' });
      expect.unreachable();
    } catch (err) {
      expect((err as InvalidInputError).code).toBe('INVALID_INPUT');
      expect((err as InvalidInputError).message).toContain('colour');
    }
  });

  it('rejects relative paths, bad vcpus and kernel with bootDisk', () => {
    expect(() => parseCreateVmRequest({ name: 'a', kernel: { path: 'vmlinuz' } })).toThrow(/absolute/);
    expect(() => parseCreateVmRequest({ name: 'a', vcpus: 0 })).toThrow(InvalidInputError);
    expect(() => parseCreateVmRequest({ name: 'a', vcpus: 1.5 })).toThrow(InvalidInputError);
    expect(() => parseCreateVmRequest({ name: 'a', kernel: { path: '/k' }, bootDisk: '/d' })).toThrow(/either kernel or bootDisk/);
  });
});
