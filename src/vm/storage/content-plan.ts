// Moves by content id (issue 13, cross-site moves): which read-only layers of
// a VM's disks the destination already holds, so that only what is missing
// travels. The source describes each disk's backing chain (its read-only
// layers, nearest first) with their content ids and data bytes
// (describeFiles); the destination answers, for the whole chain and then for
// each shorter chain below it, whether it holds a file whose own chain has
// exactly those ids (findContent), hashing what it found when asked to verify.
//
// This is the piece a migration (or a cold move) calls before it creates the
// destination's images: a disk whose whole backing chain is held gets a new
// top over the destination's copy (`destBacking`, the chain the incoming
// image is created over; a mirror of the top layer alone), and only the
// layers in `send` (above what is held) travel besides the top. A layer whose
// id matched but whose bytes did not (verify) is reported in `mismatch` and
// never used. Plain data in, plain data out: the caller chooses the agents.
import { OffshootError } from '../../common/index.ts';
import type { AgentClient, ContentQuery, Locator } from '../../protocol/index.ts';
import { hashOfContentId, newOperationId, runOperation } from '../../protocol/index.ts';

/** One read-only layer of a source disk's chain. */
export interface PlannedLayer {
  file: Locator;
  format: 'qcow2' | 'raw';
  contentId: string;
  dataBytes: number;
}

export interface DiskContentPlan {
  /** The VM's disk (device id). */
  diskId: string;
  /** The source's read-only chain below the disk, nearest first. */
  layers: PlannedLayer[];
  /** How many layers from the bottom of `layers` the destination holds (0: none; layers.length: all). */
  heldLayers: number;
  /** The destination's copies of the held layers, nearest first, to create the incoming image over when all are held. */
  destBacking: Array<{ file: Locator; format: 'qcow2' | 'raw' }>;
  /** Whether the whole chain is held: the move sends the disk's top layer only. */
  skipAll: boolean;
  /** The layers that must travel (above the held ones), nearest first. */
  send: PlannedLayer[];
  skippedBytes: number;
  sendBytes: number;
  /** With verify: a layer the destination holds by id whose bytes differ (it is not used). */
  mismatch: { file: Locator; layer: number; expected: string; actual: string } | null;
}

export interface ContentPlanRequest {
  /** Each disk of the VM: its device id and its read-only backing chain on the source, nearest first. */
  disks: Array<{ id: string; backing: Locator[] }>;
  /**
   * Content ids the control plane records for some layers (datastore disks: their sidecar's id, which a copy keeps);
   * they win over the id the source computes from a layer's bytes (how hosts name their own bases).
   */
  contentIds?: Record<Locator, string>;
  /** Hash every layer the destination holds and compare it with the source's (slower; catches a tampered base). */
  verify?: boolean;
}

/** Asks `destination` which layers of the disks' chains (on `source`) it holds by content id. */
export async function planByContent(source: AgentClient, destination: AgentClient, request: ContentPlanRequest): Promise<DiskContentPlan[]> {
  const files = [...new Set(request.disks.flatMap((d) => d.backing))];
  // A layer with a recorded id is not hashed for one (the recorded id wins; verify hashes it below).
  const described = files.length ? (await source.describeFiles({ files: files.map((file) => ({ file, contentId: !request.contentIds?.[file] })) })).files : [];
  const byFile = new Map(described.map((f) => [f.file, f]));
  const layersOf = (backing: Locator[]): PlannedLayer[] =>
    backing.map((file) => {
      const d = byFile.get(file);
      const contentId = request.contentIds?.[file] ?? d?.contentId;
      if (!d?.exists || !contentId) throw new OffshootError('NOT_FOUND', `the source has no read-only layer ${file} with a content id`, { kind: 'layer', file }, 404);
      return { file, format: d.format, contentId, dataBytes: d.dataBytes };
    });
  const chains = request.disks.map((d) => layersOf(d.backing));

  // With verify, the expected hash of each layer: from its id when the id was made from the hash, else hashed here.
  const hashes = new Map<Locator, string | null>();
  if (request.verify) {
    for (const layer of chains.flat()) {
      if (hashes.has(layer.file)) continue;
      hashes.set(layer.file, hashOfContentId(layer.contentId) ?? (await runOperation(source, 'hashDisk', { file: layer.file })).hash);
    }
  }

  // For each disk, every chain from a layer down to the bottom, longest first.
  const queries: Array<{ disk: number; from: number; query: ContentQuery }> = [];
  chains.forEach((layers, disk) => {
    for (let from = 0; from < layers.length; from++) {
      const rest = layers.slice(from);
      queries.push({ disk, from, query: { contentIds: rest.map((l) => l.contentId), ...(request.verify ? { hashes: rest.map((l) => hashes.get(l.file) ?? null) } : {}) } });
    }
  });
  const answers = queries.length ? (await runOperation(destination, 'findContent', { operationId: newOperationId(), queries: queries.map((q) => q.query), verify: request.verify ?? false })).answers : [];

  return request.disks.map((d, disk) => {
    const layers = chains[disk] as PlannedLayer[];
    let from = layers.length;
    let destChain: Locator[] = [];
    let mismatch: DiskContentPlan['mismatch'] = null;
    queries.forEach((q, i) => {
      if (q.disk !== disk) return;
      const answer = answers[i];
      if (answer?.mismatch && !mismatch) mismatch = answer.mismatch;
      // Longest first: the first chain found (and verified, when asked) is the one used.
      if (answer?.file && from === layers.length && (!request.verify || answer.verified === true)) {
        from = q.from;
        destChain = answer.chain;
      }
    });
    const held = layers.slice(from);
    const send = layers.slice(0, from);
    return {
      diskId: d.id,
      layers,
      heldLayers: held.length,
      destBacking: destChain.map((file, i) => ({ file, format: (held[i] as PlannedLayer).format })),
      skipAll: layers.length > 0 && from === 0,
      send,
      skippedBytes: held.reduce((n, l) => n + l.dataBytes, 0),
      sendBytes: send.reduce((n, l) => n + l.dataBytes, 0),
      mismatch,
    };
  });
}
