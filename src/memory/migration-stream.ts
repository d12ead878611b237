// Encoder for the parts of QEMU's migration stream that a lazy restore sends
// (QEMU 7.2, migration/savevm.c and migration/ram.c). Offshoot plays the
// migration *source*: these are the bytes a real source would write. All
// integers are big-endian.
//
//   file header        "QEVM" be32 3
//   configuration      0x07 be32 len, machine type (no subsections: the saved
//                      file's capabilities subsection names x-ignore-shared,
//                      which the lazy destination does not have)
//   command            0x08 be16 cmd be16 len data
//                        1 OPEN_RETURN_PATH, 2 PING (be32), 3 POSTCOPY_ADVISE
//                        (be64 page-size summary, be64 target page size),
//                        4 LISTEN, 5 RUN, 6 POSTCOPY_RAM_DISCARD (u8 version 0,
//                        u8 len + idstr + NUL, then be64 start, be64 length
//                        pairs in bytes), 7 PACKAGED (be32 length, then that
//                        many bytes of stream, loaded as a whole)
//   section start/full 0x01/0x04 be32 section id, u8 len idstr, be32 instance,
//                      be32 version, data, footer
//   section part/end   0x02/0x03 be32 section id, data, footer
//   footer             0x7e be32 section id
//   end of stream      0x00
//
// RAM section data is a list of records, each a be64 of offset | flags:
//   MEM_SIZE 0x04: offset field = total bytes; then per block u8 len, idstr,
//                  be64 used length (setup only)
//   ZERO 0x02 + u8 fill byte, PAGE 0x08 + 4096 bytes; unless CONTINUE 0x20 is
//                  set, the block's u8 len + idstr follows the be64
//   EOS 0x10 ends the section's data
// Only what Offshoot needs is here: no compression, XBZRLE or multifd.
export const QEMU_VM_FILE_MAGIC = 0x5145564d;
export const QEMU_VM_FILE_VERSION = 3;
export const TARGET_PAGE_BYTES = 4096;

export const VM_SECTION = { EOF: 0x00, START: 0x01, PART: 0x02, END: 0x03, FULL: 0x04, SUBSECTION: 0x05, VMDESCRIPTION: 0x06, CONFIGURATION: 0x07, COMMAND: 0x08, FOOTER: 0x7e } as const;
export const MIG_CMD = { OPEN_RETURN_PATH: 1, PING: 2, POSTCOPY_ADVISE: 3, POSTCOPY_LISTEN: 4, POSTCOPY_RUN: 5, POSTCOPY_RAM_DISCARD: 6, PACKAGED: 7 } as const;
export const RAM_FLAG = { ZERO: 0x02, MEM_SIZE: 0x04, PAGE: 0x08, EOS: 0x10, CONTINUE: 0x20 } as const;
/** The low bits of a RAM record's be64 that carry flags (offsets are page aligned). */
export const RAM_FLAG_MASK = TARGET_PAGE_BYTES - 1;

export interface RamBlockInfo {
  idstr: string;
  /** used_length in bytes. */
  length: number;
}

/** An appending big-endian byte writer. */
export class StreamWriter {
  private buf: Buffer;
  private used = 0;

  constructor(initialBytes = 4096) {
    this.buf = Buffer.allocUnsafe(Math.max(initialBytes, 16));
  }

  private room(n: number): void {
    if (this.used + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.used + n));
    this.buf.copy(next, 0, 0, this.used);
    this.buf = next;
  }

  u8(v: number): this {
    this.room(1);
    this.used = this.buf.writeUInt8(v, this.used);
    return this;
  }

  be16(v: number): this {
    this.room(2);
    this.used = this.buf.writeUInt16BE(v, this.used);
    return this;
  }

  be32(v: number): this {
    this.room(4);
    this.used = this.buf.writeUInt32BE(v >>> 0, this.used);
    return this;
  }

  be64(v: number | bigint): this {
    this.room(8);
    this.used = this.buf.writeBigUInt64BE(BigInt(v), this.used);
    return this;
  }

  bytes(data: Uint8Array): this {
    this.room(data.length);
    this.buf.set(data, this.used);
    this.used += data.length;
    return this;
  }

  /** A u8 length then the bytes (QEMU's idstr encoding, at most 255 bytes). */
  idstr(s: string): this {
    const b = Buffer.from(s, 'latin1');
    if (b.length > 255) throw new RangeError(`idstr "${s}" longer than 255 bytes`);
    return this.u8(b.length).bytes(b);
  }

  get length(): number {
    return this.used;
  }

  toBuffer(): Buffer {
    return this.buf.subarray(0, this.used);
  }
}

