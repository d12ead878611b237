// The return-path reader on the bytes QEMU 7.2 sends back (PONG, SHUT as
// captured from a real postcopy migration; page requests as laid out in
// migration/migration.c), split across chunks at every possible byte.
import { describe, expect, it } from 'vitest';
import { ReturnPathError, ReturnPathReader } from './return-path.ts';

const REQ_ID = Buffer.concat([Buffer.from('0003', 'hex'), Buffer.from([0, 17]), Buffer.from('0000000000c10000', 'hex'), Buffer.from('00001000', 'hex'), Buffer.from([4]), Buffer.from('ram0')]);
const REQ = Buffer.from('0004' + '000c' + '0000000000c11000' + '00001000', 'hex');
const CAPTURED = Buffer.from('00020004000000010002000400000002' + '0001000400000000', 'hex');

describe('ReturnPathReader', () => {
  it('decodes PONG, page requests (named, then for the same block) and SHUT, however the bytes are split', () => {
    const all = Buffer.concat([CAPTURED.subarray(0, 16), REQ_ID, REQ, CAPTURED.subarray(16)]);
    const expected = [
      { type: 'pong', value: 1 },
      { type: 'pong', value: 2 },
      { type: 'request', block: 'ram0', offset: 0xc10000, length: 4096 },
      { type: 'request', block: 'ram0', offset: 0xc11000, length: 4096 },
      { type: 'shut', status: 0 },
    ];
    for (let cut = 0; cut <= all.length; cut++) {
      const r = new ReturnPathReader();
      expect([...r.push(all.subarray(0, cut)), ...r.push(all.subarray(cut))], `cut at ${cut}`).toEqual(expected);
    }
  });

  it('refuses a request before any block was named, and short messages', () => {
    expect(() => new ReturnPathReader().push(REQ)).toThrow(ReturnPathError);
    expect(() => new ReturnPathReader().push(Buffer.from('00010002abcd', 'hex'))).toThrow(ReturnPathError);
  });
});
