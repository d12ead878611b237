// Copy benchmark (the full-copy part of `npm run bench -- clone`): a qcow2 of
// 4 GiB virtual size holding 1 GiB of random data (so nothing compresses),
// on the root filesystem. Offshoot's copy engine (in-process copyFile:
// extents, chunks, fdatasync + progress record per chunk, read-back
// verification), and the same copy by the copy worker process a copy job
// spawns (node start-up included), beside `cp --sparse=always` and
// `qemu-img convert -O qcow2`, each also followed by a sync of the target
// (the engine's copy is durable; neither tool's is: qemu-img leaves ~0.4 s of
// writeback for a 1 GiB image here), same image, same run, warm and (as
// root) cold page cache. A last baseline gives the tool the engine's own
// guarantee: `cp`, a sync, and every byte read back from the device with
// O_DIRECT (`dd iflag=direct`), as the engine's verification does. Figures:
// time and GB/s of data.
//
// Options: --runs N (default 5), --dir DIR (default /var/tmp), --size-gib N
// (4), --data-gib N (1), --layout dense|prealloc (dense: a qcow2 that grew by
// appending, no holes in the file; prealloc: metadata-preallocated, the file
// has holes where the guest wrote nothing), --chunk-mib N, --buffer-mib N,
// --buffers N (engine defaults unless given), --no-cold.
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { qemuVersion } from '../src/qemu/index.ts';
import { copyFile, copyWorkerBundle, copyWorkerCommand, fileContentHash } from '../src/storage/index.ts';
import { option, run } from './tools.ts';
import type { BenchResult, Comparison, Series } from './report.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;



/** Builds the test image: random data in 4 regions spread over the disk. */
async function makeImage(dir: string, sizeBytes: number, dataBytes: number, layout: string): Promise<string> {
  const raw = join(dir, 'data.raw');
  const img = join(dir, 'base.qcow2');
  closeSync(openSync(raw, 'w'));
  await run('truncate', ['-s', String(sizeBytes), raw]);
  const fd = openSync(raw, 'r+');
  const buf = Buffer.allocUnsafe(16 * MiB);
  const regions = 4;
  const per = Math.floor(dataBytes / regions / buf.length) * buf.length;
  for (let r = 0; r < regions; r++) {
    const at = Math.floor((sizeBytes / regions) * r);
    for (let o = 0; o < per; o += buf.length) writeSync(fd, randomFillSync(buf), 0, buf.length, at + o);
  }
  closeSync(fd);
  if (layout === 'prealloc') {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', img, String(sizeBytes)]);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', raw, img]);
  } else {
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, img]);
  }
  rmSync(raw);
  return img;
}

