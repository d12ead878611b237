// The copy worker as one pre-bundled, minified ES module, so that a copy
// job's worker process starts quickly: 0.75–0.9 s under the tsx loader
// (measured at load 7: most of it is tsx itself and loading the common
// layer's modules one by one), about 0.2 s from a bundle that still loaded
// its packages from node_modules (zod alone is a hundred module files), and
// 0.13 s with the packages' JavaScript inside the bundle (median of 25 starts
// on a quiet machine; bare `node -e 0` took 0.08 s). A full clone spawns one
// worker per file, so this start-up is most of the gap between a clone
// through the daemon and the copy engine alone (issue 16).
//
// Built once per process, on first use, with esbuild (tsx's own transpiler),
// into node_modules/.cache/offshoot/copy-worker-<sha256>.mjs: inside the
// project so that what stays outside the bundle (the native binding of
// @node-rs/xxhash, which its loader finds with `require` at run time) resolves
// as the sources' imports do; named by its content so that processes built
// from other sources never share one, and written to a temporary name then
// renamed so that concurrent builders never see half a file. When the build
// fails the worker runs under tsx as before (`copyWorkerBundle()` resolves
// undefined and `copyWorkerBundleError()` says why).
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
    minify: true,
    // The packages' JavaScript goes in; their native binaries (.node files, one package per platform)
    // stay where they are, and the loaders' `require` calls for them need a real `require` in an ES module.
    external: ['*.node', '@node-rs/xxhash-*'],
    banner: { js: "import { createRequire as __offshootCreateRequire } from 'node:module'; const require = __offshootCreateRequire(import.meta.url);" },
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
