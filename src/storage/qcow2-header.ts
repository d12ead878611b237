// A strict reader of the parts of a qcow2 header that decide which other files
// QEMU would open: the backing file name, the backing format (header extension
// 0xe2792aca), and an external data file (incompatible feature bit 2 and
// extension 0x44415441). Offshoot reads these itself before an image reaches
// QEMU, so a hostile file cannot make QEMU open some other file on the host.
//
//   offset  size  field (big-endian)
//   0       4     magic "QFI\xfb"
//   4       4     version (2 or 3)
//   8       8     backing_file_offset
//   16      4     backing_file_size
//   72      8     incompatible_features (v3)
//   100     4     header_length (v3; v2 headers are 72 bytes)
//   then header extensions: type u32, length u32, data padded to 8 bytes; type 0 ends them
import { open } from 'node:fs/promises';
import { OffshootError } from '../common/index.ts';

export const QCOW2_MAGIC = 0x514649fb;
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_DATA_FILE = 0x44415441;
const INCOMPAT_DATA_FILE = 1n << 2n;
/** QEMU's own limit on a backing file name. */
const MAX_BACKING_NAME = 1023;
const MAX_HEADER_BYTES = 64 * 1024;

export class CorruptImageHeaderError extends OffshootError {
  constructor(path: string, reason: string) {
    super('CORRUPT_IMAGE', `${path} is not a valid qcow2 image: ${reason}`, { path, reason }, 400);
  }
}

export interface Qcow2Header {
  version: number;
  /** The guest-visible size in bytes. */
  virtualSize: number;
  backingFile: string | null;
  backingFormat: string | null;
  externalDataFile: string | null;
}

/** The first 4 bytes say whether a file is qcow2. */
export async function isQcow2(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await handle.read(buf, 0, 4, 0);
    return bytesRead === 4 && buf.readUInt32BE(0) === QCOW2_MAGIC;
  } finally {
    await handle.close();
  }
}

export async function readQcow2Header(path: string): Promise<Qcow2Header> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(MAX_HEADER_BYTES);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    const buf = head.subarray(0, bytesRead);
    if (buf.length < 72) throw new CorruptImageHeaderError(path, `header truncated (${buf.length} bytes)`);
    if (buf.readUInt32BE(0) !== QCOW2_MAGIC) throw new CorruptImageHeaderError(path, 'bad magic');
    const version = buf.readUInt32BE(4);
    if (version !== 2 && version !== 3) throw new CorruptImageHeaderError(path, `unsupported version ${version}`);
    const backingOffset = buf.readBigUInt64BE(8);
    const backingSize = buf.readUInt32BE(16);
    const virtualSize = Number(buf.readBigUInt64BE(24));
    let headerLength = 72;
    let incompatible = 0n;
    if (version === 3) {
      if (buf.length < 104) throw new CorruptImageHeaderError(path, 'v3 header truncated');
      incompatible = buf.readBigUInt64BE(72);
      headerLength = buf.readUInt32BE(100);
      if (headerLength < 104 || headerLength > MAX_HEADER_BYTES) throw new CorruptImageHeaderError(path, `bad header length ${headerLength}`);
    }

    let backingFile: string | null = null;
    if (backingOffset !== 0n) {
      if (backingSize === 0 || backingSize > MAX_BACKING_NAME) throw new CorruptImageHeaderError(path, `bad backing file name size ${backingSize}`);
      const name = Buffer.alloc(backingSize);
      const read = await handle.read(name, 0, backingSize, Number(backingOffset));
      if (read.bytesRead !== backingSize) throw new CorruptImageHeaderError(path, 'backing file name beyond the end of the file');
      backingFile = name.toString('utf8');
      if (backingFile.includes('\0')) throw new CorruptImageHeaderError(path, 'backing file name has a NUL byte');
    }

    let backingFormat: string | null = null;
    let externalDataFile: string | null = null;
    let offset = headerLength;
    for (let count = 0; ; count++) {
      if (count > 64) throw new CorruptImageHeaderError(path, 'too many header extensions');
      if (offset + 8 > buf.length) throw new CorruptImageHeaderError(path, 'header extensions run past the header');
      const type = buf.readUInt32BE(offset);
      const length = buf.readUInt32BE(offset + 4);
      if (type === EXT_END) break;
      const start = offset + 8;
      if (start + length > buf.length) throw new CorruptImageHeaderError(path, `header extension 0x${type.toString(16)} runs past the header`);
      const data = buf.subarray(start, start + length);
      if (type === EXT_BACKING_FORMAT) backingFormat = data.toString('utf8');
      if (type === EXT_DATA_FILE) externalDataFile = data.toString('utf8');
      offset = start + Math.ceil(length / 8) * 8;
    }
    if (incompatible & INCOMPAT_DATA_FILE) externalDataFile ??= '(unnamed)';
    return { version, virtualSize, backingFile, backingFormat, externalDataFile };
  } finally {
    await handle.close();
  }
}

/**
 * True when a qcow2 image has no L2 table at all, i.e. nothing was ever written to it (QEMU
 * allocates L2 tables only on write). Read by Offshoot itself: it is on a clone's O(1) path.
 * An image whose writes were all discarded still counts as written (conservative).
 */
export async function qcow2NeverWritten(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(48);
    const { bytesRead } = await handle.read(head, 0, 48, 0);
    if (bytesRead < 48 || head.readUInt32BE(0) !== QCOW2_MAGIC) throw new CorruptImageHeaderError(path, 'not a qcow2 header');
    const l1Size = head.readUInt32BE(36);
    const l1Offset = Number(head.readBigUInt64BE(40));
    if (l1Size > 1 << 22) throw new CorruptImageHeaderError(path, `L1 table of ${l1Size} entries`);
    const l1 = Buffer.alloc(l1Size * 8);
    const read = await handle.read(l1, 0, l1.length, l1Offset);
    // A short read means the L1 table was never written past the end of the file: zeros.
    return l1.subarray(0, read.bytesRead).every((b) => b === 0);
  } finally {
    await handle.close();
  }
}
