// The lab's settings and every name it derives from them. A lab is a set of
// test hosts lab1..labN on this machine: each a network namespace joined to
// one bridge in the root namespace by a veth, with its own address on a
// private subnet. All names carry the lab's prefix, so a test's lab runs
// beside a developer's (`--prefix`, `--subnet`, `--dir` differ).
//
//   root namespace:  bridge <prefix>-br, address .1 of the subnet
//                    veth <prefix>-labN  (master <prefix>-br)
//   namespace <prefix>-labN:  mgmt0 (the veth's peer), address .(1+N); lo up
//   files:  <dir>/lab.json (state), <dir>/hosts/labN/{home,datastore,agent.log}
//           /dev/shm/offshoot-lab-<prefix>-labN (the host's memory folder)
import { join } from 'node:path';
import { InvalidInputError, defaultHome } from '../common/index.ts';
import { addressAt, formatSubnet, parseSubnet } from '../net/index.ts';

export interface LabOptions {
  /** The lab's folder (state file, host folders). */
  dir: string;
  /** Starts every namespace and link name: 1-6 lower-case letters and digits, starting with a letter. */
  prefix: string;
  /** The private IPv4 subnet of the management network, e.g. 10.213.0.0/24. */
  subnet: string;
  /** The TCP port every host's agent listens on (each at its own address). */
  port: number;
}

export const DEFAULT_PREFIX = 'oslab';
export const DEFAULT_SUBNET = '10.213.0.0/24';
export const DEFAULT_PORT = 7700;
/** The management device inside each host's namespace. */
export const HOST_DEVICE = 'mgmt0';
export const MAX_HOSTS = 99;
const PREFIX_PATTERN = /^[a-z][a-z0-9]{0,5}$/;
const HOST_PATTERN = /^lab([1-9]\d?)$/;

export function defaultLabDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(defaultHome(env), 'lab');
}

/** Fills in defaults and validates; the subnet is normalised ("10.213.0.0/24"). */
export function labOptions(input: Partial<LabOptions> = {}, env: NodeJS.ProcessEnv = process.env): LabOptions {
  const prefix = input.prefix ?? DEFAULT_PREFIX;
  if (!PREFIX_PATTERN.test(prefix)) throw new InvalidInputError(`invalid lab prefix "${prefix}": use 1-6 lower-case letters and digits, starting with a letter`, { prefix });
  const subnet = parseSubnet(input.subnet ?? DEFAULT_SUBNET);
  if (subnet.prefixLength > 29) throw new InvalidInputError(`lab subnet ${input.subnet} is too small`, { subnet: input.subnet });
  const port = input.port ?? DEFAULT_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidInputError(`invalid lab port ${port}`, { port });
  return { dir: input.dir ?? defaultLabDir(env), prefix, subnet: formatSubnet(subnet), port };
}

/** The most hosts a lab with these options can have. */
export function maxHosts(options: LabOptions): number {
  return Math.min(MAX_HOSTS, parseSubnet(options.subnet).size - 3);
}

export function hostName(index: number): string {
  return `lab${index}`;
}

export function hostIndex(name: string): number {
  const m = HOST_PATTERN.exec(name);
  if (!m) throw new InvalidInputError(`invalid lab host name "${name}": lab1..lab${MAX_HOSTS}`, { name });
  return Number(m[1]);
}

export function bridgeName(options: LabOptions): string {
  return `${options.prefix}-br`;
}

export function bridgeAddress(options: LabOptions): string {
  return addressAt(parseSubnet(options.subnet), 1);
}

export function prefixLength(options: LabOptions): number {
  return parseSubnet(options.subnet).prefixLength;
}

/** Everything about one host that follows from the options and its name. */
export interface HostLayout {
  name: string;
  namespace: string;
  /** The veth end in the root namespace (on the bridge). */
  rootLink: string;
  device: string;
  address: string;
  port: number;
  url: string;
  folder: string;
  home: string;
  memoryDir: string;
  datastoreDir: string;
  log: string;
}

export function hostLayout(options: LabOptions, name: string): HostLayout {
  const index = hostIndex(name);
  const address = addressAt(parseSubnet(options.subnet), 1 + index);
  const folder = join(options.dir, 'hosts', name);
  return {
    name,
    namespace: `${options.prefix}-${name}`,
    rootLink: `${options.prefix}-${name}`,
    device: HOST_DEVICE,
    address,
    port: options.port,
    url: `http://${address}:${options.port}`,
    folder,
    home: join(folder, 'home'),
    memoryDir: `/dev/shm/offshoot-lab-${options.prefix}-${name}`,
    datastoreDir: join(folder, 'datastore'),
    log: join(folder, 'agent.log'),
  };
}

/** Whether a namespace or link name belongs to a lab with this prefix. */
export function isLabName(prefix: string, name: string): boolean {
  return name === `${prefix}-br` || (name.startsWith(`${prefix}-`) && HOST_PATTERN.test(name.slice(prefix.length + 1)));
}
