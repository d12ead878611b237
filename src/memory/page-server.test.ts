// The page server's scheduling rules, against a real checkpoint file and a
// real socket pair whose far end plays the QEMU destination: it decodes every
// page record it receives and sends page requests on the return path. (The
// real QEMU destination is exercised end to end in tests/e2e/checkpoint.test.ts;
// here the rules are checked exactly.) A faulted block comes whole, zero pages
// included, the requested page first; nothing but requested blocks before the
// VM runs; then the stored pages stream in the background; no page is ever
// sent twice; END and EOF come only after the VM runs; a corrupt block stops
// the stream with CHECKPOINT_CORRUPT and closes the connection; the VM
// running before the stream loop first waits still starts the background.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, createConnection } from 'node:net';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_BYTES, CheckpointReader, PAGE_BYTES, writeCheckpoint } from './checkpoint-format.ts';
import { MIG_CMD, RAM_FLAG, VM_SECTION, configurationSection, fileHeader } from './migration-stream.ts';
import { PostcopyPageServer } from './page-server.ts';
import type { SavedDeviceState } from './saved-device-state.ts';

const MEMORY = 8 * BLOCK_BYTES;
const DEVICES = Buffer.from('04000000030574696d657200000000000000020102037e00000003', 'hex');

/** Guest memory: blocks 0, 2, 5 half random (even pages), the others zero. */
function guestMemory(): Buffer {
  const m = Buffer.alloc(MEMORY);
  for (const b of [0, 2, 5]) for (let p = 0; p < 256; p += 2) randomBytes(PAGE_BYTES).copy(m, b * BLOCK_BYTES + p * PAGE_BYTES);
  return m;
}

const saved: SavedDeviceState = {
  machine: 'pc-q35-7.2',
  capabilities: ['x-ignore-shared'],
  ram: { id: 2, instanceId: 0, versionId: 4, blocks: [{ idstr: 'ram0', length: MEMORY }, { idstr: 'pc.rom', length: 0x1000 }] },
  pages: [{ block: 'pc.rom', offset: 0, data: Buffer.alloc(PAGE_BYTES, 9) }],
  devices: DEVICES,
};

interface Received {
  block: string;
  offset: number;
  zero: boolean;
  data?: Buffer;
}

