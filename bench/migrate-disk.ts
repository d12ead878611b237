// The local-storage workload of `npm run bench -- migrate`: a data disk of
// `diskGiB` whose first `dataGiB` hold random bytes, made on the host before
// the guest boots (a sparse raw reference file; the VM's disk is converted
// from it, so no minutes of dd under TCG); a writer in the guest that keeps
// writing a little to that disk during the migrations (every ~0.1 s one
// 256 KiB block copied from the data region into the next free block past
// it, O_DIRECT and flushed, its count in the guest's tmpfs, which migrates
// with its memory); and the check after the last migration: with the writer
// stopped and its writes flushed, the final disk image (QEMU gone) must equal
// the reference plus exactly the blocks the guest says it wrote
// (`qemu-img compare`). The baseline's libvirt "copy storage" steps on plain
// QMP are here too: an NBD export of each target at the destination (started
// -incoming defer -S, late-block-activate, as libvirt does), drive-mirror of
// each disk into it (QEMU's defaults: background copy, no speed cap), wait
// until every mirror is ready, then `migrate`, and once it completed the
// mirrors are completed (block-job-cancel of a ready mirror) before the
// destination's guest is started.
import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { QmpClient } from '../src/qemu/index.ts';
import { run } from './tools.ts';

const GiB = 2 ** 30;
/** The writer's block: 256 KiB. */
const BLOCK = 256 * 1024;
const WRITER_DIR = '/tmp/dw';

export interface DataDisk {
  diskGiB: number;
  dataGiB: number;
  /** The sparse raw reference: random bytes in [0, dataGiB), zeros after. */
  reference: string;
}

/** Writes the reference file (random data from /dev/urandom, then extended sparse to the disk's size). */
export async function makeDataDisk(dir: string, diskGiB: number, dataGiB: number): Promise<DataDisk> {
  if (!(dataGiB > 0 && diskGiB > dataGiB)) throw new Error(`--disk-gib (${diskGiB}) must be larger than --data-gib (${dataGiB}): the guest's writes go past the data`);
  const reference = join(dir, 'data-reference.raw');
  await run('dd', ['if=/dev/urandom', `of=${reference}`, 'bs=1M', `count=${Math.round(dataGiB * 1024)}`, 'iflag=fullblock', 'status=none']);
  await run('truncate', ['-s', `${diskGiB}G`, reference]);
  return { diskGiB, dataGiB, reference };
}

/**
 * The guest's writer on the data disk (/dev/vdb, checked by its size): block k is a copy of data block
 * k mod (data blocks), written at data + k blocks. It stops when told (writerStop) after a whole block.
 */
export function writerStart(disk: DataDisk): string {
  const dataBlocks = (disk.dataGiB * GiB) / BLOCK;
  const sectors = (disk.diskGiB * GiB) / 512;
  return `[ "$(cat /sys/block/vdb/size)" = "${sectors}" ] || { echo "no ${disk.diskGiB} GiB /dev/vdb"; exit 1; }; W=${WRITER_DIR}; mkdir -p $W && rm -f $W/* && (k=0; while [ ! -e $W/stop ]; do dd if=/dev/vdb of=/dev/vdb bs=${BLOCK / 1024}k skip=$((k % ${dataBlocks})) seek=$((${dataBlocks} + k)) count=1 iflag=direct oflag=direct conv=notrunc,fsync 2>$W/err || { echo failed > $W/done; exit 1; }; k=$((k + 1)); echo $k > $W/n; sleep 0.1; done; echo ok > $W/done) >/dev/null 2>&1 &`;
}

/** Stops the writer, flushes the guest's disks, and prints "<blocks written> <ok|failed|running> <dd's error>". */
export const WRITER_STOP = `W=${WRITER_DIR}; touch $W/stop; i=0; while [ ! -e $W/done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done; sync; echo "$(cat $W/n 2>/dev/null || echo 0) $(cat $W/done 2>/dev/null || echo running) $(head -c 200 $W/err 2>/dev/null)"`;

