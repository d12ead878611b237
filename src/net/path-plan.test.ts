// Unit tests of the path planner and the IPv4 helpers: slots map to distinct
// VNIs, links and /31s; plans are deterministic; taken slots are skipped; bad
// operation ids and management addresses inside the pool are refused.
import { describe, expect, it } from 'vitest';
import { addressAt, parseIpv4, parseSubnet, subnetsOverlap } from './ipv4.ts';
import { DEFAULT_PATH_POOL, planDataPath, planForSlot, slotOfLinkName } from './path-plan.ts';

describe('ipv4', () => {
  it('parses and carves subnets', () => {
    const net = parseSubnet('10.213.0.0/24');
    expect(net).toEqual({ base: parseIpv4('10.213.0.0'), prefixLength: 24, size: 256 });
    expect(addressAt(net, 1)).toBe('10.213.0.1');
    expect(() => addressAt(net, 256)).toThrow(/outside/);
    expect(() => parseSubnet('10.213.0.1/24')).toThrow(/host bits/);
    expect(() => parseSubnet('10.213.0.0')).toThrow(/A.B.C.D\/N/);
    expect(() => parseIpv4('10.256.0.1')).toThrow(/invalid IPv4/);
    expect(subnetsOverlap(parseSubnet('10.0.0.0/8'), parseSubnet('10.213.0.0/24'))).toBe(true);
    expect(subnetsOverlap(parseSubnet('10.213.1.0/24'), parseSubnet('10.213.0.0/24'))).toBe(false);
  });
});

describe('planDataPath', () => {
  const request = { operationId: 'op-1', serverManagementAddress: '10.213.0.3', clientManagementAddress: '10.213.0.2' };

  it('derives VNI, link name and a /31 from one slot', () => {
    const plan = planForSlot('op-1', 5, '10.213.0.3', '10.213.0.2');
    expect(plan).toMatchObject({ slot: 5, vni: DEFAULT_PATH_POOL.vniBase + 5, linkName: 'ofvx5', port: 4789, subnet: '198.18.0.10/31', prefixLength: 31 });
    expect(plan.client).toEqual({ managementAddress: '10.213.0.2', address: '198.18.0.10' });
    expect(plan.server).toEqual({ managementAddress: '10.213.0.3', address: '198.18.0.11' });
    expect(slotOfLinkName(plan.linkName)).toBe(5);
    expect(slotOfLinkName('eth0')).toBeUndefined();
  });

  it('is deterministic and skips slots in use', () => {
    const first = planDataPath(request);
    expect(planDataPath(request)).toEqual(first);
    const next = planDataPath({ ...request, inUse: [first.slot] });
    expect(next.slot).not.toBe(first.slot);
    expect(next.vni).not.toBe(first.vni);
    expect(next.subnet).not.toBe(first.subnet);
  });

  it('gives different operations different slots', () => {
    const slots = new Set(Array.from({ length: 20 }, (_, i) => planDataPath({ ...request, operationId: `op-${i}` }).slot));
    expect(slots.size).toBeGreaterThan(15);
  });

  it('refuses bad operation ids and addresses', () => {
    expect(() => planDataPath({ ...request, operationId: '../etc' })).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }));
    expect(() => planDataPath({ ...request, operationId: 'a b' })).toThrow(/invalid operation id/);
    expect(() => planDataPath({ ...request, serverManagementAddress: '198.18.3.4' })).toThrow(/inside the path pool/);
    expect(() => planDataPath({ ...request, serverManagementAddress: '10.213.0.2' })).toThrow(/both ends/);
    expect(() => planDataPath({ ...request, clientManagementAddress: 'host' })).toThrow(/invalid IPv4/);
    expect(() => planDataPath({ ...request, pool: { subnet: '198.18.0.0/30', vniBase: 2 ** 24 - 1 } })).toThrow(/do not fit/);
    expect(() => planDataPath({ ...request, pool: { subnet: '198.18.0.0/31', vniBase: 7 }, inUse: [0] })).toThrow(/no free slot/);
  });
});
