// The VXLAN link of one end of a per-operation path, with iproute2: created
// bound to the device that holds the host's management address (`dev`, so
// the kernel sets the MTU to the device's minus VXLAN's 50 bytes and nothing
// fragments), named "ofvx<slot>", labelled with its operation in the link's
// alias ("offshoot-path op=<id> role=<role>"), with no IPv6 link-local address
// (addrgenmode none: nothing but the operation's traffic crosses it), and the
// end's per-operation address on a /31. The alias is how a restarted agent
// finds its links again: listing and reaping need no state file. The /31's
// route carries `quickack`: the receiver ACKs at once instead of delaying
// its ACK up to 40 ms, which a sender with Nagle on (QEMU sets no
// TCP_NODELAY on its migration socket) waits for after a small write: a TLS
// record of a few bytes, an NBD handshake's reply.
import { DataPathConflictError, DataPathError } from './errors.ts';
import type { IpCommandError } from './errors.ts';
import { failedBatchLine, ipJson, isAlreadyExists, isNotFound, runIp, runIpBatch } from './ip.ts';
import type { IpOptions } from './ip.ts';
import { PATH_LINK_PREFIX, isPathRole, slotOfLinkName } from './path-plan.ts';
import type { DataPathPlan, PathRole } from './path-plan.ts';

const ALIAS_PREFIX = 'offshoot-path';

/** A per-operation VXLAN link found on this host. */
export interface DataPathLink {
  linkName: string;
  slot: number;
  vni: number;
  /** From the alias; null when the alias was never set (a crash between creating the link and labelling it). */
  operationId: string | null;
  role: PathRole | null;
  /** The management device it is bound to. */
  device: string | null;
  mtu: number;
  up: boolean;
  localManagementAddress: string | null;
  remoteManagementAddress: string | null;
  /** Its addresses with prefix length, e.g. ["198.18.0.7/31"]. */
  addresses: string[];
}

interface IpAddrEntry {
  ifname: string;
  mtu: number;
  flags?: string[];
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; local?: string; remote?: string; link?: string } };
  addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
}

function parseAlias(alias: string | undefined): { operationId: string; role: PathRole | null } | null {
  const m = alias ? /^offshoot-path op=(\S+)(?: role=(\S+))?/.exec(alias) : null;
  if (!m) return null;
  return { operationId: m[1] as string, role: isPathRole(m[2]) ? m[2] : null };
}