/** The destination's side: decodes what the server writes (only what this test needs). */
class Destination {
  private buf = Buffer.alloc(0);
  readonly pages: Received[] = [];
  readonly commands: number[] = [];
  /** Index into `pages` at which each PART section started. */
  readonly sections: number[] = [];
  ended = false;
  private lastBlock = '';
  private waiting: Array<() => void> = [];

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.parse();
      for (const w of this.waiting.splice(0)) w();
    });
  }

  private prefixDone = false;

  private parse(): void {
    let p = 0;
    const need = (n: number) => this.buf.length - p >= n;
    if (!this.prefixDone) {
      const prefix = Buffer.concat([fileHeader(), configurationSection(saved.machine)]);
      if (this.buf.length < prefix.length) return;
      expect(this.buf.subarray(0, prefix.length).equals(prefix)).toBe(true);
      this.prefixDone = true;
      p = prefix.length;
    }
    for (;;) {
      const start = p;
      if (!need(1)) break;
      const type = this.buf.readUInt8(p);
      if (type === VM_SECTION.COMMAND) {
        if (!need(5)) break;
        const cmd = this.buf.readUInt16BE(p + 1);
        const len = this.buf.readUInt16BE(p + 3);
        let total = 5 + len;
        if (cmd === MIG_CMD.PACKAGED) total += this.buf.readUInt32BE(p + 5);
        if (!need(total)) break;
        this.commands.push(cmd);
        p += total;
      } else if (type === VM_SECTION.START) {
        const idLen = this.buf.readUInt8(p + 5);
        const body = p + 6 + idLen + 8;
        const end = this.buf.indexOf(Buffer.from('00000000000000107e00000002', 'hex'), body);
        if (end < 0) break;
        p = end + 13;
      } else if (type === VM_SECTION.PART || type === VM_SECTION.END) {
        const pages: Received[] = [];
        let q = p + 5;
        let ok = true;
        for (;;) {
          if (this.buf.length - q < 8) {
            ok = false;
            break;
          }
          const v = this.buf.readBigUInt64BE(q);
          q += 8;
          const flags = Number(v & 0xfffn);
          const offset = Number(v & ~0xfffn);
          if (flags === RAM_FLAG.EOS) break;
          if (!(flags & RAM_FLAG.CONTINUE)) {
            const n = this.buf.readUInt8(q);
            this.lastBlock = this.buf.toString('latin1', q + 1, q + 1 + n);
            q += 1 + n;
          }
          const size = flags & RAM_FLAG.PAGE ? PAGE_BYTES : 1;
          if (this.buf.length - q < size) {
            ok = false;
            break;
          }
          pages.push({ block: this.lastBlock, offset, zero: !(flags & RAM_FLAG.PAGE), ...(flags & RAM_FLAG.PAGE ? { data: Buffer.from(this.buf.subarray(q, q + size)) } : {}) });
          q += size;
        }
        if (!ok || this.buf.length - q < 5) {
          p = start;
          break;
        }
        q += 5;
        if (type === VM_SECTION.PART) {
          this.sections.push(this.pages.length);
          this.pages.push(...pages);
        } else {
          if (this.buf.length - q < 1) {
            p = start;
            break;
          }
          expect(this.buf.readUInt8(q)).toBe(VM_SECTION.EOF);
          q += 1;
          this.ended = true;
        }
        p = q;
      } else {
        throw new Error(`unexpected byte ${type}`);
      }
    }
    this.buf = this.buf.subarray(p);
  }

  /** Waits until `check` holds after some data arrived. */
  async until(check: () => boolean): Promise<void> {
    while (!check()) await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  request(offset: number, block = 'ram0'): void {
    const name = Buffer.from(block);
    const msg = Buffer.alloc(4 + 13 + name.length);
    msg.writeUInt16BE(3, 0);
    msg.writeUInt16BE(13 + name.length, 2);
    msg.writeBigUInt64BE(BigInt(offset), 4);
    msg.writeUInt32BE(PAGE_BYTES, 12);
    msg.writeUInt8(name.length, 16);
    name.copy(msg, 17);
    this.socket.write(msg);
  }

  shut(): void {
    this.socket.write(Buffer.from('0001000400000000', 'hex'));
  }
}

async function socketPair(dir: string): Promise<[Socket, Socket]> {
  const path = join(dir, `s-${Math.random().toString(16).slice(2)}.sock`);
  const accepted = new Promise<Socket>((resolve) => {
    const server = createServer((s) => {
      server.close();
      resolve(s);
    });
    server.listen(path);
  });
  await new Promise((r) => setTimeout(r, 20));
  const client = createConnection(path);
  return [client, await accepted];
}

