// The parser of the device state a checkpoint stores, on a stream laid out as
// QEMU 7.2 writes it with x-ignore-shared (the layout of a real saved file:
// capabilities subsection, a be64 address per RAM block, RAM PART/END
// sections, device sections, EOF and the JSON description), and on damaged
// streams, which must fail with CHECKPOINT_CORRUPT naming the device state.
import { describe, expect, it } from 'vitest';
import { StreamWriter, VM_SECTION, ramPagesSection } from './migration-stream.ts';
import { parseSavedDeviceState } from './saved-device-state.ts';

const DEVICES = Buffer.concat([
  // A FULL section as QEMU writes one: type, id, name, instance, version, opaque fields, footer.
  new StreamWriter().u8(VM_SECTION.FULL).be32(3).idstr('timer').be32(0).be32(2).bytes(Buffer.from('0102030405060708', 'hex')).u8(VM_SECTION.FOOTER).be32(3).toBuffer(),
  new StreamWriter().u8(VM_SECTION.FULL).be32(4).idstr('apic').be32(0).be32(3).bytes(Buffer.alloc(40, 7)).u8(VM_SECTION.FOOTER).be32(4).toBuffer(),
]);

function savedStream(options: { json?: boolean } = {}): Buffer {
  const w = new StreamWriter();
  w.be32(0x5145564d).be32(3);
  w.u8(VM_SECTION.CONFIGURATION).be32(10).bytes(Buffer.from('pc-q35-7.2'));
  w.u8(VM_SECTION.SUBSECTION).idstr('configuration/capabilities').be32(1).be32(1).idstr('x-ignore-shared');
  // RAM START: the block list, each block with its address (x-ignore-shared).
  w.u8(VM_SECTION.START).be32(2).idstr('ram').be32(0).be32(4);
  w.be64(BigInt(0x1000000 + 0x2000) | 4n);
  w.idstr('ram0').be64(0x1000000).be64(0);
  w.idstr('pc.rom').be64(0x2000).be64(0xfffc0000);
  w.be64(0x10).u8(VM_SECTION.FOOTER).be32(2);
  w.bytes(ramPagesSection(2, [{ block: 'pc.rom', offset: 0, data: Buffer.alloc(4096, 0x55) }, { block: 'pc.rom', offset: 0x1000, data: null }]));
  w.bytes(ramPagesSection(2, [], 'end'));
  w.bytes(DEVICES);
  w.u8(VM_SECTION.EOF);
  if (options.json !== false) {
    const json = Buffer.from('{"page_size": 4096, "devices": []}');
    w.u8(VM_SECTION.VMDESCRIPTION).be32(json.length).bytes(json);
  }
  return Buffer.from(w.toBuffer());
}

describe('parseSavedDeviceState', () => {
  it('splits a saved x-ignore-shared stream into machine, RAM blocks, small-block pages and device sections', () => {
    const saved = parseSavedDeviceState(savedStream());
    expect(saved.machine).toBe('pc-q35-7.2');
    expect(saved.capabilities).toEqual(['x-ignore-shared']);
    expect(saved.ram).toEqual({ id: 2, instanceId: 0, versionId: 4, blocks: [{ idstr: 'ram0', length: 0x1000000 }, { idstr: 'pc.rom', length: 0x2000 }] });
    expect(saved.pages.map((p) => [p.block, p.offset, p.data === null ? 'zero' : Buffer.from(p.data).readUInt8(0)])).toEqual([['pc.rom', 0, 0x55], ['pc.rom', 0x1000, 'zero']]);
    expect(saved.devices.equals(DEVICES)).toBe(true);
  });

  it('finds the end of the devices without the JSON description too', () => {
    expect(parseSavedDeviceState(savedStream({ json: false })).devices.equals(DEVICES)).toBe(true);
  });

  it('refuses damaged streams with CHECKPOINT_CORRUPT on the device state', () => {
    const good = savedStream();
    const ramStart = good.indexOf(Buffer.from('01000000020372616d', 'hex'));
    const pageRecord = good.indexOf(Buffer.from('00000000000000080670632e726f6d', 'hex'));
    const withFlag = Buffer.from(good);
    withFlag.writeUInt8(0x48, pageRecord + 7); // XBZRLE | PAGE: not something Offshoot replays
    const damaged: Array<[string, Buffer]> = [
      ['bad magic', Buffer.concat([Buffer.from('XEVM'), good.subarray(4)])],
      ['other version', Buffer.concat([good.subarray(0, 4), Buffer.from('00000002', 'hex'), good.subarray(8)])],
      ['truncated', good.subarray(0, 60)],
      ['unknown RAM flag', withFlag],
      ['no RAM section', Buffer.concat([good.subarray(0, ramStart), DEVICES, Buffer.from([0])])],
    ];
    expect(ramStart).toBeGreaterThan(0);
    expect(pageRecord).toBeGreaterThan(ramStart);
    for (const [what, stream] of damaged) {
      expect(() => parseSavedDeviceState(stream, '/x.ckpt'), what).toThrow(expect.objectContaining({ code: 'CHECKPOINT_CORRUPT', part: 'device state' }));
    }
  });
});
