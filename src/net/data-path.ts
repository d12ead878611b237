// One end of a per-operation data path, as the agent of a host makes and
// unmakes it: the VXLAN link with the end's per-operation address
// (path-link.ts) and the operation's one-time TLS-PSK credential (psk.ts).
// Calls take and return plain data, so they cross the agent protocol as they
// are. Every call runs in the caller's network namespace (the agent runs in
// its host's), or in a named one with `namespace` (tests, the lab, benches).
//
// - openDataPath: all or nothing. A failure removes whatever this call made
//   and the operation's link and keys; a retry with the same plan after a lost
//   answer finds its own link and returns the same end.
// - closeDataPath: idempotent; run it after success, failure or cancel
//   (closeDataPathEnd: the same for an end whose link the caller knows, with
//   the link's last counters, in one ip process).
// - reapDataPaths: crash recovery; removes links and key folders whose
//   operation is not among the live ones (and unlabelled links, left by a
//   crash between creating and labelling a link).
// Calls for one namespace run one at a time in this process, so a reap never
// sees a link that an open is still labelling.
import { InvalidInputError } from '../common/index.ts';
import { DataPathConflictError } from './errors.ts';
import { isNotFound, runIpBatch } from './ip.ts';
import type { IpOptions } from './ip.ts';
import { createPathLink, deletePathLink, listPathLinks } from './path-link.ts';
import type { DataPathLink, LinkCounters } from './path-link.ts';
import { PATH_LINK_PREFIX, assertOperationId, isPathRole, slotOfLinkName } from './path-plan.ts';
import type { DataPathPlan, PathRole } from './path-plan.ts';
import { listPskCredentials, removePskCredential, writePskCredential } from './psk.ts';
import type { PskCredential } from './psk.ts';

export interface DataPathHostOptions {
  /** The folder that holds the per-operation key folders (private, e.g. `<agent home>/net/keys`). */
  credentialsRoot: string;
  /** A named network namespace; default: the caller's own. */
  namespace?: string;
}

export interface OpenDataPathRequest extends DataPathHostOptions {
  plan: DataPathPlan;
  /** Which end this host is: the server listens (the destination), the client connects. */
  role: PathRole;
  /** The operation's key, the same at both ends (newPskKey). */
  pskKey: string;
}

/** One end of a path, as made: what QEMU and the caller need, and nothing secret. */
export interface DataPathEnd {
  operationId: string;
  role: PathRole;
  slot: number;
  vni: number;
  linkName: string;
  /** The management device the link is bound to, and the link's MTU. */
  device: string;
  mtu: number;
  localAddress: string;
  remoteAddress: string;
  prefixLength: number;
  localManagementAddress: string;
  remoteManagementAddress: string;
  /** The TLS-PSK credential for QEMU (pskObjectProperties gives the object-add arguments). */
  credential: PskCredential;
}

export interface DataPathListing {
  links: DataPathLink[];
  /** Operation ids that have a key folder. */
  credentials: string[];
}

export interface CloseDataPathResult {
  removedLinks: string[];
  removedCredential: boolean;
}

export interface ReapDataPathsResult {
  removedLinks: string[];
  removedCredentials: string[];
}

const queues = new Map<string, Promise<unknown>>();

/** Runs `fn` after every earlier call for the same namespace has settled. */
function serialized<T>(options: IpOptions, fn: () => Promise<T>): Promise<T> {
  const key = options.namespace ?? '';
  const previous = queues.get(key) ?? Promise.resolve();
  const next = previous.then(fn, fn);
  const tail = next.catch(() => undefined);
  queues.set(key, tail);
  void tail.then(() => {
    if (queues.get(key) === tail) queues.delete(key);
  });
  return next;
}

function assertPlan(plan: DataPathPlan, role: PathRole): void {
  assertOperationId(plan?.operationId);
  if (!isPathRole(role)) throw new InvalidInputError(`invalid path role "${String(role)}": use server or client`, { role });
  if (plan.linkName !== `${PATH_LINK_PREFIX}${plan.slot}` || !Number.isInteger(plan.vni) || plan.vni < 1 || plan.vni > 2 ** 24 - 1 || plan.prefixLength !== 31) {
    throw new InvalidInputError(`invalid data path plan for operation ${plan.operationId}: make it with planDataPath`, { plan });
  }
}

async function closeLocked(operationId: string, options: DataPathHostOptions): Promise<CloseDataPathResult> {
  const removedLinks: string[] = [];
  for (const link of await listPathLinks(options)) {
    if (link.operationId !== operationId) continue;
    if (await deletePathLink(link.linkName, options)) removedLinks.push(link.linkName);
  }
  const removedCredential = await removePskCredential(options.credentialsRoot, operationId);
  return { removedLinks, removedCredential };
}

