// This host's side of the mobility calls (protocol/calls-mobility.ts):
// one-file servers for copies to other hosts, copies from another host's
// server (the copy worker with a remote source), descriptions of files and
// the content index (content-index.ts). Spread into AgentService's handlers.
// A file server listens on the local address that reaches the reading host
// (found the way the kernel routes to it: a UDP socket connected there, no
// packet sent); servers close when asked, when idle, and when the agent
// closes.
import { randomUUID } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { AgentHandlers } from '../protocol/index.ts';
import type { FileServer } from '../storage/index.ts';
import { dataExtents, serveFile } from '../storage/index.ts';
import { ContentIndex, describeFile } from './content-index.ts';
import type { HostLayout } from './layout.ts';
import type { LocalStorageAgent } from './local-storage-agent.ts';
import type { Locations } from './locations.ts';
import { assertRegularFile } from './path-policy.ts';

export type MobilityCall = 'openFileServer' | 'closeFileServer' | 'fetchFile' | 'describeFiles' | 'findContent';

/** The local address the kernel would send from to reach `peer`. */
export async function localAddressTo(peer: string): Promise<string> {
  const socket = createSocket(peer.includes(':') ? 'udp6' : 'udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.connect(9, peer, () => resolve());
    });
    return socket.address().address;
  } finally {
    socket.close();
  }
}

export class MobilityHandlers {
  private readonly servers = new Map<string, FileServer>();
  private readonly index: ContentIndex;

  constructor(
    layout: HostLayout,
    private readonly locations: Locations,
    private readonly storage: LocalStorageAgent,
  ) {
    this.index = new ContentIndex(layout, locations, storage);
  }

  handlers(): Pick<AgentHandlers, MobilityCall> {
    const L = this.locations;
    return {
      openFileServer: async (r) => {
        const path = L.path(r.file);
        const { size } = await assertRegularFile('file', path);
        const server = await serveFile({ path, bind: await localAddressTo(r.peer), ...(r.idleMs ? { idleMs: r.idleMs } : {}) });
        const serverId = randomUUID();
        this.servers.set(serverId, server);
        return { serverId, url: server.url, token: server.token, size };
      },
      closeFileServer: async (r) => {
        const server = this.servers.get(r.serverId);
        if (!server) return { existed: false, bytesServed: 0 };
        await server.close();
        this.servers.delete(r.serverId);
        return { existed: true, bytesServed: server.bytesServed };
      },
      fetchFile: async (r, ctx) => {
        const target = L.path(r.target);
        await mkdir(dirname(target), { recursive: true });
        const result = await this.storage.runCopy(
          { source: r.sourceName, remote: r.source, target, ...(r.chunkMiB ? { chunkMiB: r.chunkMiB } : {}), ...(r.maxMiBPerSecond ? { maxMiBPerSecond: r.maxMiBPerSecond } : {}) },
          (p) => ctx.progress(p.bytesTotal ? p.bytesDone / p.bytesTotal : 0, `copied ${p.chunksDone} of ${p.chunksTotal} chunks`, { ...p }),
          ctx.signal,
        );
        return { state: result.state, contentHash: result.contentHash, chunksCopied: result.chunksCopied, chunksSkipped: result.chunksSkipped, bytesCopied: result.bytesCopied, elapsedMs: result.elapsedMs };
      },
      describeFiles: async (r) => {
        const files = [];
        for (const f of r.files) {
          const path = L.path(f.file);
          const d = await describeFile(path, async (p) => (await dataExtents(p)).reduce((n, e) => n + e.length, 0));
          files.push({ file: f.file, ...d, contentId: d.exists && f.contentId ? await this.storage.baseContentId(path) : null });
        }
        return { files };
      },
      findContent: async (r, ctx) => {
        ctx.progress(0.05, r.verify ? 'looking up and verifying content ids' : 'looking up content ids');
        return { answers: await this.index.find(r.queries, r.verify, (done) => ctx.progress(done / Math.max(1, r.queries.length), `${done} of ${r.queries.length} chains looked up`)) };
      },
    };
  }

  /** Closes every file server (the agent is closing). */
  async close(): Promise<void> {
    for (const server of this.servers.values()) await server.close();
    this.servers.clear();
  }
}
