// IPv4 addresses and CIDR subnets as numbers: parse, format, and the address
// at an offset in a subnet. The lab and the per-operation paths carve their
// addresses out of configurable subnets with these.
import { InvalidInputError } from '../common/index.ts';

export interface Ipv4Subnet {
  /** The network address as an unsigned 32-bit number. */
  base: number;
  prefixLength: number;
  /** Number of addresses in the subnet (2^(32-prefixLength)). */
  size: number;
}

const OCTETS = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

export function parseIpv4(text: string): number {
  const m = OCTETS.exec(text);
  const octets = m ? m.slice(1, 5).map(Number) : [];
  if (!m || octets.some((o) => o > 255)) throw new InvalidInputError(`invalid IPv4 address "${text}"`, { address: text });
  return (((octets[0] as number) << 24) >>> 0) + ((octets[1] as number) << 16) + ((octets[2] as number) << 8) + (octets[3] as number);
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join('.');
}

/** Parses "A.B.C.D/N"; the address must be the network address (no host bits set). */
export function parseSubnet(text: string): Ipv4Subnet {
  const [address, bits, extra] = text.split('/');
  const prefixLength = Number(bits);
  if (address === undefined || bits === undefined || extra !== undefined || !/^\d{1,2}$/.test(bits) || prefixLength > 32) {
    throw new InvalidInputError(`invalid subnet "${text}": use A.B.C.D/N`, { subnet: text });
  }
  const base = parseIpv4(address);
  const size = 2 ** (32 - prefixLength);
  if (base % size !== 0) throw new InvalidInputError(`invalid subnet "${text}": host bits are set (the network is ${formatIpv4(base - (base % size))}/${prefixLength})`, { subnet: text });
  return { base, prefixLength, size };
}

export function formatSubnet(subnet: Ipv4Subnet): string {
  return `${formatIpv4(subnet.base)}/${subnet.prefixLength}`;
}

/** The address `offset` places into the subnet; throws if it falls outside. */
export function addressAt(subnet: Ipv4Subnet, offset: number): string {
  if (!Number.isInteger(offset) || offset < 0 || offset >= subnet.size) {
    throw new InvalidInputError(`offset ${offset} is outside ${formatSubnet(subnet)} (${subnet.size} addresses)`, { subnet: formatSubnet(subnet), offset });
  }
  return formatIpv4(subnet.base + offset);
}

export function subnetContains(subnet: Ipv4Subnet, address: string): boolean {
  const value = parseIpv4(address);
  return value >= subnet.base && value < subnet.base + subnet.size;
}

export function subnetsOverlap(a: Ipv4Subnet, b: Ipv4Subnet): boolean {
  return a.base < b.base + b.size && b.base < a.base + a.size;
}