export function fileHeader(): Buffer {
  return new StreamWriter(8).be32(QEMU_VM_FILE_MAGIC).be32(QEMU_VM_FILE_VERSION).toBuffer();
}

/** The configuration record: the machine type (e.g. pc-q35-7.2) the destination must also run. */
export function configurationSection(machine: string): Buffer {
  const name = Buffer.from(machine, 'latin1');
  return new StreamWriter(5 + name.length).u8(VM_SECTION.CONFIGURATION).be32(name.length).bytes(name).toBuffer();
}

export function command(cmd: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  return new StreamWriter(5 + data.length).u8(VM_SECTION.COMMAND).be16(cmd).be16(data.length).bytes(data).toBuffer();
}

export function pingCommand(value: number): Buffer {
  return command(MIG_CMD.PING, new StreamWriter(4).be32(value).toBuffer());
}

/** POSTCOPY_ADVISE with RAM postcopy on: the OR of all RAM blocks' page sizes and the target page size; both must match the destination's. */
export function postcopyAdvise(pageSizeSummary = TARGET_PAGE_BYTES, targetPageBytes = TARGET_PAGE_BYTES): Buffer {
  return command(MIG_CMD.POSTCOPY_ADVISE, new StreamWriter(16).be64(pageSizeSummary).be64(targetPageBytes).toBuffer());
}

/**
 * POSTCOPY_RAM_DISCARD: ranges of `block` the destination must drop (at least one). A source sends it
 * before LISTEN even with nothing to drop: QEMU 7.2's LISTEN handler, when no discard came first,
 * runs the discard preparation itself and leaves the incoming state at DISCARD instead of LISTENING,
 * so its listen thread then loads pages with the precopy loader (a plain memcpy into the
 * userfaultfd-registered RAM) and hangs on its own page fault.
 */
export function postcopyRamDiscard(block: string, ranges: ReadonlyArray<{ start: number; length: number }>): Buffer {
  if (ranges.length === 0) throw new RangeError('a discard command needs at least one range');
  const w = new StreamWriter(3 + block.length + ranges.length * 16).u8(0).idstr(block).u8(0);
  for (const r of ranges) w.be64(r.start).be64(r.length);
  return command(MIG_CMD.POSTCOPY_RAM_DISCARD, w.toBuffer());
}

/** PACKAGED: the destination reads `inner` whole and loads it from memory, while its listen thread reads what follows. */
export function packaged(inner: Uint8Array): Buffer {
  return new StreamWriter(9 + inner.length).u8(VM_SECTION.COMMAND).be16(MIG_CMD.PACKAGED).be16(4).be32(inner.length).bytes(inner).toBuffer();
}

export function sectionStart(w: StreamWriter, type: 'start' | 'full', sectionId: number, idstr: string, instanceId: number, versionId: number): StreamWriter {
  return w.u8(type === 'start' ? VM_SECTION.START : VM_SECTION.FULL).be32(sectionId).idstr(idstr).be32(instanceId).be32(versionId);
}

export function sectionFooter(w: StreamWriter, sectionId: number): StreamWriter {
  return w.u8(VM_SECTION.FOOTER).be32(sectionId);
}

/** The RAM section's START: every block's name and used length (they must match the destination's), then EOS. */
export function ramSetupSection(section: { id: number; instanceId: number; versionId: number }, blocks: RamBlockInfo[]): Buffer {
  const w = new StreamWriter(64 + blocks.length * 72);
  sectionStart(w, 'start', section.id, 'ram', section.instanceId, section.versionId);
  const total = blocks.reduce((n, b) => n + b.length, 0);
  w.be64(BigInt(total) | BigInt(RAM_FLAG.MEM_SIZE));
  for (const b of blocks) w.idstr(b.idstr).be64(b.length);
  w.be64(RAM_FLAG.EOS);
  return sectionFooter(w, section.id).toBuffer();
}

/** One page for a RAM section: `data` (TARGET_PAGE_BYTES) or null for a zero page. */
export interface RamPage {
  block: string;
  offset: number;
  data: Uint8Array | null;
}