/** The per-operation links among `ip -d addr show` entries (VXLAN links named ofvx<slot>). */
function pathLinksOf(entries: IpAddrEntry[]): DataPathLink[] {
  const links: DataPathLink[] = [];
  for (const e of entries) {
    const slot = slotOfLinkName(e.ifname);
    if (slot === undefined || e.linkinfo?.info_kind !== 'vxlan') continue;
    const alias = parseAlias(e.ifalias);
    const data = e.linkinfo?.info_data ?? {};
    links.push({
      linkName: e.ifname,
      slot,
      vni: data.id ?? -1,
      operationId: alias?.operationId ?? null,
      role: alias?.role ?? null,
      device: data.link ?? null,
      mtu: e.mtu,
      up: (e.flags ?? []).includes('UP'),
      localManagementAddress: data.local ?? null,
      remoteManagementAddress: data.remote ?? null,
      addresses: (e.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
    });
  }
  return links.sort((a, b) => a.slot - b.slot);
}

/** The per-operation links on this host (VXLAN links named ofvx<slot>). */
export async function listPathLinks(options: IpOptions = {}): Promise<DataPathLink[]> {
  return pathLinksOf(await ipJson<IpAddrEntry[]>(['-d', 'addr', 'show', 'type', 'vxlan'], options));
}

function deviceWith(entries: IpAddrEntry[], address: string, options: IpOptions): { name: string; mtu: number } {
  const found = entries.find((e) => (e.addr_info ?? []).some((a) => a.family === 'inet' && a.local === address));
  if (!found) throw new DataPathError(`no device on this host has the management address ${address}`, { address, namespace: options.namespace ?? null });
  return { name: found.ifname, mtu: found.mtu };
}

/** The device that holds `address` on this host, and its MTU. */
export async function managementDevice(address: string, options: IpOptions = {}): Promise<{ name: string; mtu: number }> {
  return deviceWith(await ipJson<IpAddrEntry[]>(['addr', 'show'], options), address, options);
}

function conflictError(plan: DataPathPlan, options: IpOptions, reason: string): DataPathConflictError {
  return new DataPathConflictError(`path slot ${plan.slot} (VNI ${plan.vni}, link ${plan.linkName}) is taken on this host: ${reason}`, {
    operationId: plan.operationId,
    slot: plan.slot,
    vni: plan.vni,
    linkName: plan.linkName,
    namespace: options.namespace ?? null,
  });
}

/**
 * Creates this end's link (or finds it, when a retried open finds its own
 * link from the first try), labels it, gives it its address and sets it up:
 * one `ip -d addr show` and one `ip -batch`. A link of another operation in
 * the slot, or the slot's VNI taken, is a DataPathConflictError. On a failure
 * after creating the link, the link is deleted again.
 */
export async function createPathLink(plan: DataPathPlan, role: PathRole, options: IpOptions = {}): Promise<DataPathLink> {
  const local = plan[role];
  const remote = plan[role === 'server' ? 'client' : 'server'];
  const entries = await ipJson<IpAddrEntry[]>(['-d', 'addr', 'show'], options);
  const existing = pathLinksOf(entries).find((l) => l.linkName === plan.linkName || l.vni === plan.vni);
  const mine = existing && existing.operationId === plan.operationId && existing.linkName === plan.linkName && existing.vni === plan.vni && existing.remoteManagementAddress === remote.managementAddress;
  if (existing && !mine) throw conflictError(plan, options, `link ${existing.linkName} (VNI ${existing.vni}) belongs to operation ${existing.operationId ?? '(unlabelled)'}`);
  const device = deviceWith(entries, local.managementAddress, options);
  const address = `${local.address}/${plan.prefixLength}`;
  const commands: string[][] = [];
  if (!existing) commands.push(['link', 'add', plan.linkName, 'type', 'vxlan', 'id', String(plan.vni), 'local', local.managementAddress, 'remote', remote.managementAddress, 'dstport', String(plan.port), 'dev', device.name]);
  commands.push(['link', 'set', plan.linkName, 'alias', `${ALIAS_PREFIX} op=${plan.operationId} role=${role}`, 'addrgenmode', 'none']);
  if (!existing?.addresses.includes(address)) commands.push(['addr', 'add', address, 'dev', plan.linkName, 'noprefixroute']);
  commands.push(['link', 'set', plan.linkName, 'up']);
  // The /31's route is ours (not the address's prefix route): with quickack (see the header).
  commands.push(['route', 'replace', plan.subnet, 'dev', plan.linkName, 'src', local.address, 'quickack', '1']);
  commands.push(['addr', 'show', 'dev', plan.linkName]);
  let out: string;
  try {
    out = await runIpBatch(commands, options, ['-j', '-d']);
  } catch (err) {
    const addFailed = !existing && failedBatchLine(err) === 1;
    if (addFailed && isAlreadyExists(err)) throw conflictError(plan, options, (err as IpCommandError).stderr.replace(/Command failed.*$/s, '').trim());
    if (!existing && !addFailed) await deletePathLink(plan.linkName, options).catch(() => undefined);
    throw err;
  }
  const [link] = pathLinksOf(JSON.parse(out) as IpAddrEntry[]);
  if (!link) throw new DataPathError(`link ${plan.linkName} vanished while it was being set up`, { linkName: plan.linkName });
  return link;
}

/** Deletes a per-operation link; false if it was not there. Its addresses and routes go with it. */
export async function deletePathLink(linkName: string, options: IpOptions = {}): Promise<boolean> {
  if (slotOfLinkName(linkName) === undefined) throw new DataPathError(`"${linkName}" is not a per-operation link (${PATH_LINK_PREFIX}<slot>)`, { linkName });
  try {
    await runIp(['link', 'del', linkName], options);
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

export interface LinkCounters {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
}

/** A link's byte and packet counters (`ip -s link`). */
export async function linkCounters(linkName: string, options: IpOptions = {}): Promise<LinkCounters> {
  const [entry] = await ipJson<Array<{ stats64?: { rx: { bytes: number; packets: number }; tx: { bytes: number; packets: number } } }>>(['-s', 'link', 'show', 'dev', linkName], options);
  const s = entry?.stats64;
  if (!s) throw new DataPathError(`no counters for link ${linkName}`, { linkName, namespace: options.namespace ?? null });
  return { rxBytes: s.rx.bytes, txBytes: s.tx.bytes, rxPackets: s.rx.packets, txPackets: s.tx.packets };
}

/**
 * The address this host sends from to reach `peer` (`ip route get`): the management address a
 * per-operation path between the two hosts is bound to. A loopback or missing route is a DataPathError.
 */
export async function sourceAddressTo(peer: string, options: IpOptions = {}): Promise<{ address: string; device: string }> {
  let routes: Array<{ dev?: string; prefsrc?: string }>;
  try {
    routes = await ipJson<Array<{ dev?: string; prefsrc?: string }>>(['route', 'get', peer], options);
  } catch (err) {
    throw new DataPathError(`this host has no route to ${peer}: ${(err as Error).message}`, { peer, namespace: options.namespace ?? null }, err);
  }
  const route = routes[0];
  if (!route?.prefsrc || !route.dev) throw new DataPathError(`this host has no source address towards ${peer}`, { peer, namespace: options.namespace ?? null });
  if (route.dev === 'lo' || route.prefsrc.startsWith('127.')) throw new DataPathError(`${peer} is this host itself (reached through ${route.dev})`, { peer, device: route.dev });
  return { address: route.prefsrc, device: route.dev };
}