/** Makes this host's end of the path (link, address, key); see the header. */
export async function openDataPath(request: OpenDataPathRequest): Promise<DataPathEnd> {
  const { plan, role, pskKey, ...options } = request;
  assertPlan(plan, role);
  return serialized(options, async () => {
    try {
      const link = await createPathLink(plan, role, options);
      const credential = await writePskCredential({ credentialsRoot: options.credentialsRoot, operationId: plan.operationId, endpoint: role, key: pskKey });
      const local = plan[role];
      const remote = plan[role === 'server' ? 'client' : 'server'];
      return {
        operationId: plan.operationId,
        role,
        slot: plan.slot,
        vni: plan.vni,
        linkName: link.linkName,
        device: link.device ?? '',
        mtu: link.mtu,
        localAddress: local.address,
        remoteAddress: remote.address,
        prefixLength: plan.prefixLength,
        localManagementAddress: local.managementAddress,
        remoteManagementAddress: remote.managementAddress,
        credential,
      };
    } catch (err) {
      // A conflict means the slot is another operation's and this call made nothing: leave it alone.
      if (!(err instanceof DataPathConflictError)) await closeLocked(plan.operationId, options).catch(() => undefined);
      throw err;
    }
  });
}

/** Removes this host's end of an operation's path: its links, addresses and key folder. Idempotent. */
export async function closeDataPath(request: { operationId: string } & DataPathHostOptions): Promise<CloseDataPathResult> {
  const { operationId, ...options } = request;
  assertOperationId(operationId);
  return serialized(options, () => closeLocked(operationId, options));
}

/**
 * Removes an end this process made, known by its link name (no listing): the link's last counters and its
 * deletion in one ip process, then the key folder. A link that is not there (gone already) falls back to
 * closeDataPath's listing. Idempotent.
 */
export async function closeDataPathEnd(request: { operationId: string; linkName: string } & DataPathHostOptions): Promise<CloseDataPathResult & { counters: LinkCounters | null }> {
  const { operationId, linkName, ...options } = request;
  assertOperationId(operationId);
  if (slotOfLinkName(linkName) === undefined) throw new InvalidInputError(`"${linkName}" is not a per-operation link (${PATH_LINK_PREFIX}<slot>)`, { linkName });
  return serialized(options, async () => {
    let out: string;
    try {
      out = await runIpBatch([['link', 'show', 'dev', linkName], ['link', 'del', linkName]], options, ['-s', '-j']);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      return { ...(await closeLocked(operationId, options)), counters: null };
    }
    const removedCredential = await removePskCredential(options.credentialsRoot, operationId);
    return { removedLinks: [linkName], removedCredential, counters: countersOf(out) };
  });
}

/** The counters in `ip -s -j link show` output, or null. */
function countersOf(out: string): LinkCounters | null {
  try {
    const [entry] = JSON.parse(out.trim().split('\n')[0] ?? '[]') as Array<{ stats64?: { rx: { bytes: number; packets: number }; tx: { bytes: number; packets: number } } }>;
    const s = entry?.stats64;
    return s ? { rxBytes: s.rx.bytes, txBytes: s.tx.bytes, rxPackets: s.rx.packets, txPackets: s.tx.packets } : null;
  } catch {
    return null;
  }
}

/** The per-operation links and key folders on this host. */
export async function listDataPaths(options: DataPathHostOptions): Promise<DataPathListing> {
  return serialized(options, async () => ({ links: await listPathLinks(options), credentials: await listPskCredentials(options.credentialsRoot) }));
}

/** Removes the links and key folders of operations not in `live` (crash recovery). */
export async function reapDataPaths(request: { live: readonly string[] } & DataPathHostOptions): Promise<ReapDataPathsResult> {
  const { live, ...options } = request;
  const keep = new Set(live);
  return serialized(options, async () => {
    const removedLinks: string[] = [];
    const removedCredentials: string[] = [];
    for (const link of await listPathLinks(options)) {
      if (link.operationId !== null && keep.has(link.operationId)) continue;
      try {
        if (await deletePathLink(link.linkName, options)) removedLinks.push(link.linkName);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    for (const operationId of await listPskCredentials(options.credentialsRoot)) {
      if (keep.has(operationId)) continue;
      try {
        assertOperationId(operationId);
      } catch {
        continue; // not a key folder of ours
      }
      if (await removePskCredential(options.credentialsRoot, operationId)) removedCredentials.push(operationId);
    }
    return { removedLinks, removedCredentials };
  });
}
