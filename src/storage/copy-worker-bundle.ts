// The copy worker as one pre-bundled ES module, so that a copy job's worker
// process starts in about 0.25 s instead of the 0.75–0.9 s it takes under the
// tsx loader (measured at load 7: most of it is tsx itself and loading the
// common layer's modules one by one). A full clone spawns one worker per file,
// so this start-up was most of the gap between a clone through the daemon and
// the copy engine alone (issue 16).
//
// Built once per process, on first use, with esbuild (tsx's own transpiler),
// into node_modules/.cache/offshoot/copy-worker-<sha256>.mjs: inside the
// project so that its package imports (zod, @node-rs/xxhash) resolve as the
// sources' do; named by its content so that processes built from other
// sources never share one, and written to a temporary name then renamed so
// that concurrent builders never see half a file. When the build fails the
// worker runs under tsx as before (`copyWorkerBundle()` resolves undefined and
// `copyWorkerBundleError()` says why).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';
import { COPY_WORKER_SCRIPT } from './copy-worker-protocol.ts';

const CACHE_DIR = join(import.meta.dirname, '..', '..', 'node_modules', '.cache', 'offshoot');

let bundle: Promise<string | undefined> | undefined;
let failure: unknown;

/** The path of the bundled worker (built on the first call), or undefined when it cannot be built. */
export function copyWorkerBundle(): Promise<string | undefined> {
  bundle ??= buildBundle().catch((err: unknown) => {
    failure = err;
    return undefined;
  });
  return bundle;
}

/** Why the bundle could not be built, once `copyWorkerBundle()` resolved undefined. */
export function copyWorkerBundleError(): unknown {
  return failure;
}

async function buildBundle(): Promise<string> {
  const out = await build({
    entryPoints: [COPY_WORKER_SCRIPT],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    write: false,
    logLevel: 'silent',
  });
  const code = out.outputFiles[0]?.contents;
  if (!code) throw new Error('esbuild produced no output for the copy worker');
  const file = join(CACHE_DIR, `copy-worker-${createHash('sha256').update(code).digest('hex').slice(0, 16)}.mjs`);
  if (!existsSync(file)) {
    mkdirSync(CACHE_DIR, { recursive: true });
    const temp = `${file}.${process.pid}.tmp`;
    writeFileSync(temp, code, { mode: 0o644 });
    renameSync(temp, file);
  }
  return file;
}
