// Parser of the device state a checkpoint stores: QEMU's own migration stream
// of the frozen VM, saved with x-ignore-shared (guest RAM, the shared
// memory-backend-file "ram0", is not in it). A lazy restore replays it
// through postcopy (see agent/lazy-restore.ts), so it needs the parts apart:
//
//   "QEVM" 3 | 0x07 configuration (machine type, capabilities subsection)
//   | RAM START (block list; with x-ignore-shared each block also has a be64
//     address) | RAM PART… END sections (the small blocks' pages: BIOS, ROMs,
//     ACPI tables) | device sections (FULL …) | 0x00 EOF
//   | 0x06 be32 len, JSON description (optional)
//
// The device sections are kept as bytes, unparsed (they are loaded verbatim).
// Anything unexpected is a CheckpointFormatError on the 'device state' part.
import { CheckpointFormatError } from './checkpoint-format.ts';
import { QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, RAM_FLAG, RAM_FLAG_MASK, TARGET_PAGE_BYTES, VM_SECTION } from './migration-stream.ts';
import type { RamBlockInfo, RamPage } from './migration-stream.ts';

export interface SavedDeviceState {
  machine: string;
  capabilities: string[];
  ram: { id: number; instanceId: number; versionId: number; blocks: RamBlockInfo[] };
  /** Pages of the blocks other than guest RAM, in stream order. */
  pages: RamPage[];
  /** The device sections, from the first non-RAM section to (not including) the EOF byte. */
  devices: Buffer;
}

class Cursor {
  pos = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly fail: (reason: string) => never,
  ) {}

  need(n: number): void {
    if (this.pos + n > this.buf.length) this.fail(`truncated at byte ${this.pos} (needs ${n} more)`);
  }
  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.pos++);
  }
  be32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  be64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  idstr(): string {
    return this.bytes(this.u8()).toString('latin1');
  }
  peek(): number {
    this.need(1);
    return this.buf.readUInt8(this.pos);
  }
}

/** Where the EOF byte is: before the trailing JSON description if there is one, else the last byte. */
function findEof(buf: Buffer): number {
  // The description is 0x06 be32 len JSON at the very end; look for the one whose length ends the file.
  for (let p = buf.length - 6; p >= 0 && p >= buf.length - 64 * 1024 * 1024; p--) {
    if (buf[p] === VM_SECTION.VMDESCRIPTION && buf[p - 1] === VM_SECTION.EOF && buf[p + 5] === 0x7b && p + 5 + buf.readUInt32BE(p + 1) === buf.length) return p - 1;
  }
  return buf[buf.length - 1] === VM_SECTION.EOF ? buf.length - 1 : -1;
}

