// The lab's network with iproute2: the bridge in the root namespace (with
// the subnet's first address, so the control plane on this machine reaches
// every agent) and, per host, a namespace joined to it by a veth. Each
// `ensure` only reads when things are already in place, and repairs what is
// missing, so `lab up` can run again over a half-made or healthy lab.
import { InvalidInputError } from '../common/index.ts';
import { ipJson, isNotFound, listNamespaces, parseIpv4, parseSubnet, runIp, subnetsOverlap } from '../net/index.ts';
import { bridgeAddress, bridgeName, isLabName, prefixLength } from './config.ts';
import type { HostLayout, LabOptions } from './config.ts';

interface AddrEntry {
  ifname: string;
  flags?: string[];
  master?: string;
  addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
}

async function link(name: string, namespace?: string): Promise<AddrEntry | undefined> {
  try {
    const [entry] = await ipJson<AddrEntry[]>(['addr', 'show', 'dev', name], { namespace });
    return entry;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

function hasAddress(entry: AddrEntry | undefined, address: string, length: number): boolean {
  return (entry?.addr_info ?? []).some((a) => a.family === 'inet' && a.local === address && a.prefixlen === length);
}

/** Refuses a subnet that overlaps an address of another device in the root namespace. */
async function assertSubnetFree(options: LabOptions): Promise<void> {
  const ours = parseSubnet(options.subnet);
  const bridge = bridgeName(options);
  for (const entry of await ipJson<AddrEntry[]>(['-4', 'addr', 'show'])) {
    if (entry.ifname === bridge) continue;
    for (const a of entry.addr_info ?? []) {
      const size = 2 ** (32 - a.prefixlen);
      const theirs = { base: parseIpv4(a.local) - (parseIpv4(a.local) % size), prefixLength: a.prefixlen, size };
      if (subnetsOverlap(ours, theirs)) {
        throw new InvalidInputError(`lab subnet ${options.subnet} overlaps ${a.local}/${a.prefixlen} on ${entry.ifname}: choose another with --subnet`, { subnet: options.subnet, device: entry.ifname, address: `${a.local}/${a.prefixlen}` });
      }
    }
  }
}

/** The bridge, up, with the subnet's first address. */
export async function ensureBridge(options: LabOptions): Promise<void> {
  const name = bridgeName(options);
  let entry = await link(name);
  if (!entry) {
    await assertSubnetFree(options);
    await runIp(['link', 'add', name, 'type', 'bridge']);
    entry = await link(name);
  }
  if (!hasAddress(entry, bridgeAddress(options), prefixLength(options))) await runIp(['addr', 'add', `${bridgeAddress(options)}/${prefixLength(options)}`, 'dev', name]);
  if (!(entry?.flags ?? []).includes('UP')) await runIp(['link', 'set', name, 'up']);
}

/** The host's namespace, its veth on the bridge, its address, loopback: made or repaired. */
export async function ensureHostNetwork(options: LabOptions, host: HostLayout): Promise<void> {
  const { namespace, rootLink, device } = host;
  if (!(await listNamespaces()).includes(namespace)) await runIp(['netns', 'add', namespace]);
  let root = await link(rootLink);
  if (!root) {
    // A peer left without its root end (never expected) would block the name: remove it first.
    if (await link(device, namespace)) await runIp(['link', 'del', device], { namespace });
    await runIp(['link', 'add', rootLink, 'type', 'veth', 'peer', 'name', device, 'netns', namespace]);
    root = await link(rootLink);
  }
  if (root?.master !== bridgeName(options)) await runIp(['link', 'set', rootLink, 'master', bridgeName(options)]);
  if (!(root?.flags ?? []).includes('UP')) await runIp(['link', 'set', rootLink, 'up']);
  const inside = await link(device, namespace);
  if (!hasAddress(inside, host.address, prefixLength(options))) await runIp(['addr', 'add', `${host.address}/${prefixLength(options)}`, 'dev', device], { namespace });
  if (!(inside?.flags ?? []).includes('UP')) await runIp(['link', 'set', device, 'up'], { namespace });
  const lo = await link('lo', namespace);
  if (!(lo?.flags ?? []).includes('UP')) await runIp(['link', 'set', 'lo', 'up'], { namespace });
}

/** Removes the host's namespace (its end of the veth goes with it) and the root end if it is still there. */
export async function removeHostNetwork(host: { namespace: string; rootLink: string }): Promise<void> {
  if ((await listNamespaces()).includes(host.namespace)) await runIp(['netns', 'del', host.namespace]);
  await runIp(['link', 'del', host.rootLink]).catch((err: unknown) => {
    if (!isNotFound(err)) throw err;
  });
}

export async function removeBridge(options: Pick<LabOptions, 'prefix'>): Promise<void> {
  await runIp(['link', 'del', `${options.prefix}-br`]).catch((err: unknown) => {
    if (!isNotFound(err)) throw err;
  });
}

/** Namespaces and root links named for this prefix (what `down` removes even without a state file). */
export async function findLabNetwork(prefix: string): Promise<{ namespaces: string[]; links: string[] }> {
  const namespaces = (await listNamespaces()).filter((n) => isLabName(prefix, n));
  const links = (await ipJson<AddrEntry[]>(['link', 'show'])).map((e) => e.ifname.replace(/@.*$/, '')).filter((n) => isLabName(prefix, n));
  return { namespaces, links };
}
