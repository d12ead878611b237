// Async wrappers over `qemu-img` (create, info, check, convert, rebase) with
// typed results parsed from `--output=json` and one typed error carrying the
// arguments and stderr of the failed call.
//
// Backing paths are written into the image as given; a relative backing path
// is resolved by QEMU relative to the directory of the image that names it.
import { spawn } from 'node:child_process';
import { access } from 'node:fs/promises';
import { AlreadyExistsError, InvalidInputError, OffshootError } from '../common/index.ts';

export const DEFAULT_QEMU_IMG_BINARY = 'qemu-img';

export type ImageFormat = 'qcow2' | 'raw';

/** A qemu-img call failed (non-zero exit it does not document as a result, or unparsable output). */
export class QemuImgError extends OffshootError {
  readonly args: readonly string[];
  readonly stderr: string;
  readonly exitCode: number | null;
  constructor(args: readonly string[], exitCode: number | null, stderr: string, reason?: string, cause?: unknown) {
    const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
    const what = reason ?? (lines.length > 0 ? lines.slice(-3).join(' | ') : `exit code ${exitCode}`);
    super('QEMU_IMG_FAILED', `qemu-img ${args[0] ?? ''} failed: ${what}`, { args, exitCode, stderr }, 500, { cause });
    this.args = args;
    this.stderr = stderr;
    this.exitCode = exitCode;
  }
}

export interface QemuImgCallOptions {
  /** Default "qemu-img" from PATH. */
  binary?: string;
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs qemu-img; exit codes other than `okCodes` throw QemuImgError. */
async function runQemuImg(args: string[], options: QemuImgCallOptions = {}, okCodes: readonly number[] = [0]): Promise<RunResult> {
  const binary = options.binary ?? DEFAULT_QEMU_IMG_BINARY;
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.once('error', (e) => reject(new QemuImgError(args, null, '', `cannot run ${binary} (${e.message})`, e)));
    child.once('close', (code, signal) => {
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code !== null && okCodes.includes(code)) resolve({ code, stdout, stderr });
      else reject(new QemuImgError(args, code, stderr, signal ? `killed by ${signal}` : undefined));
    });
  });
}