export function parseSavedDeviceState(stream: Buffer, path = 'device state'): SavedDeviceState {
  const fail = (reason: string): never => {
    throw new CheckpointFormatError(path, 'device state', reason);
  };
  const c = new Cursor(stream, fail);
  if (c.be32() !== QEMU_VM_FILE_MAGIC) fail('not a QEMU migration stream (bad magic)');
  const version = c.be32();
  if (version !== QEMU_VM_FILE_VERSION) fail(`QEMU stream version ${version}, expected ${QEMU_VM_FILE_VERSION}`);
  if (c.u8() !== VM_SECTION.CONFIGURATION) fail('no configuration section');
  const machine = c.bytes(c.be32()).toString('latin1');
  const capabilities: string[] = [];
  while (c.peek() === VM_SECTION.SUBSECTION) {
    c.u8();
    const name = c.idstr();
    c.be32(); // subsection version
    if (name === 'configuration/capabilities') {
      const count = c.be32();
      for (let i = 0; i < count; i++) capabilities.push(c.idstr());
    } else if (name === 'configuration/target-page-bits') {
      const bits = c.be32();
      if (2 ** bits !== TARGET_PAGE_BYTES) fail(`target page bits ${bits}; Offshoot handles ${TARGET_PAGE_BYTES}-byte pages`);
    } else {
      fail(`unknown configuration subsection "${name}"`);
    }
  }

  const eof = findEof(stream);
  if (eof < 0) fail('no end-of-stream marker');
  let ram: SavedDeviceState['ram'] | undefined;
  const pages: RamPage[] = [];
  const lengths = new Map<string, number>();
  // RAM sections come first: START, then PART… and END, each of records ending in EOS.
  while (c.pos < eof) {
    const type = c.peek();
    if (type === VM_SECTION.START || type === VM_SECTION.FULL) {
      const at = c.pos;
      c.u8();
      const id = c.be32();
      const idstr = c.idstr();
      const instanceId = c.be32();
      const versionId = c.be32();
      if (idstr !== 'ram' || type !== VM_SECTION.START) {
        c.pos = at;
        break;
      }
      if (ram) fail('two RAM sections');
      const total = c.be64();
      if ((Number(total) & RAM_FLAG_MASK) !== RAM_FLAG.MEM_SIZE) fail('RAM section does not start with the block list');
      let left = Number(total & ~BigInt(RAM_FLAG_MASK));
      const blocks: RamBlockInfo[] = [];
      while (left > 0) {
        const name = c.idstr();
        const length = Number(c.be64());
        if (capabilities.includes('x-ignore-shared')) c.be64(); // the block's guest address
        if (length <= 0 || length > left) fail(`RAM block ${name} has length ${length}, more than the total left`);
        blocks.push({ idstr: name, length });
        lengths.set(name, length);
        left -= length;
      }
      if (c.be64() !== BigInt(RAM_FLAG.EOS)) fail('RAM block list not followed by EOS');
      ram = { id, instanceId, versionId, blocks };
    } else if (type === VM_SECTION.PART || type === VM_SECTION.END) {
      c.u8();
      const id = c.be32();
      if (!ram || id !== ram.id) fail(`section ${id} before the devices is not the RAM section`);
      let block: string | undefined;
      for (;;) {
        const v = c.be64();
        const flags = Number(v & BigInt(RAM_FLAG_MASK));
        const offset = Number(v & ~BigInt(RAM_FLAG_MASK));
        if (flags === RAM_FLAG.EOS) break;
        if (flags & ~(RAM_FLAG.ZERO | RAM_FLAG.PAGE | RAM_FLAG.CONTINUE)) fail(`RAM record flags 0x${flags.toString(16)} not supported`);
        if (!(flags & RAM_FLAG.CONTINUE)) block = c.idstr();
        if (block === undefined) fail('RAM record continues no block');
        const length = lengths.get(block as string);
        if (length === undefined) fail(`RAM record for unknown block ${block}`);
        if (offset + TARGET_PAGE_BYTES > (length as number)) fail(`RAM record at ${offset} past the end of ${block}`);
        if (flags & RAM_FLAG.PAGE) {
          pages.push({ block: block as string, offset, data: Buffer.from(c.bytes(TARGET_PAGE_BYTES)) });
        } else if (flags & RAM_FLAG.ZERO) {
          const fill = c.u8();
          pages.push({ block: block as string, offset, data: fill === 0 ? null : Buffer.alloc(TARGET_PAGE_BYTES, fill) });
        } else {
          fail(`RAM record without a page (flags 0x${flags.toString(16)})`);
        }
      }
    } else {
      fail(`unexpected section type 0x${type.toString(16)} at byte ${c.pos}`);
    }
    if (c.u8() !== VM_SECTION.FOOTER || c.be32() !== ram?.id) fail('RAM section footer missing or wrong');
  }
  if (!ram) fail('no RAM section');
  if (c.pos >= eof) fail('no device sections');
  return { machine, capabilities, ram: ram as SavedDeviceState['ram'], pages, devices: Buffer.from(stream.subarray(c.pos, eof)) };
}
