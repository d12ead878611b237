import { describe, expect, it } from 'vitest';
import { capabilitiesOf, hostFromInfo, hostNameOfVm, hostOfVm } from './api.ts';
import type { HostView, VmRecord } from './api.ts';

describe("the console's view of the API", () => {
  it('offers what the daemon has, by its OpenAPI paths', () => {
    expect(capabilitiesOf({ paths: { '/vms': {}, '/host': {} } })).toEqual({ hosts: false, migrate: false, templates: false });
    expect(capabilitiesOf({ paths: { '/hosts': {}, '/vms/{ref}/migrate': {}, '/templates': {} } })).toEqual({ hosts: true, migrate: true, templates: true });
  });

  it('shows the one host of GET /host, and places a VM by its host field first', () => {
    expect(hostFromInfo({ hostId: 'h1', accel: 'tcg', accelReason: 'no kvm', qemuVersion: '7.2', memoryDir: '/m', vmsDir: '/v', allowedRoots: [], confinement: { user: null, confined: false, sandbox: false, lazyRestoreConfined: false, reasons: [] } })).toMatchObject({ id: 'h1', state: 'up', accel: 'tcg' });
    const vm = { runtime: { hostId: 'h1' } } as unknown as VmRecord;
    expect(hostOfVm(vm, 'x')).toBe('h1');
    expect(hostOfVm({ ...vm, host: 'h2' } as VmRecord, 'x')).toBe('h2');
    expect(hostOfVm({ runtime: null } as unknown as VmRecord, 'x')).toBe('x');
  });

  it("names a VM's host by the hosts list, and by its id when the list does not know it", () => {
    const hosts = [{ id: 'h1', name: 'lab1', state: 'ready' }] as HostView[];
    expect(hostNameOfVm({ runtime: { hostId: 'h1' } } as unknown as VmRecord, hosts, 'x')).toBe('lab1');
    expect(hostNameOfVm({ runtime: { hostId: 'h9' } } as unknown as VmRecord, hosts, 'x')).toBe('h9');
  });
});
