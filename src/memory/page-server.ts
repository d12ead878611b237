// The postcopy page server of a lazy restore: writes the migration stream a
// QEMU destination needs to run a checkpoint before its memory is loaded, then
// serves the guest's RAM ("ram0") from the checkpoint file page fault by page
// fault, and streams the rest in the background until every stored page has
// been sent.
//
// Stream, in order: header, configuration, OPEN_RETURN_PATH, PING 1,
// POSTCOPY_ADVISE (the destination discards its RAM, so nothing may come
// before it), RAM START (block list), one RAM PART with the small blocks'
// pages (BIOS, ROMs, ACPI: precopy, copied in place), a one-page
// POSTCOPY_RAM_DISCARD (required, see migration-stream.ts), PACKAGED { LISTEN
// (userfaultfd armed, a listen thread reads the rest of the stream), the
// device sections, RUN (the VM starts) }, then RAM PART sections of guest
// pages, END and EOF.
//
// Scheduling: a page request on the return path puts the page's whole storage
// block (1 MiB, 256 pages) at the front: its stored pages are decompressed
// once and sent together with its zero pages (as ZERO records: a guest that
// touches one page of a block tends to touch its neighbours, zero or not),
// the requested page first. The background sends only stored pages: zero
// pages nobody asked for are never sent (the RAM file is new and sparse, and
// once postcopy ends an untouched page reads as zero). Until the VM runs only
// requested blocks are sent (QEMU loads the device state fault by fault, each
// one blocking it); then, between requests, the background sends the next
// block not yet sent, in address order, one block in flight at a time so that
// a fault never waits behind more than one block.
// A page is never sent twice (QEMU's UFFDIO_COPY fails on a present page and
// the migration breaks): a bit per page records what was sent.
//
// Throughput: while a block's section drains into the socket, the next
// background block is already read and verified (prefetched), so QEMU's
// listen thread, which installs one 4 KiB page per UFFDIO_COPY, never waits
// for the file; sections are built in a buffer reused for the whole stream
// (new memory is slow to touch on this machine).
//
// A block whose checksum fails (or any read error) stops the stream with that
// error; the caller must kill the destination, which cannot continue without
// its source.
import type { Duplex } from 'node:stream';
import { BLOCK_BYTES, PAGE_BYTES } from './checkpoint-format.ts';
import type { CheckpointReader } from './checkpoint-format.ts';
import { MIG_CMD, command, configurationSection, fileHeader, packaged, pingCommand, postcopyAdvise, postcopyRamDiscard, ramPageRecordHeader, ramPagesSection, ramPagesSectionInto, ramSectionFooter, ramSectionHeader, ramSetupSection, streamEnd } from './migration-stream.ts';
import type { RamPage } from './migration-stream.ts';
import { ReturnPathError, ReturnPathReader } from './return-path.ts';
import type { SavedDeviceState } from './saved-device-state.ts';

const PAGES_PER_BLOCK = BLOCK_BYTES / PAGE_BYTES;
/** The guest RAM block: Offshoot's memory-backend-file has id ram0 (src/qemu/argv.ts). */
export const GUEST_RAM_BLOCK = 'ram0';

export interface PageServerStats {
  /** Page requests received on the return path (4 KiB each). */
  requests: number;
  /** Blocks sent because a page of theirs was requested / by the background stream. */
  faultBlocks: number;
  backgroundBlocks: number;
  pagesSent: number;
  zeroPagesSent: number;
  bytesWritten: number;
  /** Milliseconds the stream waited for the destination to take its sections / for blocks to be read and verified. */
  writeWaitMs: number;
  readWaitMs: number;
}