function parseJson(args: string[], stdout: string, stderr: string): unknown {
  try {
    return JSON.parse(stdout);
  } catch (e) {
    throw new QemuImgError(args, 0, stderr, `unparsable JSON output: ${stdout.slice(0, 200)}`, e);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

// ---- create ------------------------------------------------------------------

export interface CreateImageOptions extends QemuImgCallOptions {
  path: string;
  format: ImageFormat;
  /** Virtual size; optional with a backing image (then it is the backing image's size). */
  sizeBytes?: number;
  /** qcow2 only: a copy-on-write overlay over this image. */
  backing?: { path: string; format: ImageFormat };
  /** qemu-img create silently replaces an existing file; this is refused unless true. */
  overwrite?: boolean;
  /** Do not open the backing image (-u): for a backing image in use by a running QEMU. Needs sizeBytes. */
  unsafeBacking?: boolean;
}

export async function createImage(options: CreateImageOptions): Promise<void> {
  const { path, format, sizeBytes, backing } = options;
  if (path.length === 0) throw new InvalidInputError('image path must not be empty', { field: 'path' });
  if (format !== 'qcow2' && format !== 'raw') throw new InvalidInputError(`image format must be qcow2 or raw, not ${String(format)}`, { field: 'format', format });
  if (sizeBytes !== undefined && (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0)) {
    throw new InvalidInputError(`sizeBytes must be a positive integer, not ${sizeBytes}`, { field: 'sizeBytes', sizeBytes });
  }
  if (backing !== undefined && format !== 'qcow2') throw new InvalidInputError('only a qcow2 image can have a backing image', { field: 'backing', format });
  if (backing === undefined && sizeBytes === undefined) throw new InvalidInputError('sizeBytes is required without a backing image', { field: 'sizeBytes' });
  if (options.overwrite !== true && (await exists(path))) throw new AlreadyExistsError('image', path);

  if (options.unsafeBacking && (backing === undefined || sizeBytes === undefined)) throw new InvalidInputError('unsafeBacking needs a backing image and sizeBytes', { field: 'unsafeBacking' });
  const args = ['create', '-q', '-f', format];
  if (backing !== undefined) args.push('-b', backing.path, '-F', backing.format);
  if (options.unsafeBacking) args.push('-u');
  args.push(path);
  if (sizeBytes !== undefined) args.push(String(sizeBytes));
  await runQemuImg(args, options);
}

// ---- info --------------------------------------------------------------------

export interface ImageInfo {
  filename: string;
  /** "qcow2", "raw", or any other format qemu-img recognises. */
  format: string;
  virtualSize: number;
  /** Bytes allocated on the host file system. */
  actualSize?: number;
  clusterSize?: number;
  dirty: boolean;
  /** The backing path as written in the image. */
  backingFilename?: string;
  /** The backing path resolved against the image's directory. */
  fullBackingFilename?: string;
  backingFormat?: string;
  /** With `backingChain`: the backing images below this one, nearest first. */
  backingChain?: ImageInfo[];
  /** qemu-img's object as printed. */
  raw: Record<string, unknown>;
}

function toImageInfo(raw: Record<string, unknown>): ImageInfo {
  const str = (k: string): string | undefined => (typeof raw[k] === 'string' ? (raw[k] as string) : undefined);
  const num = (k: string): number | undefined => (typeof raw[k] === 'number' ? (raw[k] as number) : undefined);
  return {
    filename: str('filename') ?? '',
    format: str('format') ?? 'unknown',
    virtualSize: num('virtual-size') ?? 0,
    actualSize: num('actual-size'),
    clusterSize: num('cluster-size'),
    dirty: raw['dirty-flag'] === true,
    backingFilename: str('backing-filename'),
    fullBackingFilename: str('full-backing-filename'),
    backingFormat: str('backing-filename-format'),
    raw,
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * `qemu-img info -U --output=json`: works on images a running QEMU holds
 * (force-share), so the numbers may be a moment old for an image in use.
 */
export async function imageInfo(path: string, options: QemuImgCallOptions & { backingChain?: boolean } = {}): Promise<ImageInfo> {
  const args = ['info', '-U', '--output=json'];
  if (options.backingChain === true) args.push('--backing-chain');
  args.push(path);
  const { stdout, stderr } = await runQemuImg(args, options);
  const parsed = parseJson(args, stdout, stderr);
  const list = options.backingChain === true ? parsed : [parsed];
  if (!Array.isArray(list) || list.length === 0 || !list.every(isRecord)) throw new QemuImgError(args, 0, stderr, 'unexpected JSON shape');
  const [top, ...below] = list.map(toImageInfo) as [ImageInfo, ...ImageInfo[]];
  if (options.backingChain === true) top.backingChain = below;
  return top;
}

// ---- check -------------------------------------------------------------------

export interface ImageCheck {
  /** No corruptions and no check errors. Leaked clusters only waste space and do not clear `ok`. */
  ok: boolean;
  /** false when the format has no consistency checks (e.g. raw); then `ok` is true. */
  supported: boolean;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  /** qemu-img's object as printed (empty when unsupported). */
  raw: Record<string, unknown>;
}

/**
 * `qemu-img check --output=json`. Exit codes 2 (corruptions) and 3 (leaks)
 * are results, not failures. An image in use is locked by its QEMU: pass
 * `forceShare` to check it anyway (the result may then show transient leaks).
 */
export async function checkImage(path: string, options: QemuImgCallOptions & { forceShare?: boolean } = {}): Promise<ImageCheck> {
  const args = ['check', '--output=json'];
  if (options.forceShare === true) args.push('-U');
  args.push(path);
  const { code, stdout, stderr } = await runQemuImg(args, options, [0, 2, 3, 63]);
  if (code === 63) return { ok: true, supported: false, corruptions: 0, leaks: 0, checkErrors: 0, raw: {} };
  const raw = parseJson(args, stdout, stderr);
  if (!isRecord(raw)) throw new QemuImgError(args, code, stderr, 'unexpected JSON shape');
  const count = (k: string): number => (typeof raw[k] === 'number' ? (raw[k] as number) : 0);
  const corruptions = count('corruptions');
  const checkErrors = count('check-errors');
  return { ok: corruptions === 0 && checkErrors === 0, supported: true, corruptions, leaks: count('leaks'), checkErrors, raw };
}

// ---- map, resize ------------------------------------------------------------------

/** One entry of `qemu-img map --output=json`. */
export interface ImageMapEntry {
  start: number;
  length: number;
  depth: number;
  data: boolean;
  zero: boolean;
}

function isMapEntry(v: unknown): v is ImageMapEntry {
  const e = v as Partial<ImageMapEntry> | null;
  return typeof e === 'object' && e !== null && typeof e.start === 'number' && typeof e.length === 'number' && typeof e.data === 'boolean';
}

/**
 * `qemu-img map --output=json`: the allocation of the image's guest view. With `format: 'raw'`
 * on any file, the file's own layout on the host (SEEK_DATA/SEEK_HOLE extents).
 */
export async function mapImage(path: string, options: QemuImgCallOptions & { format?: ImageFormat } = {}): Promise<ImageMapEntry[]> {
  const args = ['map', '--output=json'];
  if (options.format !== undefined) args.push('-f', options.format);
  args.push(path);
  const { stdout, stderr } = await runQemuImg(args, options);
  const parsed = parseJson(args, stdout, stderr);
  if (!Array.isArray(parsed) || !parsed.every(isMapEntry)) throw new QemuImgError(args, 0, stderr, 'unexpected map output');
  return parsed;
}

/** Grows (or shrinks, with qemu-img's own checks) an image to `sizeBytes`. */
export async function resizeImage(path: string, sizeBytes: number, options: QemuImgCallOptions = {}): Promise<void> {
  await runQemuImg(['resize', '-q', path, String(sizeBytes)], options);
}

// ---- convert, rebase ------------------------------------------------------------

export interface ConvertImageOptions extends QemuImgCallOptions {
  outFormat: ImageFormat;
  /** Detected by qemu-img when omitted. */
  inFormat?: ImageFormat;
  /** Read an image a running QEMU holds (a crash-consistent copy at best). */
  forceShare?: boolean;
  /** qcow2 compressed clusters. */
  compress?: boolean;
  /** Replaces an existing destination only if true. */
  overwrite?: boolean;
}

/** Copies `src` (with its whole backing chain flattened) into a new standalone image `dst`. */
export async function convertImage(src: string, dst: string, options: ConvertImageOptions): Promise<void> {
  if (options.outFormat !== 'qcow2' && options.outFormat !== 'raw') throw new InvalidInputError(`outFormat must be qcow2 or raw, not ${String(options.outFormat)}`, { field: 'outFormat' });
  if (options.compress === true && options.outFormat !== 'qcow2') throw new InvalidInputError('only qcow2 output can be compressed', { field: 'compress' });
  if (options.overwrite !== true && (await exists(dst))) throw new AlreadyExistsError('image', dst);
  const args = ['convert', '-q'];
  if (options.forceShare === true) args.push('-U');
  if (options.inFormat !== undefined) args.push('-f', options.inFormat);
  args.push('-O', options.outFormat);
  if (options.compress === true) args.push('-c');
  args.push(src, dst);
  await runQemuImg(args, options);
}

/**
 * Points a qcow2 image at another backing image (null: none).
 * Safe mode (default) copies into the image every cluster in which the old
 * and new backing differ, so the guest-visible content stays the same; the
 * new backing must be readable. `unsafe` only rewrites the header: use it
 * when the backing file was moved or renamed, not changed.
 */
export async function rebaseImage(path: string, backing: { path: string; format: ImageFormat } | null, options: QemuImgCallOptions & { unsafe?: boolean } = {}): Promise<void> {
  const args = ['rebase', '-q', '-f', 'qcow2'];
  if (options.unsafe === true) args.push('-u');
  if (backing === null) args.push('-b', '');
  else args.push('-b', backing.path, '-F', backing.format);
  args.push(path);
  await runQemuImg(args, options);
}