describe('PostcopyPageServer', () => {
  let dir: string;
  let memory: Buffer;
  let file: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'osh-pages-'));
    memory = guestMemory();
    file = join(dir, 'ck');
    await writeCheckpoint(file, { memoryBytes: MEMORY, readBlock: async (i, into) => memory.copy(into, 0, i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES), metadata: {}, deviceState: Buffer.alloc(16) });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('serves faults first with whole blocks, streams the rest after the VM runs, never sends a page twice', async () => {
    const reader = await CheckpointReader.open(file);
    const [ours, theirs] = await socketPair(dir);
    const dest = new Destination(theirs);
    const server = new PostcopyPageServer(ours, reader, saved);
    const served = server.serve();
    await dest.until(() => dest.commands.includes(MIG_CMD.PACKAGED));
    expect(dest.commands).toEqual([MIG_CMD.OPEN_RETURN_PATH, MIG_CMD.PING, MIG_CMD.POSTCOPY_ADVISE, MIG_CMD.POSTCOPY_RAM_DISCARD, MIG_CMD.PACKAGED]);
    // Before the package: the small block's page, precopy. Nothing of guest RAM yet.
    expect(dest.pages.map((p) => p.block)).toEqual(['pc.rom']);

    // A fault in block 2 (a zero page: odd) before the VM runs: block 2 comes whole, the requested page first.
    dest.request(2 * BLOCK_BYTES + 7 * PAGE_BYTES);
    await dest.until(() => dest.pages.length >= 1 + 256);
    await new Promise((r) => setTimeout(r, 100));
    const block2 = dest.pages.slice(1);
    expect(block2.length).toBe(256);
    expect(block2[0]).toMatchObject({ offset: 2 * BLOCK_BYTES + 7 * PAGE_BYTES, zero: true });
    expect(new Set(block2.map((p) => p.offset)).size).toBe(256);
    for (const p of block2) {
      const expected = memory.subarray(p.offset, p.offset + PAGE_BYTES);
      if (p.zero) expect(expected.equals(Buffer.alloc(PAGE_BYTES))).toBe(true);
      else expect(p.data?.equals(expected)).toBe(true);
    }
    // No background before the VM runs, and no end.
    expect(dest.pages.length).toBe(257);
    expect(dest.ended).toBe(false);

    // A request for a page already sent is ignored; the VM runs; the background streams every other stored page once.
    dest.request(2 * BLOCK_BYTES);
    server.vmRunning();
    await dest.until(() => dest.ended);
    const ram = dest.pages.filter((p) => p.block === 'ram0');
    const offsets = ram.map((p) => p.offset);
    expect(new Set(offsets).size).toBe(offsets.length);
    const stored = new Set<number>();
    for (let o = 0; o < MEMORY; o += PAGE_BYTES) if (!memory.subarray(o, o + PAGE_BYTES).equals(Buffer.alloc(PAGE_BYTES))) stored.add(o);
    for (const o of stored) expect(offsets).toContain(o);
    // Zero pages only for the faulted block.
    expect(ram.filter((p) => p.zero).every((p) => Math.floor(p.offset / BLOCK_BYTES) === 2)).toBe(true);
    for (const p of ram.filter((q) => !q.zero)) expect(p.data?.equals(memory.subarray(p.offset, p.offset + PAGE_BYTES))).toBe(true);
    dest.shut();
    const stats = await served;
    expect(stats).toMatchObject({ requests: 2, faultBlocks: 1, backgroundBlocks: 7 });
    ours.destroy();
    theirs.destroy();
    await reader.close();
  });

  it('streams everything when the VM runs before the stream loop first waits (no page request needed)', async () => {
    // vmRunning() before serve() reaches its loop: the background stream must start anyway (before
    // ed5af4e it waited for a wake-up that only a page request would have given).
    const reader = await CheckpointReader.open(file);
    const [ours, theirs] = await socketPair(dir);
    const dest = new Destination(theirs);
    const server = new PostcopyPageServer(ours, reader, saved);
    const served = server.serve();
    server.vmRunning();
    await Promise.race([dest.until(() => dest.ended), new Promise((r) => setTimeout(r, 3000))]);
    expect(dest.ended).toBe(true);
    const ram = dest.pages.filter((p) => p.block === 'ram0');
    expect(ram.every((p) => !p.zero)).toBe(true);
    expect(ram.length).toBe(3 * 128);
    for (const p of ram) expect(p.data?.equals(memory.subarray(p.offset, p.offset + PAGE_BYTES))).toBe(true);
    dest.shut();
    expect(await served).toMatchObject({ requests: 0, faultBlocks: 0 });
    ours.destroy();
    theirs.destroy();
    await reader.close();
  });

  it('stops with CHECKPOINT_CORRUPT and closes the connection when a block fails its checksum', async () => {
    const bad = join(dir, 'bad');
    const bytes = readFileSync(file);
    bytes[70] = (bytes[70] as number) ^ 0xff; // inside block 0's stored bytes
    writeFileSync(bad, bytes);
    const reader = await CheckpointReader.open(bad);
    const [ours, theirs] = await socketPair(dir);
    const dest = new Destination(theirs);
    const closed = new Promise((resolve) => theirs.on('close', resolve));
    const server = new PostcopyPageServer(ours, reader, saved);
    const served = server.serve();
    await dest.until(() => dest.commands.includes(MIG_CMD.PACKAGED));
    dest.request(0);
    await expect(served).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', part: 'block 0' });
    await closed;
    await reader.close();
  });

  it('refuses a device state whose guest RAM block does not match the checkpoint', async () => {
    const reader = await CheckpointReader.open(file);
    const [ours, theirs] = await socketPair(dir);
    expect(() => new PostcopyPageServer(ours, reader, { ...saved, ram: { ...saved.ram, blocks: [{ idstr: 'ram0', length: MEMORY * 2 }] } })).toThrow(/holds/);
    ours.destroy();
    theirs.destroy();
    await reader.close();
  });
});