export class PostcopyPageServer {
  readonly stats: PageServerStats = { requests: 0, faultBlocks: 0, backgroundBlocks: 0, pagesSent: 0, zeroPagesSent: 0, bytesWritten: 0, writeWaitMs: 0, readWaitMs: 0 };
  private readonly blockCount: number;
  private readonly pageCount: number;
  private readonly sent: Uint8Array;
  private readonly blockDone: Uint8Array;
  private readonly faultQueue: number[] = [];
  private readonly queued = new Set<number>();
  private readonly zeroRequests = new Map<number, Set<number>>();
  /** Requested pages (guest offsets) per queued block, sent first within their block. */
  private readonly wantedPages = new Map<number, Set<number>>();
  private readonly smallSent = new Set<string>();
  private readonly returnPath = new ReturnPathReader();
  /** Read buffers: one for blocks read on demand, one for the prefetched background block. */
  private readonly readScratch = Buffer.allocUnsafeSlow(BLOCK_BYTES + 64 * 1024);
  private readonly prefetchScratch = Buffer.allocUnsafeSlow(BLOCK_BYTES + 64 * 1024);
  /** The section being written (one at a time: reused once its write completes). */
  private readonly sectionBuf = Buffer.allocUnsafeSlow(PAGES_PER_BLOCK * (PAGE_BYTES + 9) + 64 * 1024);
  private prefetched: { block: number; pages: Promise<Buffer> } | undefined;
  private nextBackground = 0;
  /** Set once the VM runs: the background stream may run and the stream may end. */
  private endAllowedNow = false;
  private failure: Error | undefined;
  private shut: ((status: number) => void) | undefined;
  private ended = false;
  private wake: (() => void) | undefined;
  private pongs = 0;
  private releaseEnd: (() => void) | undefined;
  private readonly endAllowed = new Promise<void>((resolve) => (this.releaseEnd = resolve));

