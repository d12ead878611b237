// The inventory's table types, as Kysely sees them. JSON columns hold text,
// booleans are 0/1, times are ISO text (`*_at`) or epoch milliseconds (leases
// and heartbeats, which are compared and added to).
import type { Generated } from 'kysely';

export interface VmsTable {
  id: string;
  name: string;
  state: string;
  state_reason: string | null;
  spec: string;
  runtime: string | null;
  created_at: string;
  updated_at: string;
  /** Bumped by every update; compare-and-set. */
  version: Generated<number>;
  /** The host the VM lives on (issue 10); null on one machine. */
  host: string | null;
}

export interface TasksTable {
  seq: Generated<number>;
  id: string;
  kind: string;
  target_id: string;
  target_name: string;
  state: string;
  progress: number;
  message: string;
  result: string | null;
  error: string | null;
  created_at: string;
  updated_at: string;
  /** The controller running the task, while it runs. */
  owner: string | null;
  /** Epoch ms; past it, another controller may take the task over. */
  lease_expires_at: number | null;
  /** Epoch ms when someone asked to cancel the task (its owner polls for it); null otherwise. */
  cancel_requested_at: number | null;
}

export interface CheckpointsTable {
  id: string;
  name: string;
  vm_id: string;
  vm_name: string;
  path: string;
  state: string;
  memory_bytes: number;
  file_bytes: number | null;
  spec: string;
  created_at: string;
  host: string | null;
  /** The file by reference on its host (the `path` column keeps where it is, for people). */
  file: string | null;
}

export interface DatastoresTable {
  name: string;
  /** Unique per host: "<host id>:<path>" (a plain path in rows from before hosts). */
  path: string;
  created_at: string;
  host: string | null;
  id: string | null;
  /** JSON: [{hostId, path}] of every host that sees the datastore. */
  hosts: string | null;
}

export interface DisksTable {
  id: string;
  name: string;
  datastore: string;
  path: string;
  format: string;
  content_id: string;
  parent_id: string | null;
  virtual_size: number;
  read_only: number;
  created_at: string;
}

/** A record kept as one JSON document (copy jobs, pools). */
export interface DocumentTable {
  id: string;
  name: string | null;
  doc: string;
  created_at: string;
}

export interface VmClaimsTable {
  vm_id: string;
  owner: string;
  operation: string;
  token: string;
  claimed_at: number;
  expires_at: number;
}

export interface GcPinsTable {
  path: string;
  holder: string;
  owner: string | null;
  created_at: string;
}

export interface ControllersTable {
  id: string;
  url: string | null;
  started_at: string;
  heartbeat_at: number;
  lease_expires_at: number;
}

/** Events too large for a NOTIFY payload, fetched by id. */
export interface EventPayloadsTable {
  id: Generated<number>;
  origin: string;
  payload: string;
  created_at: number;
}

export interface ApiTokensTable {
  id: string;
  name: string;
  /** sha256 of the token, hex. */
  hash: string;
  created_at: string;
}

export interface HostsTable {
  id: string;
  name: string;
  url: string;
  state: string;
  state_reason: string | null;
  epoch: number;
  /** The agent's credential (null for a controller's in-process agent). */
  token: string | null;
  protocol_version: number;
  /** JSON array of capability names. */
  capabilities: string;
  /** JSON: what the agent last told of itself (hostname, accelerator, memory, confinement). */
  facts: string | null;
  last_seen_at: string | null;
  lease_expires_at: string | null;
  created_at: string;
  updated_at: string;
}

/** Parent templates of the elastic fabric: the record as a JSON document, with its name, state and version as columns. */
export interface FabricTemplatesTable {
  id: string;
  name: string;
  state: string;
  doc: string;
  /** Bumped by every update. */
  version: Generated<number>;
  created_at: string;
  updated_at: string;
}

/** Children of the templates' pools, one row per VM: their ready state moves only by compare-and-set. */
export interface FabricMembersTable {
  vm_id: string;
  template_id: string;
  host_id: string;
  state: string;
  state_reason: string | null;
  created_at: string;
  ready_at: string | null;
  claimed_at: string | null;
  claim_id: string | null;
  updated_at: string;
}

/** Migration policies (issue 12): one JSON document per scope (`fleet` or a host id). */
export interface MigrationPoliciesTable {
  scope: string;
  doc: string;
  updated_at: string;
}

/** Migrations waiting for a host's slot, in arrival order (seq). */
export interface MigrationQueueTable {
  seq: Generated<number>;
  task_id: string;
  owner: string;
  /** JSON: the slots it needs, by direction and host id. */
  needs: string;
  enqueued_at: string;
}

export interface Database {
  vms: VmsTable;
  tasks: TasksTable;
  checkpoints: CheckpointsTable;
  datastores: DatastoresTable;
  disks: DisksTable;
  copy_jobs: DocumentTable;
  pools: DocumentTable;
  vm_claims: VmClaimsTable;
  gc_pins: GcPinsTable;
  controllers: ControllersTable;
  event_payloads: EventPayloadsTable;
  api_tokens: ApiTokensTable;
  hosts: HostsTable;
  fabric_templates: FabricTemplatesTable;
  fabric_members: FabricMembersTable;
  migration_policies: MigrationPoliciesTable;
  migration_queue: MigrationQueueTable;
}

/** Every table, in the order an import fills them. */
export const TABLES = ['vms', 'tasks', 'checkpoints', 'datastores', 'disks', 'copy_jobs', 'pools', 'vm_claims', 'gc_pins', 'controllers', 'event_payloads', 'api_tokens', 'hosts', 'fabric_templates', 'fabric_members', 'migration_policies', 'migration_queue'] as const satisfies readonly (keyof Database)[];
