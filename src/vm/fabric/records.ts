// The elastic fabric's records: parent templates, where they are placed, and
// the children of their pools. Plain data, stored by whatever implements
// FabricInventory (src/store). Lifecycles are string-literal unions with
// guards:
//
//   template   creating --> ready --> deleting          (broken: every placement is)
//                      \--> (gone: a creation that failed leaves nothing)
//   placement  placing --> ready <--> broken            (a placing one that fails is dropped:
//                                                        nothing of it stays on its host)
//   member     filling --> ready --> claimed            (a pool child's "ready state")
//                  \          \--> retiring --> (gone)
//                   \--> (gone: it failed its readiness check)
//
// A member moves only by compare-and-set in the inventory (transitionMember,
// claimMember), so two controllers can never both hand out, or both retire,
// one child.
import { IllegalStateError } from '../../common/index.ts';
import type { VmSpec } from '../../protocol/index.ts';

export const TEMPLATE_STATES = ['creating', 'ready', 'broken', 'deleting'] as const;
export type TemplateState = (typeof TEMPLATE_STATES)[number];

export const PLACEMENT_STATES = ['placing', 'ready', 'broken'] as const;
export type PlacementState = (typeof PLACEMENT_STATES)[number];

/** The ready state of a pool child. */
export const MEMBER_STATES = ['filling', 'ready', 'claimed', 'retiring'] as const;
export type MemberState = (typeof MEMBER_STATES)[number];

export function isTemplateState(value: string): value is TemplateState {
  return (TEMPLATE_STATES as readonly string[]).includes(value);
}

export function isPlacementState(value: string): value is PlacementState {
  return (PLACEMENT_STATES as readonly string[]).includes(value);
}

export function isMemberState(value: string): value is MemberState {
  return (MEMBER_STATES as readonly string[]).includes(value);
}

const MEMBER_TRANSITIONS: Record<MemberState, readonly MemberState[]> = {
  filling: ['ready', 'retiring'],
  ready: ['claimed', 'retiring'],
  claimed: [],
  retiring: [],
};

export function canMemberMove(from: MemberState, to: MemberState): boolean {
  return MEMBER_TRANSITIONS[from].includes(to);
}

/** Throws IllegalStateError unless the template is in one of `allowed`. */
export function assertTemplateState(template: Pick<TemplateRecord, 'name' | 'state'>, allowed: readonly TemplateState[], operation: string): void {
  if (!allowed.includes(template.state)) throw new IllegalStateError(`template "${template.name}"`, template.state, allowed, operation);
}

/** How a host keeps the template's pool: K ready children, paused or running idle, within a memory budget. */
export interface PoolSettings {
  /** Ready children to keep on this host. */
  ready: number;
  /** Children run idle instead of paused (a claim skips the resume; they use CPU). */
  warm: boolean;
  /** The most host memory the pool may hold here (template memory plus what its children hold), or null. */
  maxMemoryBytes: number | null;
}

/** The template on one host: its own copy of the frozen memory and files there, and its pool. */
export interface TemplatePlacement {
  hostId: string;
  state: PlacementState;
  stateReason: string | null;
  /** The template as this host runs it (its frozen disks and boot files there); null until placed. */
  spec: VmSpec | null;
  /** The memory template the children here map. */
  memoryTemplateId: string | null;
  /** Files the host template needs (frozen disks, their chains, boot files), for the broken check. */
  files: string[];
  pool: PoolSettings;
  /** Why the pool holds fewer ready children than asked (the memory budget, a failed fill), or null. */
  poolNote: string | null;
  placedAt: string | null;
  /** The task carrying it there, while it is `placing` (a controller that finds that task ended drops the placement). */
  taskId?: string | null;
}

/**
 * A parent template: a running VM frozen (memory, device state, disks) from which children are forked on
 * request, on every host it is placed on.
 */
export interface TemplateRecord {
  id: string;
  name: string;
  state: TemplateState;
  stateReason: string | null;
  sourceVmId: string;
  sourceVmName: string;
  /** The host it was made on (its first placement). */
  originHostId: string;
  memoryMiB: number;
  /** The task making it, while it is `creating` (a controller that finds that task ended drops the template). */
  taskId?: string | null;
  placements: TemplatePlacement[];
  createdAt: string;
  updatedAt: string;
  /** Bumped by every update (set by the inventory). */
  version?: number;
}

/** A child of a template's pool: a VM (in the VM inventory) pre-registered here with its ready state. */
export interface PoolMember {
  vmId: string;
  templateId: string;
  hostId: string;
  state: MemberState;
  stateReason: string | null;
  createdAt: string;
  readyAt: string | null;
  claimedAt: string | null;
  /** Which claim took it (unique per claim). */
  claimId: string | null;
  updatedAt: string;
}

/** Persistence of the fabric; src/store implements it over SQLite and PostgreSQL. */
export interface FabricInventory {
  /** ALREADY_EXISTS when the name is taken. */
  insertTemplate(template: TemplateRecord): Promise<void>;
  getTemplate(id: string): Promise<TemplateRecord | undefined>;
  /** By id or name. */
  findTemplate(ref: string): Promise<TemplateRecord | undefined>;
  listTemplates(): Promise<TemplateRecord[]>;
  /** Read-modify-write in one transaction (the row locked on PostgreSQL); NOT_FOUND if it is gone. */
  updateTemplate(id: string, change: (template: TemplateRecord) => TemplateRecord): Promise<TemplateRecord>;
  deleteTemplate(id: string): Promise<void>;

  insertMember(member: PoolMember): Promise<void>;
  getMember(vmId: string): Promise<PoolMember | undefined>;
  listMembers(filter?: { templateId?: string; hostId?: string; state?: MemberState }): Promise<PoolMember[]>;
  /** Compare-and-set: moves the member to `to` only if it is in one of `from`; undefined if it was not (or is gone). */
  transitionMember(vmId: string, from: readonly MemberState[], to: MemberState, patch?: Partial<Pick<PoolMember, 'stateReason' | 'readyAt' | 'claimedAt' | 'claimId'>>): Promise<PoolMember | undefined>;
  /** Takes the oldest ready member of the template on one of `hostIds` for claim `claimId`, atomically across controllers; undefined when none is ready. */
  claimMember(templateId: string, hostIds: readonly string[], claimId: string): Promise<PoolMember | undefined>;
  deleteMember(vmId: string): Promise<void>;
}
