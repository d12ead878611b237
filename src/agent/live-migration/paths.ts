// This host's ends of per-operation data paths (src/net: a VXLAN link with its
// own VNI and /31 addresses, and a one-time TLS-PSK key), as the migration
// calls use them. Keys live in <home>/net/keys/<operation>/keys.psk (a
// server's folder also holds dh-params.pem, a standard DH group, so its QEMU
// does not generate one at object-add); the key folder of an open end belongs
// to the QEMU user (QEMU reads the file at object-add on the client and at
// every TLS handshake on the server), the folders above it are only
// searchable. Nothing survives an agent restart: at start the paths of this
// agent's earlier operations are removed (their operations ended with the
// previous process). An operation's key folder is made before its link, so
// the folders name every link this agent may have made; links of other agents
// in the same network namespace (other homes) are never touched.
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../common/index.ts';
import { DataPathError, assertOperationId, closeDataPath, closeDataPathEnd, linkCounters, listDataPaths, managementDevice, openDataPath, sourceAddressTo } from '../../net/index.ts';
import type { DataPathEnd, DataPathPlan, LinkCounters, PathRole } from '../../net/index.ts';
import type { QemuAccess } from '../qemu-access.ts';

/**
 * RFC 7919's ffdhe2048 group (`openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048`), written as
 * dh-params.pem beside the server's key: without it QEMU 7.2's tls-creds-psk server generates DH parameters when
 * the object is added, which took 0.75-0.9 s at load 5 and 2.7-4.5 s at load 20-30 (measured: the destination's
 * object-add, bench migrate timelines; with the file, 0 ms). A standard public group, as TLS 1.3 uses.
 */
const DH_PARAMS_PEM = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`;

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
      // The server's Diffie-Hellman group, so its QEMU does not generate one when the key is loaded (see DH_PARAMS_PEM).
      if (role === 'server') await writeFile(join(end.credential.dir, 'dh-params.pem'), DH_PARAMS_PEM, { mode: 0o600 });
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
    const known = this.ends.get(operationId);
    if (known) {
      // An end this process made: its link is known, counters and deletion go in one ip process.
      const closed = await closeDataPathEnd({ operationId, linkName: known.linkName, credentialsRoot: this.credentialsRoot });
      this.ends.delete(operationId);
      this.logger.info({ operationId, removedLinks: closed.removedLinks, removedCredential: closed.removedCredential }, 'data path closed');
      return closed;
    }
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