/** Bytes ramPagesSection / ramPagesSectionInto need for `pages`. */
export function ramPagesSectionBytes(pages: readonly RamPage[]): number {
  let bytes = 5 + 8 + 5;
  let last: string | undefined;
  for (const p of pages) {
    bytes += 8 + (p.block === last ? 0 : 1 + Buffer.byteLength(p.block, 'latin1')) + (p.data ? TARGET_PAGE_BYTES : 1);
    last = p.block;
  }
  return bytes;
}

/**
 * A RAM PART (or END) section holding `pages`: the block name is written when it differs from the
 * previous page's, CONTINUE otherwise; zero pages as ZERO + fill byte 0; EOS and the footer last.
 */
export function ramPagesSection(sectionId: number, pages: readonly RamPage[], type: 'part' | 'end' = 'part'): Buffer {
  const buf = Buffer.allocUnsafe(ramPagesSectionBytes(pages));
  return buf.subarray(0, ramPagesSectionInto(buf, sectionId, pages, type));
}

/** ramPagesSection written into `into` (at least ramPagesSectionBytes long); returns the bytes written. */
export function ramPagesSectionInto(into: Buffer, sectionId: number, pages: readonly RamPage[], type: 'part' | 'end' = 'part'): number {
  let o = ramSectionHeader(into, sectionId, type);
  let last: string | undefined;
  for (const p of pages) {
    if (p.data && p.data.length !== TARGET_PAGE_BYTES) throw new RangeError(`a page is ${TARGET_PAGE_BYTES} bytes, not ${p.data.length}`);
    o = ramPageRecordHeader(into, o, p.offset, p.block === last ? null : Buffer.from(p.block, 'latin1'), p.data === null);
    last = p.block;
    if (p.data) {
      into.set(p.data, o);
      o += TARGET_PAGE_BYTES;
    } else {
      o = into.writeUInt8(0, o);
    }
  }
  return ramSectionFooter(into, o, sectionId);
}

/** The start of a RAM PART (or END) section: type byte and section id. Returns the next offset. */
export function ramSectionHeader(into: Buffer, sectionId: number, type: 'part' | 'end' = 'part'): number {
  const o = into.writeUInt8(type === 'part' ? VM_SECTION.PART : VM_SECTION.END, 0);
  return into.writeUInt32BE(sectionId >>> 0, o);
}

/**
 * One page record's be64 (offset | PAGE or ZERO, | CONTINUE unless `blockName` is given, which then
 * follows as u8 length + name); the page's data (or ZERO's fill byte) comes next. Returns the next offset.
 */
export function ramPageRecordHeader(into: Buffer, at: number, offset: number, blockName: Buffer | null, zero = false): number {
  if (offset % TARGET_PAGE_BYTES !== 0) throw new RangeError(`page offset ${offset} is not page aligned`);
  if (blockName && blockName.length > 255) throw new RangeError(`idstr "${blockName.toString('latin1')}" longer than 255 bytes`);
  const flags = (zero ? RAM_FLAG.ZERO : RAM_FLAG.PAGE) | (blockName ? 0 : RAM_FLAG.CONTINUE);
  // offset | flags as a be64, from two be32 halves (offsets stay below 2^53).
  let o = into.writeUInt32BE(Math.floor(offset / 2 ** 32), at);
  o = into.writeUInt32BE(((offset % 2 ** 32) | flags) >>> 0, o);
  if (blockName) {
    o = into.writeUInt8(blockName.length, o);
    o += blockName.copy(into, o);
  }
  return o;
}

/** EOS and the section footer after the last record. Returns the section's length. */
export function ramSectionFooter(into: Buffer, at: number, sectionId: number): number {
  let o = into.writeUInt32BE(0, at);
  o = into.writeUInt32BE(RAM_FLAG.EOS, o);
  o = into.writeUInt8(VM_SECTION.FOOTER, o);
  return into.writeUInt32BE(sectionId >>> 0, o);
}

/** The end of a postcopy stream: the RAM section's END (no pages) and the end-of-stream byte. */
export function streamEnd(ramSectionId: number): Buffer {
  return new StreamWriter(32).bytes(ramPagesSection(ramSectionId, [], 'end')).u8(VM_SECTION.EOF).toBuffer();
}
