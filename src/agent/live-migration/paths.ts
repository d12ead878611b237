// This host's ends of per-operation data paths (src/net: a VXLAN link with its
// own VNI and /31 addresses, and a one-time TLS-PSK key), as the migration
// calls use them. Keys live in <home>/net/keys/<operation>/keys.psk; the key
// folder of an open end belongs to the QEMU user (QEMU reads the file at
// object-add on the client and at every TLS handshake on the server), the
// folders above it are only searchable. Nothing survives an agent restart: at
// start the paths of this agent's earlier operations are removed (their
// operations ended with the previous process). An operation's key folder is
// made before its link, so the folders name every link this agent may have
// made; links of other agents in the same network namespace (other homes)
// are never touched.
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../common/index.ts';
import { DataPathError, assertOperationId, closeDataPath, linkCounters, listDataPaths, managementDevice, openDataPath, sourceAddressTo } from '../../net/index.ts';
import type { DataPathEnd, DataPathPlan, LinkCounters, PathRole } from '../../net/index.ts';
import type { QemuAccess } from '../qemu-access.ts';

export class MigrationPaths {
  readonly credentialsRoot: string;
  /** Ends opened by this agent process, by operation id. */
  private readonly ends = new Map<string, DataPathEnd>();

  constructor(
    home: string,
    private readonly access: () => QemuAccess,
    private readonly logger: Logger,
  ) {
    this.credentialsRoot = join(home, 'net', 'keys');
  }

  /** At agent start: links and key folders left by a previous process go (their operations ended with it). */
  async reapAll(): Promise<void> {
    const removed: string[] = [];
    for (const operationId of await this.keyFolders()) {
      const closed = await closeDataPath({ operationId, credentialsRoot: this.credentialsRoot }).catch(() => null);
      if (closed) removed.push(operationId, ...closed.removedLinks);
    }
    if (removed.length) this.logger.warn({ removed }, 'removed data paths left by a previous agent');
  }

  /** The management address this host reaches `peer` from, and the path slots in use here. */
  async probe(peer: string | null): Promise<{ managementAddress: string | null; slotsInUse: number[] }> {
    const listing = await listDataPaths({ credentialsRoot: this.credentialsRoot });
    const managementAddress = peer ? (await sourceAddressTo(peer)).address : null;
    return { managementAddress, slotsInUse: listing.links.map((l) => l.slot) };
  }

  /** Makes this host's end (idempotent for the same plan) and gives QEMU its key folder. */
  async open(plan: DataPathPlan, role: PathRole, pskKey: string): Promise<DataPathEnd> {
    // The key folder first: it names the link for a reap after a crash between the two.
    await mkdir(join(this.credentialsRoot, plan.operationId), { recursive: true, mode: 0o700 });
    let end: DataPathEnd;
    try {
      end = await openDataPath({ plan, role, pskKey, credentialsRoot: this.credentialsRoot });
    } catch (err) {
      // A conflict made nothing of this operation's (another operation has the slot): its empty folder goes too.
      if (!this.ends.has(plan.operationId)) await rm(join(this.credentialsRoot, plan.operationId), { recursive: true, force: true });
      throw err;
    }
    try {
      await this.access().credentialFolder(end.credential.dir);
    } catch (err) {
      await closeDataPath({ operationId: plan.operationId, credentialsRoot: this.credentialsRoot }).catch(() => undefined);
      throw err;
    }
    this.ends.set(plan.operationId, end);
    this.logger.info({ operationId: plan.operationId, role, link: end.linkName, vni: end.vni, local: end.localAddress, remote: end.remoteAddress }, 'data path open');
    return end;
  }

  /** This host's end of an operation's path, opened by this agent process. */
  end(operationId: string, role?: PathRole): DataPathEnd {
    const end = this.ends.get(operationId);
    if (!end || (role && end.role !== role)) throw new DataPathError(`no ${role ?? ''} end of the data path of operation ${operationId} on this host: open it first (openPath)`, { operationId, role: role ?? null });
    return end;
  }

  async counters(operationId: string): Promise<{ link: LinkCounters; management: LinkCounters; linkName: string; device: string }> {
    const end = this.end(operationId);
    const device = (await managementDevice(end.localManagementAddress)).name;
    return { link: await linkCounters(end.linkName), management: await linkCounters(device), linkName: end.linkName, device };
  }

  /** Removes this host's end (link, address, key folder); answers the link's last counters. Idempotent. */
  async close(operationId: string): Promise<{ removedLinks: string[]; removedCredential: boolean; counters: LinkCounters | null }> {
    const listing = await listDataPaths({ credentialsRoot: this.credentialsRoot });
    const link = listing.links.find((l) => l.operationId === operationId);
    const counters = link ? await linkCounters(link.linkName).catch(() => null) : null;
    const closed = await closeDataPath({ operationId, credentialsRoot: this.credentialsRoot });
    this.ends.delete(operationId);
    if (closed.removedLinks.length || closed.removedCredential) this.logger.info({ operationId, ...closed }, 'data path closed');
    return { ...closed, counters };
  }

  /** Operations with a key folder of this agent. */
  async keyFolders(): Promise<string[]> {
    const names = await readdir(this.credentialsRoot).catch(() => [] as string[]);
    return names.filter((name) => {
      try {
        assertOperationId(name);
        return true;
      } catch {
        return false;
      }
    });
  }
}