/** How many blocks the writer has written so far (guest script). */
export const WRITER_COUNT = `cat ${WRITER_DIR}/n 2>/dev/null || echo 0`;

export interface DiskCheck {
  equal: boolean;
  blocksWritten: number;
  detail: string;
}

/**
 * Compares a disk image (its QEMU gone) with what it must hold: the reference plus the `written` blocks
 * of the writer (built in `scratch`, a sparse copy of the reference, removed after).
 */
export async function checkDataDisk(disk: DataDisk, image: string, imageFormat: 'qcow2' | 'raw', written: number, scratch: string): Promise<DiskCheck> {
  const expected = join(scratch, 'expected.raw');
  await run('cp', ['--sparse=always', disk.reference, expected]);
  try {
    const dataBlocks = (disk.dataGiB * GiB) / BLOCK;
    const ref = await open(disk.reference, 'r');
    const out = await open(expected, 'r+');
    try {
      const buf = Buffer.alloc(BLOCK);
      for (let k = 0; k < written; k++) {
        await ref.read(buf, 0, BLOCK, (k % dataBlocks) * BLOCK);
        await out.write(buf, 0, BLOCK, (dataBlocks + k) * BLOCK);
      }
    } finally {
      await ref.close();
      await out.close();
    }
    const { code, output } = await new Promise<{ code: number; output: string }>((resolve) => {
      execFile('qemu-img', ['compare', '-f', 'raw', '-F', imageFormat, expected, image], (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 2) : 0, output: `${stdout}${stderr}`.trim() }));
    });
    return { equal: code === 0, blocksWritten: written, detail: output };
  } finally {
    await run('rm', ['-f', expected]);
  }
}

/** Destination (started -incoming defer -S): late-block-activate, an NBD server and a writable export of each node. */
export async function exportTargets(qmp: QmpClient, address: string, port: number, nodes: string[]): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'late-block-activate', state: true }] });
  await qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: address, port: String(port) } } });
  for (const node of nodes) await qmp.execute('block-export-add', { type: 'nbd', id: `export-${node}`, 'node-name': node, name: node, writable: true });
}

/** Source: drive-mirror of each node into the destination's export (QEMU's defaults otherwise), until all are ready. */
export async function mirrorUntilReady(qmp: QmpClient, address: string, port: number, disks: Array<{ node: string; sync: 'top' | 'full' }>, deadline: number): Promise<void> {
  for (const d of disks) await qmp.execute('drive-mirror', { 'job-id': `mirror-${d.node}`, device: d.node, target: `nbd:${address}:${port}:exportname=${d.node}`, format: 'raw', mode: 'existing', sync: d.sync });
  while (Date.now() < deadline) {
    const jobs = await qmp.execute<Array<{ device: string; ready: boolean }>>('query-block-jobs');
    const mine = jobs.filter((j) => j.device.startsWith('mirror-'));
    if (mine.length < disks.length) throw new Error(`a mirror ended before it was ready (${mine.map((j) => j.device).join(', ')} left)`);
    if (mine.every((j) => j.ready)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the mirrors were not ready in time');
}

/** Source, guest stopped: completes the ready mirrors (block-job-cancel leaves each target equal to its source); the bytes they copied. */
export async function completeMirrors(qmp: QmpClient, nodes: string[]): Promise<number> {
  const done = nodes.map((node) => qmp.waitForEvent('BLOCK_JOB_COMPLETED', { timeoutMs: 60_000, predicate: (e) => (e.data as { device?: string } | undefined)?.device === `mirror-${node}` }));
  for (const node of nodes) await qmp.execute('block-job-cancel', { device: `mirror-${node}` });
  const events = await Promise.all(done);
  const failed = events.find((e) => (e.data as { error?: string }).error);
  if (failed) throw new Error(`mirror completion failed: ${(failed.data as { error?: string }).error}`);
  return events.reduce((s, e) => s + Number((e.data as { offset?: number }).offset ?? 0), 0);
}
