// Reader of QEMU's migration return path (destination to source, QEMU 7.2
// migration/migration.c): messages of be16 type, be16 length, data. The ones a
// postcopy source needs:
//   1 SHUT          be32 status (0: the destination finished cleanly)
//   2 PONG          be32 value of a PING
//   3 REQ_PAGES_ID  be64 offset, be32 length, u8 len + idstr of the RAM block
//   4 REQ_PAGES     be64 offset, be32 length (the block of the last REQ_PAGES_ID)
// Bytes arrive in arbitrary chunks; push() returns the whole messages so far.
export type ReturnMessage =
  | { type: 'shut'; status: number }
  | { type: 'pong'; value: number }
  | { type: 'request'; block: string; offset: number; length: number }
  | { type: 'other'; code: number; data: Buffer };

export const RP_MSG = { SHUT: 1, PONG: 2, REQ_PAGES_ID: 3, REQ_PAGES: 4 } as const;

/** The return path broke the protocol. */
export class ReturnPathError extends Error {}

export class ReturnPathReader {
  private pending: Buffer = Buffer.alloc(0);
  private lastBlock: string | undefined;

  push(chunk: Buffer): ReturnMessage[] {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const out: ReturnMessage[] = [];
    let p = 0;
    while (this.pending.length - p >= 4) {
      const type = this.pending.readUInt16BE(p);
      const len = this.pending.readUInt16BE(p + 2);
      if (this.pending.length - p - 4 < len) break;
      const data = this.pending.subarray(p + 4, p + 4 + len);
      p += 4 + len;
      out.push(this.decode(type, data));
    }
    this.pending = Buffer.from(this.pending.subarray(p));
    return out;
  }

  private decode(type: number, data: Buffer): ReturnMessage {
    const need = (n: number) => {
      if (data.length < n) throw new ReturnPathError(`return-path message ${type} has ${data.length} bytes, needs ${n}`);
    };
    switch (type) {
      case RP_MSG.SHUT:
        need(4);
        return { type: 'shut', status: data.readUInt32BE(0) };
      case RP_MSG.PONG:
        need(4);
        return { type: 'pong', value: data.readUInt32BE(0) };
      case RP_MSG.REQ_PAGES_ID:
      case RP_MSG.REQ_PAGES: {
        need(12);
        const offset = Number(data.readBigUInt64BE(0));
        const length = data.readUInt32BE(8);
        if (type === RP_MSG.REQ_PAGES_ID) {
          need(13);
          const n = data.readUInt8(12);
          need(13 + n);
          this.lastBlock = data.toString('latin1', 13, 13 + n);
        }
        if (this.lastBlock === undefined) throw new ReturnPathError('page request before any block was named');
        return { type: 'request', block: this.lastBlock, offset, length };
      }
      default:
        return { type: 'other', code: type, data: Buffer.from(data) };
    }
  }
}
