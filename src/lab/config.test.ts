// Unit tests of the lab's settings and names: defaults, validation, addresses
// carved from the subnet, link names within the kernel's 15 characters, and
// which names belong to a prefix.
import { describe, expect, it } from 'vitest';
import { bridgeAddress, bridgeName, hostLayout, isLabName, labOptions, maxHosts } from './config.ts';

describe('lab config', () => {
  it('derives names, addresses and folders from the options', () => {
    const options = labOptions({ dir: '/tmp/x', prefix: 'abcdef', subnet: '10.213.9.0/24' });
    expect(options).toEqual({ dir: '/tmp/x', prefix: 'abcdef', subnet: '10.213.9.0/24', port: 7700 });
    expect(bridgeName(options)).toBe('abcdef-br');
    expect(bridgeAddress(options)).toBe('10.213.9.1');
    const host = hostLayout(options, 'lab99');
    expect(host).toMatchObject({ namespace: 'abcdef-lab99', rootLink: 'abcdef-lab99', device: 'mgmt0', address: '10.213.9.100', url: 'http://10.213.9.100:7700', home: '/tmp/x/hosts/lab99/home', memoryDir: '/dev/shm/offshoot-lab-abcdef-lab99' });
    expect(host.rootLink.length).toBeLessThanOrEqual(15);
    expect(maxHosts(options)).toBe(99);
    expect(maxHosts(labOptions({ subnet: '10.213.9.0/29' }))).toBe(5);
  });

  it('defaults to $OFFSHOOT_HOME/lab', () => {
    expect(labOptions({}, { OFFSHOOT_HOME: '/srv/o' })).toMatchObject({ dir: '/srv/o/lab', prefix: 'oslab', subnet: '10.213.0.0/24' });
  });

  it('refuses bad options', () => {
    expect(() => labOptions({ prefix: 'too-long' })).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }));
    expect(() => labOptions({ prefix: 'Ab' })).toThrow(/prefix/);
    expect(() => labOptions({ subnet: '10.213.0.1/24' })).toThrow(/host bits/);
    expect(() => labOptions({ subnet: '10.213.0.0/30' })).toThrow(/too small/);
    expect(() => labOptions({ port: 70000 })).toThrow(/port/);
    expect(() => hostLayout(labOptions({}), '../lab1')).toThrow(/invalid lab host name/);
  });

  it('knows which names are its own', () => {
    expect(isLabName('os', 'os-br')).toBe(true);
    expect(isLabName('os', 'os-lab3')).toBe(true);
    expect(isLabName('os', 'oslab-lab3')).toBe(false);
    expect(isLabName('os', 'os-other')).toBe(false);
  });
});
