// Plans a per-operation data path: one "slot" gives the VXLAN segment id
// (VNI), the link name and a point-to-point /31 for the two ends, all out of a
// pool distinct from the hosts' management addresses. The planner is pure:
// it starts at a slot derived from the operation id (so a retried plan with
// the same inputs is the same plan) and skips the slots the caller says are in
// use on either host (from listDataPaths on both). Two plans made at once
// without knowing of each other collide only if their ids hash to the same
// free slot; opening the second then fails with DATA_PATH_CONFLICT and the
// caller plans again with that slot in `inUse`.
//
//   slot s  ->  VNI = vniBase + s,  link "ofvx<s>",  subnet = pool + 2s /31
//               client end = pool + 2s,  server end = pool + 2s + 1
//
// The server end is the one that listens (a migration's or NBD export's
// destination); it also gets the TLS server credential.
import { createHash } from 'node:crypto';
import { InvalidInputError } from '../common/index.ts';
import { addressAt, formatIpv4, parseIpv4, parseSubnet, subnetContains } from './ipv4.ts';

export type PathRole = 'server' | 'client';

export function isPathRole(value: unknown): value is PathRole {
  return value === 'server' || value === 'client';
}

export interface PathPool {
  /** Where the per-operation /31s come from; default 198.18.0.0/15 (RFC 2544's benchmarking range, unrouted). */
  subnet: string;
  /** VNI of slot 0. */
  vniBase: number;
}

export const DEFAULT_PATH_POOL: PathPool = { subnet: '198.18.0.0/15', vniBase: 0x0f0000 };
/** IANA's VXLAN port. */
export const VXLAN_PORT = 4789;
/** Link names of per-operation paths are this prefix and the slot. */
export const PATH_LINK_PREFIX = 'ofvx';
const MAX_VNI = 2 ** 24 - 1;
const OPERATION_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export interface PathEndPlan {
  managementAddress: string;
  /** This end's per-operation address. */
  address: string;
}

/** Everything both ends need to make their half of the path (plain data; no secret). */
export interface DataPathPlan {
  operationId: string;
  slot: number;
  vni: number;
  linkName: string;
  /** VXLAN UDP port. */
  port: number;
  /** The per-operation point-to-point subnet, e.g. "198.18.0.6/31". */
  subnet: string;
  prefixLength: number;
  server: PathEndPlan;
  client: PathEndPlan;
}

export interface PlanDataPathRequest {
  operationId: string;
  /** Management address of the end that listens (the destination). */
  serverManagementAddress: string;
  clientManagementAddress: string;
  /** Slots in use on either host (DataPathLink.slot from listDataPaths on both). */
  inUse?: readonly number[];
  pool?: PathPool;
}

/** Operation ids name key folders and QEMU objects: a safe alphabet only. */
export function assertOperationId(operationId: string): string {
  if (typeof operationId !== 'string' || !OPERATION_ID.test(operationId)) {
    throw new InvalidInputError(`invalid operation id "${operationId}": use 1-63 letters, digits, ".", "-" or "_", starting with a letter or digit`, { operationId, pattern: OPERATION_ID.source });
  }
  return operationId;
}

function poolSlots(pool: PathPool): number {
  const subnet = parseSubnet(pool.subnet);
  if (subnet.prefixLength > 31) throw new InvalidInputError(`path pool ${pool.subnet} is too small`, { pool: pool.subnet });
  const slots = subnet.size / 2;
  if (!Number.isInteger(pool.vniBase) || pool.vniBase < 1 || pool.vniBase + slots - 1 > MAX_VNI) {
    throw new InvalidInputError(`path pool VNIs ${pool.vniBase}..${pool.vniBase + slots - 1} do not fit in 1..${MAX_VNI}`, { vniBase: pool.vniBase, slots });
  }
  return slots;
}

/** The plan for `slot` of the pool. */
export function planForSlot(operationId: string, slot: number, serverManagementAddress: string, clientManagementAddress: string, pool: PathPool = DEFAULT_PATH_POOL): DataPathPlan {
  assertOperationId(operationId);
  const slots = poolSlots(pool);
  if (!Number.isInteger(slot) || slot < 0 || slot >= slots) throw new InvalidInputError(`slot ${slot} is outside the path pool (0..${slots - 1})`, { slot });
  const subnet = parseSubnet(pool.subnet);
  for (const [role, address] of [['server', serverManagementAddress], ['client', clientManagementAddress]] as const) {
    parseIpv4(address);
    if (subnetContains(subnet, address)) throw new InvalidInputError(`the ${role}'s management address ${address} is inside the path pool ${pool.subnet}`, { role, address, pool: pool.subnet });
  }
  if (serverManagementAddress === clientManagementAddress) throw new InvalidInputError(`both ends of a path have the management address ${serverManagementAddress}`, { address: serverManagementAddress });
  return {
    operationId,
    slot,
    vni: pool.vniBase + slot,
    linkName: `${PATH_LINK_PREFIX}${slot}`,
    port: VXLAN_PORT,
    subnet: `${formatIpv4(subnet.base + 2 * slot)}/31`,
    prefixLength: 31,
    client: { managementAddress: clientManagementAddress, address: addressAt(subnet, 2 * slot) },
    server: { managementAddress: serverManagementAddress, address: addressAt(subnet, 2 * slot + 1) },
  };
}

/** Plans a path for an operation: the first free slot from the one its id hashes to. */
export function planDataPath(request: PlanDataPathRequest): DataPathPlan {
  const pool = request.pool ?? DEFAULT_PATH_POOL;
  assertOperationId(request.operationId);
  const slots = poolSlots(pool);
  const taken = new Set(request.inUse ?? []);
  const start = createHash('sha256').update(request.operationId).digest().readUInt32BE(0) % slots;
  for (let i = 0; i < slots; i++) {
    const slot = (start + i) % slots;
    if (!taken.has(slot)) return planForSlot(request.operationId, slot, request.serverManagementAddress, request.clientManagementAddress, pool);
  }
  throw new InvalidInputError(`no free slot in the path pool ${pool.subnet} (${slots} in use)`, { pool: pool.subnet, slots });
}

/** The slot of a path link name ("ofvx12" -> 12), or undefined if it is not one. */
export function slotOfLinkName(name: string): number | undefined {
  const m = new RegExp(`^${PATH_LINK_PREFIX}(\\d{1,5})$`).exec(name);
  return m ? Number(m[1]) : undefined;
}
