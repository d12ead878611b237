// The fake agent's mobility calls (see calls-mobility.ts), in memory: a file's
// "bytes" are a content token (the locator it was made at, unless a copy or a
// test set another), its hash and content id come from that token, a file
// server is an entry in a process-wide table that another fake agent's
// fetchFile reads, and a datastore disk's sidecar (writeDiskMeta) is kept so
// findContent can answer by content id the way the real agent does.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { OffshootError } from '../../common/index.ts';
import type { CallName } from '../calls.ts';
import type { MOBILITY_CALLS } from '../calls-mobility.ts';
import { contentIdOfHash } from '../calls-mobility.ts';
import type { AgentHandlers } from '../endpoint.ts';
import type { Locator } from '../locator.ts';
import type { OperationContext } from '../operations.ts';
import type { DiskMetaData } from '../schemas.ts';

/** What the fake mobility handlers need of a FakeAgent. */
export interface FakeHostFiles {
  readonly hostId: string;
  readonly files: Set<Locator>;
  /** Content tokens of files whose content is not their own locator (copies, tampered files). */
  readonly content: Map<Locator, string>;
  /** Sidecars written with writeDiskMeta. */
  readonly metas: Map<Locator, DiskMetaData>;
  /** Backing files set by relinkDisk or createDelta (top -> below). */
  readonly backing: Map<Locator, Locator | null>;
  check(call: CallName): void;
  /** What an operation of this name waits for after its first progress (FakeAgent.hold), if anything. */
  gate(call: CallName): Promise<void> | undefined;
}

const FAKE_SIZE = 1024 * 1024;
const servers = new Map<string, { host: FakeHostFiles; file: Locator; token: string; open: boolean; bytes: number }>();

/** The content token of a fake file. */
export function fakeToken(host: FakeHostFiles, file: Locator): string {
  return host.content.get(file) ?? file;
}

/** The disk-verify hash of a fake file (from its content token). */
export function fakeHash(host: FakeHostFiles, file: Locator): string {
  return `xxh64:${createHash('sha256').update(fakeToken(host, file)).digest('hex').slice(0, 16)}:${FAKE_SIZE}`;
}

export function fakeContentId(host: FakeHostFiles, file: Locator): string {
  return contentIdOfHash(fakeHash(host, file));
}

function missing(file: Locator): OffshootError {
  return new OffshootError('INVALID_INPUT', `file: cannot read file ${file} (ENOENT)`, { field: 'file', path: file }, 400);
}

export function fakeMobilityHandlers(host: FakeHostFiles): Pick<AgentHandlers, keyof typeof MOBILITY_CALLS> {
  const wrap = async <T>(call: CallName, fn: () => T | Promise<T>): Promise<T> => {
    host.check(call);
    return fn();
  };
  const op = async <T>(call: CallName, ctx: OperationContext, fn: () => T | Promise<T>): Promise<T> => {
    host.check(call);
    ctx.progress(0.5, `${call} half done`);
    await host.gate(call);
    return fn();
  };
  /** Content id of a file as the real agent offers it: its sidecar's for a datastore disk, else from its bytes. */
  const offeredId = (file: Locator) => host.metas.get(file)?.contentId ?? fakeContentId(host, file);
  const below = (file: Locator): Locator | null | undefined => {
    const meta = host.metas.get(file);
    if (meta) {
      if (!meta.parentId) return null;
      const parent = [...host.metas].find(([, m]) => m.id === meta.parentId)?.[0];
      return parent ?? undefined;
    }
    return host.backing.get(file) ?? null;
  };
  const chainOf = (file: Locator): Locator[] | undefined => {
    const out: Locator[] = [];
    for (let at: Locator | null | undefined = file; at; at = below(at)) {
      if (!host.files.has(at) || out.length > 32) return undefined;
      out.push(at);
      if (below(at) === undefined) return undefined;
    }
    return out;
  };
  return {
    openFileServer: (r) =>
      wrap('openFileServer', () => {
        if (!host.files.has(r.file)) throw missing(r.file);
        const serverId = randomUUID();
        const token = randomBytes(24).toString('base64url');
        servers.set(serverId, { host, file: r.file, token, open: true, bytes: 0 });
        return { serverId, url: `http://fake-${host.hostId}.invalid/${serverId}`, token, size: FAKE_SIZE };
      }),
    closeFileServer: (r) =>
      wrap('closeFileServer', () => {
        const server = servers.get(r.serverId);
        if (!server || server.host !== host) return { existed: false, bytesServed: 0 };
        servers.delete(r.serverId);
        return { existed: true, bytesServed: server.bytes };
      }),
    fetchFile: (r, ctx) =>
      op('fetchFile', ctx, () => {
        const serverId = r.source.url.slice(r.source.url.lastIndexOf('/') + 1);
        const server = servers.get(serverId);
        if (!server || server.token !== r.source.token) throw new OffshootError('COPY_SOURCE_UNREACHABLE', `cannot read the copy source at ${r.source.url}: no such server`, { url: r.source.url, reason: 'no such server' }, 502);
        if (ctx.signal.aborted) return { state: 'stopped' as const, contentHash: null, chunksCopied: 0, chunksSkipped: 0, bytesCopied: 0, elapsedMs: 1 };
        server.bytes += FAKE_SIZE;
        host.files.add(r.target);
        host.content.set(r.target, fakeToken(server.host, server.file));
        return { state: 'done' as const, contentHash: 'xxh3-64:fake', chunksCopied: 1, chunksSkipped: 0, bytesCopied: FAKE_SIZE, elapsedMs: 1 };
      }),
    describeFiles: (r) =>
      wrap('describeFiles', () => ({
        files: r.files.map((f) => {
          const exists = host.files.has(f.file);
          return { file: f.file, exists, size: exists ? FAKE_SIZE : 0, dataBytes: exists ? FAKE_SIZE : 0, format: f.file.endsWith('.qcow2') ? ('qcow2' as const) : ('raw' as const), contentId: exists && (f.contentId ?? false) ? fakeContentId(host, f.file) : null };
        }),
      })),
    findContent: (r, ctx) =>
      op('findContent', ctx, () => ({
        answers: r.queries.map((q) => {
          const chains = [...host.files].filter((f) => offeredId(f) === q.contentIds[0]).map(chainOf).filter((c): c is Locator[] => c !== undefined && c.length === q.contentIds.length && c.every((f, i) => offeredId(f) === q.contentIds[i]));
          let answer = { file: null as Locator | null, chain: [] as Locator[], verified: r.verify ? (false as boolean | null) : null, mismatch: null as { file: Locator; layer: number; expected: string; actual: string } | null };
          for (const chain of chains) {
            if (!r.verify) return { file: chain[0] as Locator, chain, verified: null, mismatch: null };
            const bad = chain.map((f, i) => ({ file: f, layer: i, expected: q.hashes?.[i] ?? 'unknown', actual: fakeHash(host, f) })).find((m) => m.expected !== m.actual);
            if (!bad) return { file: chain[0] as Locator, chain, verified: true, mismatch: null };
            answer = { ...answer, mismatch: bad };
          }
          return answer;
        }),
      })),
  };
}