async function dropCaches(): Promise<boolean> {
  try {
    await run('sync', []);
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    return false;
  }
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

export async function copyBenchmark(args: string[]): Promise<BenchResult> {
  const runs = Number(option(args, '--runs', '5'));
  const root = option(args, '--dir', '/var/tmp');
  const sizeBytes = Number(option(args, '--size-gib', '4')) * GiB;
  const dataBytesWanted = Number(option(args, '--data-gib', '1')) * GiB;
  const layout = option(args, '--layout', 'dense');
  const chunkBytes = Number(option(args, '--chunk-mib', '64')) * MiB;
  const bufferBytes = args.includes('--buffer-mib') ? Number(option(args, '--buffer-mib', '8')) * MiB : undefined;
  const buffers = args.includes('--buffers') ? Number(option(args, '--buffers', '4')) : undefined;
  const startedAt = new Date().toISOString();
  const dir = mkdtempSync(join(root, 'offshoot-copybench-'));
  const notes: string[] = [];
  try {
    const src = await makeImage(dir, sizeBytes, dataBytesWanted, layout);
    const dst = join(dir, 'copy.qcow2');
    const st = statSync(src);
    const dataBytes = st.blocks * 512; // bytes the copy has to move (allocated in the file)
    notes.push(`source: ${layout} qcow2, file ${(st.size / GiB).toFixed(2)} GiB apparent, ${(dataBytes / GiB).toFixed(2)} GiB allocated; throughput = allocated bytes / time`);
    const bundle = await copyWorkerBundle(); // the worker as a copy job runs it
    const tools: Record<string, () => Promise<unknown>> = {
      offshoot: () => copyFile({ source: src, target: dst, chunkBytes, bufferBytes, buffers }),
      'offshoot worker': () => {
        const { command, args: argv } = copyWorkerCommand({ source: src, target: dst, chunkMiB: chunkBytes / MiB, ...(bufferBytes ? { bufferMiB: bufferBytes / MiB } : {}), ...(buffers ? { buffers } : {}) }, bundle);
        return run(command, argv);
      },
      cp: () => run('cp', ['--sparse=always', src, dst]),
      'cp+fsync': async () => {
        await run('cp', ['--sparse=always', src, dst]);
        await run('sync', [dst]);
      },
      // The same guarantee as the engine's: durable, then every byte read back
      // from the device (O_DIRECT, past the page cache) to be checked.
      'cp+fsync+read-back': async () => {
        await run('cp', ['--sparse=always', src, dst]);
        await run('sync', [dst]);
        await run('dd', [`if=${dst}`, 'of=/dev/null', 'bs=8M', 'iflag=direct', 'status=none']);
      },
      'qemu-img convert': () => run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', src, dst]),
      'qemu-img convert+fsync': async () => {
        await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', src, dst]);
        await run('sync', [dst]);
      },
    };
    const cold = !args.includes('--no-cold') && (await dropCaches());
    if (!cold) notes.push('cold cache runs skipped (needs root, or --no-cold given)');
    const modes = cold ? ['warm', 'cold'] : ['warm'];
    const ms: Record<string, number[]> = {};
    let hash = '';
    // The disk and page cache of this machine are shared and noisy: tools are
    // interleaved, in a rotated order each run, and medians compared.
    const entries = Object.entries(tools);
    for (let r = 0; r < runs; r++) {
      for (const mode of modes) {
        for (const [name, fn] of [...entries.slice(r % entries.length), ...entries.slice(0, r % entries.length)]) {
          rmSync(dst, { force: true });
          await run('sync', []);
          if (mode === 'cold') await dropCaches();
          else await run('cat', [src]).catch(() => {}); // warm: the source in the page cache
          const t = await timed(fn);
          (ms[`${mode} ${name}`] ??= []).push(t);
          if (name === 'offshoot' && r === 0 && mode === 'warm') hash = await fileContentHash(dst, { chunkBytes });
        }
      }
    }
    notes.push(`copy content hash ${hash}`);
    const series = (key: string, label: string, unit: 'ms' | 'GB/s'): Series => ({
      label,
      unit,
      samples: (ms[key] ?? []).map((t) => (unit === 'ms' ? t : dataBytes / 1e9 / (t / 1000))),
    });
    const comparisons: Comparison[] = [];
    const median = (key: string) => {
      const v = [...(ms[key] ?? [])].sort((a, b) => a - b);
      return v[Math.floor(v.length / 2)] ?? Infinity;
    };
    for (const mode of modes) {
      // The goal's baseline: the faster durable tool of this mode.
      const best = median(`${mode} cp+fsync`) <= median(`${mode} qemu-img convert+fsync`) ? 'cp+fsync' : 'qemu-img convert+fsync';
      for (const who of ['offshoot', 'offshoot worker']) {
        comparisons.push({ metric: `${mode} throughput vs the faster durable tool`, offshoot: series(`${mode} ${who}`, who === 'offshoot' ? 'offshoot copy' : 'offshoot worker process', 'GB/s'), baseline: series(`${mode} ${best}`, best, 'GB/s') });
      }
      comparisons.push({ metric: `${mode} throughput vs a durable copy read back`, offshoot: series(`${mode} offshoot`, 'offshoot copy', 'GB/s'), baseline: series(`${mode} cp+fsync+read-back`, 'cp+fsync+read-back', 'GB/s') });
      for (const base of ['cp', 'cp+fsync', 'qemu-img convert', 'qemu-img convert+fsync']) {
        comparisons.push({ metric: `${mode} copy time`, offshoot: series(`${mode} offshoot`, 'offshoot copy', 'ms'), baseline: series(`${mode} ${base}`, base, 'ms') });
        comparisons.push({ metric: `${mode} throughput`, offshoot: series(`${mode} offshoot`, 'offshoot copy', 'GB/s'), baseline: series(`${mode} ${base}`, base, 'GB/s') });
      }
    }
    return {
      name: 'copy',
      startedAt,
      machine: { cpus: cpus().length, accel: 'n/a', qemu: await qemuVersion().catch(() => 'unknown'), node: process.version },
      parameters: { runs, dir: root, sizeBytes, dataBytes, layout, chunkBytes, bufferBytes: bufferBytes ?? 'default', buffers: buffers ?? 'default', load: loadavg() },
      comparisons,
      notes,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
