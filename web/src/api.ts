// The console's view of the daemon: the project's typed client (same origin,
// the session's token) plus what the console derives from the API: which
// optional routes the daemon has (from its OpenAPI document: several hosts,
// live migration, templates), and the hosts, from GET /hosts once the daemon
// has it, else the one host of GET /host.
import { OffshootClient, OffshootError, StorageClient } from '../../src/client/browser.ts';
import type { HostInfoView, VmRecord } from '../../src/client/browser.ts';

export { OffshootError };
export type { CheckpointRecord, DatastoreView, EngineEvent, ForkResult, HostInfoView, TaskRecord, VmMemoryView, VmRecord, VmState } from '../../src/client/browser.ts';

/** Routes that other parts of Offshoot add over time; the console shows what they drive once the daemon has them. */
export interface Capabilities {
  hosts: boolean;
  migrate: boolean;
  templates: boolean;
}

export const NO_CAPABILITIES: Capabilities = { hosts: false, migrate: false, templates: false };

export function capabilitiesOf(openapi: { paths?: Record<string, unknown> }): Capabilities {
  const paths = Object.keys(openapi.paths ?? {});
  return { hosts: paths.includes('/hosts'), migrate: paths.includes('/vms/{ref}/migrate'), templates: paths.includes('/templates') };
}

/** A host as the console shows it; fields the daemon does not report yet are undefined. */
export interface HostView {
  id: string;
  name: string;
  state: string;
  accel?: string;
  accelReason?: string;
  qemuVersion?: string;
  memoryTotalBytes?: number;
  memoryFreeBytes?: number;
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' && value ? value : undefined;
}
function num(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/** One entry of GET /hosts, read leniently (the route is still being built). */
export function hostFromApi(raw: Record<string, unknown>): HostView {
  const id = str(raw.id) ?? str(raw.hostId) ?? str(raw.name) ?? 'host';
  const memory = (raw.memory ?? {}) as Record<string, unknown>;
  return {
    id,
    name: str(raw.name) ?? id,
    state: str(raw.state) ?? 'unknown',
    accel: str(raw.accel),
    qemuVersion: str(raw.qemuVersion),
    memoryTotalBytes: num(raw.memoryTotalBytes) ?? num(memory.totalBytes) ?? num(memory.total),
    memoryFreeBytes: num(raw.memoryFreeBytes) ?? num(memory.freeBytes) ?? num(memory.free),
  };
}

/** The single host of a daemon without GET /hosts: it answered, so it is up. */
export function hostFromInfo(info: HostInfoView): HostView {
  return { id: info.hostId, name: info.hostId, state: 'up', accel: info.accel, accelReason: info.accelReason, qemuVersion: info.qemuVersion };
}

/** Where a VM runs: its host field once VMs have one, else its QEMU's host, else the daemon's own. */
export function hostOfVm(vm: VmRecord, fallback: string): string {
  const declared = (vm as VmRecord & { host?: unknown }).host;
  return (typeof declared === 'string' && declared) || vm.runtime?.hostId || fallback;
}

/** The name of the VM's host, for display (its id when the hosts list does not know it). */
export function hostNameOfVm(vm: VmRecord, hosts: HostView[], fallback: string): string {
  const id = hostOfVm(vm, fallback);
  return hosts.find((h) => h.id === id)?.name ?? id;
}

export class ConsoleApi {
  readonly client: OffshootClient;
  readonly storage: StorageClient;

  constructor(token: string, origin: string = location.origin) {
    this.client = new OffshootClient({ url: origin, token });
    this.storage = new StorageClient(this.client);
  }

  async capabilities(): Promise<Capabilities> {
    return capabilitiesOf(await this.client.call<{ paths?: Record<string, unknown> }>('GET', '/openapi.json'));
  }

  async hosts(capabilities: Capabilities, info: HostInfoView): Promise<HostView[]> {
    if (!capabilities.hosts) return [hostFromInfo(info)];
    const raw = await this.client.call<Record<string, unknown>[]>('GET', '/hosts');
    return raw.map(hostFromApi);
  }

  migrate(vm: string, host: string): Promise<unknown> {
    return this.client.call('POST', `/vms/${encodeURIComponent(vm)}/migrate`, { host });
  }
}

/** Any thrown value as an OffshootError, so every error shows a code and a message. */
export function asOffshootError(err: unknown): OffshootError {
  if (err instanceof OffshootError) return err;
  if (err instanceof Error) return new OffshootError('CONSOLE_ERROR', err.message);
  return new OffshootError('CONSOLE_ERROR', String(err));
}
