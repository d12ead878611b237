// A VM's identity on the network and in the guest: MAC addresses (random,
// unicast, locally administered, in QEMU's 52:54:00 range) and machine ids.
import { randomBytes } from 'node:crypto';

export function newMac(): string {
  return ['52', '54', '00', ...Array.from(randomBytes(3), (x) => x.toString(16).padStart(2, '0'))].join(':');
}

export function newMachineId(): string {
  return randomBytes(16).toString('hex');
}