  constructor(
    private readonly socket: Duplex,
    private readonly reader: CheckpointReader,
    private readonly saved: SavedDeviceState,
    private readonly onProgress?: (blocksDone: number, blockCount: number) => void,
  ) {
    const main = saved.ram.blocks.find((b) => b.idstr === GUEST_RAM_BLOCK);
    if (!main) throw new ReturnPathError(`the saved device state has no RAM block ${GUEST_RAM_BLOCK}`);
    if (main.length !== reader.memoryBytes) throw new ReturnPathError(`RAM block ${GUEST_RAM_BLOCK} is ${main.length} bytes, the checkpoint holds ${reader.memoryBytes}`);
    this.blockCount = reader.blockCount;
    this.pageCount = Math.ceil(reader.memoryBytes / PAGE_BYTES);
    this.sent = new Uint8Array(Math.ceil(this.pageCount / 8));
    this.blockDone = new Uint8Array(this.blockCount);
    for (const p of saved.pages) this.smallSent.add(`${p.block}:${p.offset}`);
    socket.on('data', (chunk: Buffer) => this.onReturnPath(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => {
      if (this.shut) this.shut(0);
      else this.fail(new ReturnPathError('the destination closed the migration connection'));
    });
  }

  /**
   * Call when the VM runs. Until then only requested blocks are sent, so that each page fault of the
   * device-state load is answered at once instead of waiting behind background blocks; afterwards the
   * background stream starts, and the stream may end once every stored page is sent (ending earlier can
   * deadlock: QEMU's listen thread waits at EOF for the main thread to finish loading the device state,
   * which may itself be waiting for a page, and a zero page is only sent when asked for).
   */
  vmRunning(): void {
    // Set here, not only when endAllowed settles: a call that comes before the stream loop first waits
    // (no wake to call yet) must not leave the loop waiting for a wake-up that never comes.
    this.endAllowedNow = true;
    this.releaseEnd?.();
    this.wake?.();
  }

  /** PONGs received (the destination answered the PING sent after OPEN_RETURN_PATH). */
  get pongsReceived(): number {
    return this.pongs;
  }

  /** Stops serving with `err` (the destination cannot continue: kill it). */
  fail(err: Error): void {
    if (this.failure || this.ended) return;
    this.failure = err;
    this.socket.destroy();
    this.wake?.();
  }

  /**
   * Writes the stream up to RUN, then serves requests and streams the rest. Resolves when END and
   * EOF have been sent and the destination has shut the return path; rejects on any failure.
   */
  async serve(): Promise<PageServerStats> {
    try {
      return await this.stream();
    } catch (err) {
      // Closing the connection tells QEMU the source is gone (before RUN it exits; after, it pauses).
      this.fail(err as Error);
      throw err;
    }
  }

  private async stream(): Promise<PageServerStats> {
    const s = this.saved;
    await this.write(Buffer.concat([fileHeader(), configurationSection(s.machine), command(MIG_CMD.OPEN_RETURN_PATH), pingCommand(1), postcopyAdvise(), ramSetupSection(s.ram, s.ram.blocks)]));
    if (s.pages.length) await this.write(ramPagesSection(s.ram.id, s.pages));
    // Nothing of guest RAM was sent, so there is nothing to drop; the command is needed anyway (see postcopyRamDiscard).
    await this.write(postcopyRamDiscard(GUEST_RAM_BLOCK, [{ start: 0, length: PAGE_BYTES }]));
    await this.write(packaged(Buffer.concat([command(MIG_CMD.POSTCOPY_LISTEN), s.devices, command(MIG_CMD.POSTCOPY_RUN)])));
    void this.endAllowed.then(() => (this.endAllowedNow = true));

    for (;;) {
      if (this.failure) throw this.failure;
      let block = this.faultQueue.shift();
      let fault = true;
      if (block !== undefined) {
        this.queued.delete(block);
      } else {
        fault = false;
        while (this.nextBackground < this.blockCount && this.blockDone[this.nextBackground]) this.nextBackground++;
        if (!this.endAllowedNow || this.nextBackground >= this.blockCount) {
          if (this.endAllowedNow) break;
          // Before the VM runs (or with everything stored sent): wait for a request or for the VM to run.
          await new Promise<void>((resolve) => (this.wake = resolve));
          this.wake = undefined;
          continue;
        }
        block = this.nextBackground;
      }
      await this.sendBlock(block, fault);
    }
    const shut = new Promise<number>((resolve) => (this.shut = resolve));
    await this.write(streamEnd(s.ram.id));
    this.ended = true;
    const status = await shut;
    if (status !== 0) throw new ReturnPathError(`the destination reported failure (status ${status}) at the end of the stream`);
    return this.stats;
  }

  /**
   * Sends the pages of block `block` not sent yet: for a fault, all of them (zero pages as ZERO records,
   * the requested ones first); in the background, only the stored (non-zero) ones.
   */
  private async sendBlock(block: number, fault: boolean): Promise<void> {
    const bitmap = this.reader.blockBitmap(block);
    const needData = !this.blockDone[block] && bitmap.some((b) => b !== 0);
    const reading = performance.now();
    const packed = needData ? await this.packedPages(block) : undefined;
    this.stats.readWaitMs += performance.now() - reading;
    if (this.failure) throw this.failure;
    const zeros = this.zeroRequests.get(block);
    this.zeroRequests.delete(block);
    const wanted = this.wantedPages.get(block);
    this.wantedPages.delete(block);
    if (!fault && !zeros && !wanted && packed) return this.sendStoredPages(block, bitmap, packed);
    const pages: RamPage[] = [];
    const first = block * PAGES_PER_BLOCK;
    const last = Math.min(first + PAGES_PER_BLOCK, this.pageCount);
    let n = 0; // index of the page among the block's stored pages
    for (let page = first; page < last; page++) {
      const p = page - first;
      const stored = ((bitmap[p >> 3] as number) & (1 << (p & 7))) !== 0;
      const at = stored ? n++ : -1;
      if (this.isSent(page)) continue;
      if (stored && packed) {
        pages.push({ block: GUEST_RAM_BLOCK, offset: page * PAGE_BYTES, data: packed.subarray(at * PAGE_BYTES, (at + 1) * PAGE_BYTES) });
      } else if (!stored && (fault || zeros?.has(p))) {
        pages.push({ block: GUEST_RAM_BLOCK, offset: page * PAGE_BYTES, data: null });
        this.stats.zeroPagesSent++;
      } else {
        continue;
      }
      this.markSent(page);
    }
    this.blockDone[block] = 1;
    // The pages asked for go first: QEMU wakes a faulting thread as soon as its page is placed.
    if (wanted) pages.sort((a, b) => Number(wanted.has(b.offset)) - Number(wanted.has(a.offset)));
    if (fault) this.stats.faultBlocks++;
    else this.stats.backgroundBlocks++;
    if (pages.length > 0) {
      const length = ramPagesSectionInto(this.sectionBuf, this.saved.ram.id, pages);
      this.prefetchNext(block);
      this.stats.pagesSent += pages.length;
      await this.write(this.sectionBuf.subarray(0, length));
      this.onProgress?.(this.stats.faultBlocks + this.stats.backgroundBlocks, this.blockCount);
    }
  }

  /**
   * The background's case of sendBlock: the block's stored pages not sent yet, in page order, written
   * into the section buffer directly (the same bytes as ramPagesSection, without a page object each).
   */
  private async sendStoredPages(block: number, bitmap: Buffer, packed: Buffer): Promise<void> {
    const buf = this.sectionBuf;
    const name = Buffer.from(GUEST_RAM_BLOCK, 'latin1');
    let o = ramSectionHeader(buf, this.saved.ram.id);
    let n = 0;
    let sent = 0;
    for (let p = 0; p < PAGES_PER_BLOCK; p++) {
      if (((bitmap[p >> 3] as number) & (1 << (p & 7))) === 0) continue;
      const at = n++;
      const page = block * PAGES_PER_BLOCK + p;
      if (page >= this.pageCount || this.isSent(page)) continue;
      o = ramPageRecordHeader(buf, o, page * PAGE_BYTES, sent === 0 ? name : null);
      o += packed.copy(buf, o, at * PAGE_BYTES, (at + 1) * PAGE_BYTES);
      this.markSent(page);
      sent++;
    }
    this.blockDone[block] = 1;
    this.stats.backgroundBlocks++;
    if (sent === 0) return;
    o = ramSectionFooter(buf, o, this.saved.ram.id);
    this.prefetchNext(block);
    this.stats.pagesSent += sent;
    await this.write(buf.subarray(0, o));
    this.onProgress?.(this.stats.faultBlocks + this.stats.backgroundBlocks, this.blockCount);
  }

  /** Block `block`'s stored pages, packed (verified): the prefetched ones if they are that block's. */
  private packedPages(block: number): Promise<Buffer> {
    const prefetched = this.prefetched;
    if (prefetched?.block === block) {
      this.prefetched = undefined;
      return prefetched.pages;
    }
    return this.reader.readPackedPages(block, this.readScratch);
  }

  /**
   * Once the VM runs, starts reading the background block after `after` (the next one not sent with
   * stored pages), unless one is already prefetched: it is read and verified while this one drains.
   */
  private prefetchNext(after: number): void {
    if (this.prefetched || !this.endAllowedNow) return;
    for (let c = Math.max(after + 1, this.nextBackground); c < this.blockCount; c++) {
      if (this.blockDone[c] || this.reader.blockInfo(c).pageCount === 0) continue;
      const pages = this.reader.readPackedPages(c, this.prefetchScratch);
      pages.catch(() => undefined); // surfaces when the block is sent
      this.prefetched = { block: c, pages };
      return;
    }
  }

  private onReturnPath(chunk: Buffer): void {
    let messages;
    try {
      messages = this.returnPath.push(chunk);
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    for (const m of messages) {
      if (m.type === 'pong') this.pongs++;
      else if (m.type === 'shut') {
        if (this.shut) this.shut(m.status);
        else this.fail(new ReturnPathError(`the destination shut the return path early (status ${m.status})`));
      } else if (m.type === 'request') this.request(m.block, m.offset, m.length);
    }
  }

  private request(blockName: string, offset: number, length: number): void {
    this.stats.requests++;
    if (this.ended) return;
    if (blockName !== GUEST_RAM_BLOCK) {
      // Small blocks were sent whole before LISTEN; a page of one that was not is a zero page.
      for (let o = offset; o < offset + length; o += PAGE_BYTES) {
        if (this.smallSent.has(`${blockName}:${o}`)) continue;
        this.smallSent.add(`${blockName}:${o}`);
        void this.write(ramPagesSection(this.saved.ram.id, [{ block: blockName, offset: o, data: null }])).catch((err: Error) => this.fail(err));
      }
      return;
    }
    if (offset % PAGE_BYTES !== 0 || length <= 0 || offset + length > this.reader.memoryBytes) {
      this.fail(new ReturnPathError(`page request ${offset}+${length} outside guest RAM`));
      return;
    }
    for (let page = offset / PAGE_BYTES; page < Math.ceil((offset + length) / PAGE_BYTES); page++) {
      if (this.isSent(page)) continue;
      const block = Math.floor(page / PAGES_PER_BLOCK);
      const p = page % PAGES_PER_BLOCK;
      const bitmap = this.reader.blockBitmap(block);
      if (((bitmap[p >> 3] as number) & (1 << (p & 7))) === 0) {
        let zeros = this.zeroRequests.get(block);
        if (!zeros) this.zeroRequests.set(block, (zeros = new Set()));
        zeros.add(p);
      }
      let wanted = this.wantedPages.get(block);
      if (!wanted) this.wantedPages.set(block, (wanted = new Set()));
      wanted.add(page * PAGE_BYTES);
      if (!this.queued.has(block)) {
        this.queued.add(block);
        this.faultQueue.push(block);
      }
    }
    this.wake?.();
  }

  private isSent(page: number): boolean {
    return ((this.sent[page >> 3] as number) & (1 << (page & 7))) !== 0;
  }

  private markSent(page: number): void {
    this.sent[page >> 3] = (this.sent[page >> 3] as number) | (1 << (page & 7));
  }

  private write(data: Buffer): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    this.stats.bytesWritten += data.length;
    const t = performance.now();
    return new Promise((resolve, reject) => {
      this.socket.write(data, (err) => {
        this.stats.writeWaitMs += performance.now() - t;
        if (err) reject(err);
        else resolve();
      });
    });
  }
}
