// Disk operations on a running VM through QMP: a live snapshot (the VM's top
// image becomes a read-only base under a new overlay, without stopping the
// guest), and a full block-stream with progress (copy everything below the
// top image into it, copy-on-read style: clusters the guest already wrote in
// the top image are never overwritten; when the job ends the image stands
// alone). QEMU names the top node of a disk by its qdev id only until the
// first live snapshot, so the current top node is looked up each time.
import { randomBytes } from 'node:crypto';
import { OffshootError } from '../common/index.ts';
import type { QmpClient } from '../qemu/index.ts';

interface QueryBlockEntry {
  qdev?: string;
  device?: string;
  inserted?: { 'node-name'?: string };
}

export class DiskNotAttachedError extends OffshootError {
  constructor(diskId: string) {
    super('DISK_NOT_ATTACHED', `the VM has no disk "${diskId}" attached`, { diskId }, 404);
  }
}

/** The node name at the top of the disk whose qdev id is `diskId`. */
export async function topNodeOf(qmp: QmpClient, diskId: string): Promise<string> {
  const blocks = await qmp.execute<QueryBlockEntry[]>('query-block');
  // A virtio-blk device's qdev path is /machine/peripheral/<id>/virtio-backend.
  const entry = blocks.find((b) => b.qdev === diskId || b.qdev === `/machine/peripheral/${diskId}/virtio-backend` || b.qdev === `/machine/peripheral/${diskId}` || b.device === diskId);
  const node = entry?.inserted?.['node-name'];
  if (!node) throw new DiskNotAttachedError(diskId);
  return node;
}

/**
 * Puts `overlayPath` (a qcow2 already created over the disk's current image, with
 * `-u`) on top of the disk: blockdev-add with no backing, then blockdev-snapshot.
 */
export async function liveSnapshot(qmp: QmpClient, diskId: string, overlayPath: string): Promise<string> {
  const top = await topNodeOf(qmp, diskId);
  const overlay = `${diskId}-s${randomBytes(3).toString('hex')}`;
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': overlay, discard: 'unmap', file: { driver: 'file', filename: overlayPath }, backing: null });
  try {
    await qmp.execute('blockdev-snapshot', { node: top, overlay });
  } catch (err) {
    await qmp.execute('blockdev-del', { 'node-name': overlay }).catch(() => undefined);
    throw err;
  }
  await reopenReadOnly(qmp, top);
  return overlay;
}

interface BlockGraph {
  nodes: { id: number; name: string; type: string }[];
  edges: { parent: number; child: number; name: string }[];
}

/**
 * The old top is now a backing image but QEMU still holds it (and its file) writable, which locks
 * every other QEMU out of it: reopen it read-only, naming its current children so they stay.
 */
async function reopenReadOnly(qmp: QmpClient, nodeName: string): Promise<void> {
  const graph = await qmp.execute<BlockGraph>('x-debug-query-block-graph');
  const node = graph.nodes.find((n) => n.name === nodeName);
  if (!node) throw new DiskNotAttachedError(nodeName);
  const child = (role: string) => {
    const edge = graph.edges.find((e) => e.parent === node.id && e.name === role);
    return edge ? graph.nodes.find((n) => n.id === edge.child)?.name : undefined;
  };
  const file = child('file');
  const backing = child('backing');
  await qmp.execute('blockdev-reopen', { options: [{ driver: 'qcow2', 'node-name': nodeName, 'read-only': true, discard: 'unmap', file, backing: backing ?? null }] });
}

export interface StreamProgress {
  offset: number;
  length: number;
}

/**
 * Streams the chain below the disk's top into it (block-stream; with `base`, only the images above
 * that base, and the top then points at it) and waits for the end, reporting progress. Throws if the
 * job fails or is cancelled, or QEMU goes away. Every wait is armed and handled before the job starts,
 * so a failing `block-stream` never leaves a promise that rejects later with nobody listening.
 */
export async function streamDisk(qmp: QmpClient, diskId: string, options: { base?: string; onProgress?: (p: StreamProgress) => void; pollMs?: number } = {}): Promise<void> {
  const { base, onProgress, pollMs = 250 } = options;
  const jobId = `stream-${diskId}-${randomBytes(3).toString('hex')}`;
  const matches = (e: { data?: unknown }) => (e.data as { device?: string } | undefined)?.device === jobId;
  const stopWaiting = new AbortController();
  // Subscribe before the job starts: a small disk can finish at once.
  const completed = qmp.waitForEvent('BLOCK_JOB_COMPLETED', { predicate: matches, timeoutMs: Infinity, signal: stopWaiting.signal });
  const cancelled = qmp.waitForEvent('BLOCK_JOB_CANCELLED', { predicate: matches, timeoutMs: Infinity, signal: stopWaiting.signal });
  completed.catch(() => undefined);
  cancelled.catch(() => undefined);
  let finished = false;
  let poll: Promise<void> = Promise.resolve();
  try {
    await qmp.execute('block-stream', { 'job-id': jobId, device: await topNodeOf(qmp, diskId), ...(base ? { base } : {}) });
    poll = (async () => {
      while (!finished) {
        const jobs = await qmp.execute<{ device: string; offset: number; len: number }[]>('query-block-jobs').catch(() => []);
        const job = jobs.find((j) => j.device === jobId);
        if (job && !finished) onProgress?.({ offset: job.offset, length: job.len });
        await new Promise((r) => setTimeout(r, pollMs));
      }
    })();
    const event = await Promise.race([completed, cancelled.then((e) => ({ ...e, cancelled: true as const }))]);
    if ('cancelled' in event) throw new OffshootError('BLOCK_JOB_CANCELLED', `block job ${jobId} was cancelled`, { jobId }, 409);
    const data = event.data as { error?: string; offset?: number; len?: number } | undefined;
    if (data?.error) throw new OffshootError('BLOCK_JOB_FAILED', `block job ${jobId} failed: ${data.error}`, { jobId, ...(base ? { base } : {}) }, 500);
    if (data?.len !== undefined) onProgress?.({ offset: data.offset ?? data.len, length: data.len });
  } finally {
    finished = true;
    stopWaiting.abort();
    await poll;
  }
}
