// Checks an image before it reaches QEMU: its real path and its whole backing
// chain must stay inside the allowed roots (the datastore), the chain must not
// loop or be deeper than a limit, every backing format must be declared (no
// probing) and match the file, and no external data file is allowed. The
// answer is the resolved chain; anything else is an UnsafeImageError.
import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join, sep } from 'node:path';
import { OffshootError } from '../common/index.ts';
import { isQcow2, readQcow2Header } from './qcow2-header.ts';

export type ImageFormat = 'qcow2' | 'raw';

export const UNSAFE_REASONS = ['not-found', 'outside-datastore', 'loop', 'too-deep', 'no-backing-format', 'format-mismatch', 'bad-backing-format', 'external-data-file'] as const;
export type UnsafeReason = (typeof UNSAFE_REASONS)[number];

export class UnsafeImageError extends OffshootError {
  readonly reason: UnsafeReason;
  constructor(path: string, reason: UnsafeReason, message: string, details: Record<string, unknown> = {}) {
    super('UNSAFE_IMAGE', `refusing image ${path}: ${message}`, { path, reason, ...details }, 400);
    this.reason = reason;
  }
}

export const DEFAULT_MAX_CHAIN_DEPTH = 16;

export interface SafeImage {
  path: string;
  format: ImageFormat;
  /** The backing chain below the image, nearest first. */
  chain: Array<{ path: string; format: ImageFormat }>;
}

function inside(path: string, roots: readonly string[]): boolean {
  return roots.some((root) => path === root || path.startsWith(root.endsWith(sep) ? root : root + sep));
}

async function resolveReal(top: string, path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch (err) {
    throw new UnsafeImageError(top, 'not-found', `${path} cannot be opened (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { file: path });
  }
}

export async function inspectImage(path: string, options: { allowedRoots: readonly string[]; maxDepth?: number; expectedFormat?: ImageFormat }): Promise<SafeImage> {
  const maxDepth = options.maxDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  const roots = await Promise.all(options.allowedRoots.map((r) => realpath(r).catch(() => r)));
  const top = await resolveReal(path, path);
  if (!inside(top, roots)) throw new UnsafeImageError(path, 'outside-datastore', `it resolves to ${top}, outside ${roots.join(', ')}`, { resolved: top });
  const topFormat: ImageFormat = (await isQcow2(top)) ? 'qcow2' : 'raw';
  if (options.expectedFormat && options.expectedFormat !== topFormat) {
    throw new UnsafeImageError(path, 'format-mismatch', `expected ${options.expectedFormat}, the file is ${topFormat}`, { expected: options.expectedFormat, actual: topFormat });
  }
  const chain: SafeImage['chain'] = [];
  const seen = new Set([top]);
  let current = top;
  let format = topFormat;
  while (format === 'qcow2') {
    const header = await readQcow2Header(current);
    if (header.externalDataFile !== null) throw new UnsafeImageError(path, 'external-data-file', `${current} uses an external data file (${header.externalDataFile})`, { file: current });
    if (header.backingFile === null) break;
    if (chain.length + 1 > maxDepth) throw new UnsafeImageError(path, 'too-deep', `its backing chain is deeper than ${maxDepth}`, { maxDepth });
    if (header.backingFormat === null) throw new UnsafeImageError(path, 'no-backing-format', `${current} names backing file ${header.backingFile} without its format (QEMU would probe it)`, { file: current });
    if (header.backingFormat !== 'qcow2' && header.backingFormat !== 'raw') {
      throw new UnsafeImageError(path, 'bad-backing-format', `${current} declares backing format ${header.backingFormat}; only qcow2 and raw are allowed`, { file: current, backingFormat: header.backingFormat });
    }
    if (/^[a-z][a-z0-9+.-]*:/i.test(header.backingFile) && !header.backingFile.startsWith('/')) {
      throw new UnsafeImageError(path, 'outside-datastore', `${current} names a protocol backing file ${header.backingFile}`, { file: current, backing: header.backingFile });
    }
    const named = isAbsolute(header.backingFile) ? header.backingFile : join(dirname(current), header.backingFile);
    const next = await resolveReal(path, named);
    if (!inside(next, roots)) throw new UnsafeImageError(path, 'outside-datastore', `${current} has backing file ${header.backingFile}, which resolves to ${next}, outside ${roots.join(', ')}`, { file: current, backing: header.backingFile, resolved: next });
    if (seen.has(next)) throw new UnsafeImageError(path, 'loop', `its backing chain loops at ${next}`, { file: next });
    seen.add(next);
    const actual: ImageFormat = (await isQcow2(next)) ? 'qcow2' : 'raw';
    if (actual !== header.backingFormat) {
      throw new UnsafeImageError(path, 'format-mismatch', `${current} declares its backing file ${next} as ${header.backingFormat}, but it is ${actual}`, { file: current, backing: next, declared: header.backingFormat, actual });
    }
    chain.push({ path: next, format: actual });
    current = next;
    format = actual;
  }
  return { path: top, format: topFormat, chain };
}
