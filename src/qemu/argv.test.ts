// Tests of the QEMU argv builder: the options it emits, its validation, and a
// real QEMU 7.2 that accepts every option (checked over a raw QMP socket).
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, existsSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidInputError } from '../common/index.ts';
import { DERIVED_TCG_TB_MIB, buildQemuArgv, qemuOptValue } from './argv.ts';
import type { QemuLaunchSpec } from './launch-spec.ts';

function baseSpec(dir = '/run/offshoot/vm1', overrides: Partial<QemuLaunchSpec> = {}): QemuLaunchSpec {
  return {
    vmId: 'vm1',
    name: 'web-1',
    accel: 'tcg',
    vcpus: 2,
    memoryMiB: 256,
    memory: { path: `${dir}/ram`, share: true },
    boot: { kind: 'kernel', kernel: '/guest/vmlinuz', initrd: '/guest/initrd', cmdline: 'console=ttyS0 quiet' },
    disks: [{ id: 'disk0', path: `${dir}/disk0.qcow2`, format: 'qcow2' }],
    nics: [{ id: 'net0', mac: '52:54:00:12:34:56', network: 'user' }],
    qmpSocket: `${dir}/qmp.sock`,
    qgaSocket: `${dir}/qga.sock`,
    consoleLog: `${dir}/console.log`,
    pidFile: `${dir}/qemu.pid`,
    ...overrides,
  };
}

/** The value following each occurrence of `flag`. */
function values(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1] ?? ''] : []));
}

describe('buildQemuArgv', () => {
  it('emits the machine, memory backend, accel and identity options', () => {
    const argv = buildQemuArgv(baseSpec());
    expect(values(argv, '-name')).toEqual(['guest=web-1,process=offshoot-vm1']);
    expect(values(argv, '-machine')).toEqual(['q35,memory-backend=ram0']);
    expect(values(argv, '-object')).toEqual(['memory-backend-file,id=ram0,size=256M,mem-path=/run/offshoot/vm1/ram,share=on']);
    expect(values(argv, '-accel')).toEqual(['tcg']);
    expect(values(argv, '-cpu')).toEqual(['max']);
    expect(values(argv, '-smp')).toEqual(['2']);
    expect(values(argv, '-m')).toEqual(['256M']);
    for (const flag of ['-nodefaults', '-no-user-config', '-no-reboot']) expect(argv).toContain(flag);
    expect(values(argv, '-display')).toEqual(['none']);
    expect(values(argv, '-pidfile')).toEqual(['/run/offshoot/vm1/qemu.pid']);
    expect(argv.join(' ')).not.toContain('prealloc');
  });

  it('sizes RAM in KiB when there is extra RAM (TCG), the backend the same as -m', () => {
    const argv = buildQemuArgv(baseSpec(undefined, { memoryExtraKiB: 8 }));
    expect(values(argv, '-m')).toEqual([`${256 * 1024 + 8}K`]);
    expect(values(argv, '-object')[0]).toMatch(new RegExp(`^memory-backend-file,id=ram0,size=${256 * 1024 + 8}K,`));
    expect(values(buildQemuArgv(baseSpec(undefined, { memoryExtraKiB: 0 })), '-m')).toEqual(['256M']);
  });

  it('uses -cpu host under KVM and share=off for a derived VM', () => {
    const argv = buildQemuArgv(baseSpec(undefined, { accel: 'kvm', memory: { path: '/mem/template-1', share: false } }));
    expect(values(argv, '-accel')).toEqual(['kvm']);
    expect(values(argv, '-cpu')).toEqual(['host']);
    expect(values(argv, '-object')[0]).toMatch(/mem-path=\/mem\/template-1,share=off$/);
  });

  it('gives a TCG VM derived from a template a smaller translation buffer, and only that VM', () => {
    expect(values(buildQemuArgv(baseSpec(undefined, { memory: { path: '/mem/template-1', share: false } })), '-accel')).toEqual([`tcg,tb-size=${DERIVED_TCG_TB_MIB}`]);
    expect(values(buildQemuArgv(baseSpec()), '-accel')).toEqual(['tcg']);
    expect(values(buildQemuArgv(baseSpec(undefined, { accel: 'kvm', memory: { path: '/mem/template-1', share: false } })), '-accel')).toEqual(['kvm']);
    // A spec that names its buffer (a fabric pool child) gets it under TCG only; a bad size is refused.
    expect(values(buildQemuArgv(baseSpec(undefined, { memory: { path: '/mem/template-1', share: false }, tcgTranslationMiB: 32 })), '-accel')).toEqual(['tcg,tb-size=32']);
    expect(values(buildQemuArgv(baseSpec(undefined, { accel: 'kvm', tcgTranslationMiB: 32 })), '-accel')).toEqual(['kvm']);
    expect(() => buildQemuArgv(baseSpec(undefined, { tcgTranslationMiB: 0 }))).toThrow(/tcgTranslationMiB/);
  });

  it('wires QMP, the guest agent port and the serial console', () => {
    const argv = buildQemuArgv(baseSpec());
    expect(values(argv, '-chardev')).toEqual([
      'socket,id=qmp,path=/run/offshoot/vm1/qmp.sock,server=on,wait=off',
      'file,id=serial0,path=/run/offshoot/vm1/console.log,append=on',
      'socket,id=qga0,path=/run/offshoot/vm1/qga.sock,server=on,wait=off',
    ]);
    expect(values(argv, '-mon')).toEqual(['chardev=qmp,mode=control']);
    expect(values(argv, '-serial')).toEqual(['chardev:serial0']);
    expect(values(argv, '-device')).toContain('virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0,id=guest-agent0');
  });

  it('boots a kernel with initrd and cmdline', () => {
    const argv = buildQemuArgv(baseSpec());
    expect(values(argv, '-kernel')).toEqual(['/guest/vmlinuz']);
    expect(values(argv, '-initrd')).toEqual(['/guest/initrd']);
    expect(values(argv, '-append')).toEqual(['console=ttyS0 quiet']);
  });

  it('boots from the first disk with bootindex and no kernel options', () => {
    const argv = buildQemuArgv(baseSpec(undefined, { boot: { kind: 'disk' }, disks: [
      { id: 'root', path: '/d/root.qcow2', format: 'qcow2' },
      { id: 'data', path: '/d/data.raw', format: 'raw', readOnly: true },
    ] }));
    expect(argv).not.toContain('-kernel');
    expect(values(argv, '-blockdev')).toEqual([
      'driver=qcow2,node-name=root,read-only=off,discard=unmap,file.driver=file,file.filename=/d/root.qcow2',
      'driver=raw,node-name=data,read-only=on,discard=unmap,file.driver=file,file.filename=/d/data.raw',
    ]);
    expect(values(argv, '-device')).toContain('virtio-blk-pci,drive=root,id=root,bootindex=0');
    expect(values(argv, '-device')).toContain('virtio-blk-pci,drive=data,id=data');
  });

  it('adds user networking, rng, -S and -incoming defer', () => {
    const argv = buildQemuArgv(baseSpec(undefined, { incoming: 'defer', paused: true, nics: [{ id: 'net0', mac: '52:54:00:AB:CD:EF', network: 'user' }] }));
    expect(values(argv, '-netdev')).toEqual(['user,id=net0']);
    expect(values(argv, '-device')).toContain('virtio-net-pci,netdev=net0,mac=52:54:00:ab:cd:ef,id=net0');
    expect(values(argv, '-device')).toContain('virtio-rng-pci,id=rng0');
    expect(argv).toContain('-S');
    expect(values(argv, '-incoming')).toEqual(['defer']);
    const plain = buildQemuArgv(baseSpec(undefined, { rng: false }));
    expect(plain.join(' ')).not.toContain('virtio-rng');
    expect(plain).not.toContain('-incoming');
    expect(plain).not.toContain('-S');
  });

  it('escapes commas in option values, not in plain arguments', () => {
    expect(qemuOptValue('/a,b/c')).toBe('/a,,b/c');
    const argv = buildQemuArgv(baseSpec('/x,y', { name: 'a,b' }));
    expect(values(argv, '-name')).toEqual(['guest=a,,b,process=offshoot-vm1']);
    expect(values(argv, '-object')[0]).toContain('mem-path=/x,,y/ram,share=on');
    expect(values(argv, '-pidfile')).toEqual(['/x,y/qemu.pid']);
  });

  it('honours a pinned machine type', () => {
    expect(values(buildQemuArgv(baseSpec(undefined, { machine: 'pc-q35-7.2' })), '-machine')).toEqual(['pc-q35-7.2,memory-backend=ram0']);
  });

  const bad: Array<[string, Partial<QemuLaunchSpec>, string]> = [
    ['vcpus < 1', { vcpus: 0 }, 'vcpus'],
    ['fractional vcpus', { vcpus: 1.5 }, 'vcpus'],
    ['memory < 16 MiB', { memoryMiB: 8 }, 'memoryMiB'],
    ['negative extra memory', { memoryExtraKiB: -8 }, 'memoryExtraKiB'],
    ['fractional extra memory', { memoryExtraKiB: 0.5 }, 'memoryExtraKiB'],
    ['empty memory path', { memory: { path: '', share: true } }, 'memory.path'],
    ['empty kernel', { boot: { kind: 'kernel', kernel: '' } }, 'boot.kernel'],
    ['empty disk path', { disks: [{ id: 'd0', path: '', format: 'raw' }] }, 'disks[0].path'],
    ['duplicate disk ids', { disks: [{ id: 'd0', path: '/a', format: 'raw' }, { id: 'd0', path: '/b', format: 'raw' }] }, 'disks[1].id'],
    ['disk and nic sharing an id', { nics: [{ id: 'disk0', mac: '52:54:00:00:00:01', network: 'user' }] }, 'nics[0].id'],
    ['a reserved id', { disks: [{ id: 'qmp', path: '/a', format: 'raw' }] }, 'disks[0].id'],
    ['an id QEMU rejects', { disks: [{ id: '0disk', path: '/a', format: 'raw' }] }, 'disks[0].id'],
    ['a malformed MAC', { nics: [{ id: 'n0', mac: '52:54:00:00:00', network: 'user' }] }, 'nics[0].mac'],
    ['a multicast MAC', { nics: [{ id: 'n0', mac: '01:00:5e:00:00:01', network: 'user' }] }, 'nics[0].mac'],
    ['a vmId with a comma', { vmId: 'a,b' }, 'vmId'],
    ['an empty QMP socket', { qmpSocket: '' }, 'qmpSocket'],
    ['a socket path too long for sun_path', { qgaSocket: `/${'x'.repeat(120)}` }, 'qgaSocket'],
    ['an empty console log', { consoleLog: '' }, 'consoleLog'],
    ['an empty pid file', { pidFile: '' }, 'pidFile'],
    ['disk boot without disks', { boot: { kind: 'disk' }, disks: [] }, 'disks'],
  ];
  it.each(bad)('rejects %s', (_label, overrides, field) => {
    let error: unknown;
    try {
      buildQemuArgv(baseSpec(undefined, overrides));
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as InvalidInputError).code).toBe('INVALID_INPUT');
    expect((error as InvalidInputError).details.field).toBe(field);
  });
});

/** Sends commands over a raw QMP socket; returns the greeting and each reply. */
async function rawQmp(path: string, commands: object[]): Promise<unknown[]> {
  const socket = createConnection(path);
  socket.setEncoding('utf8');
  const replies: unknown[] = [];
  let buffer = '';
  return new Promise((resolve, reject) => {
    socket.on('error', reject);
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>;
        buffer = buffer.slice(nl + 1);
        if ('event' in msg) continue;
        replies.push(msg);
        const next = commands[replies.length - 1];
        if (next === undefined) {
          socket.end();
          resolve(replies);
        } else socket.write(`${JSON.stringify(next)}\n`);
      }
    });
  });
}

describe('real QEMU 7.2 accepts the argv', () => {
  const dir = mkdtempSync(join(tmpdir(), 'offshoot-argv-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function startAndQuery(spec: QemuLaunchSpec): Promise<unknown[]> {
    const child = spawn('qemu-system-x86_64', buildQemuArgv(spec), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      // QMP greets (from its I/O thread) before the machine exists; query-kvm
      // is refused until machine creation is complete.
      const deadline = Date.now() + 20_000;
      while (true) {
        const early = await Promise.race([exited, new Promise((r) => setTimeout(() => r('running'), 25))]);
        if (early !== 'running') throw new Error(`QEMU exited (${String(early)}): ${stderr}`);
        if (Date.now() > deadline) throw new Error('QMP not ready');
        if (!existsSync(spec.qmpSocket)) continue;
        // The socket file exists from bind() on; connect() is refused until listen().
        const ready = await rawQmp(spec.qmpSocket, [{ execute: 'qmp_capabilities' }, { execute: 'query-kvm' }]).catch(() => []);
        if (ready[2] !== undefined && 'return' in (ready[2] as object)) break;
      }
      return await rawQmp(spec.qmpSocket, [
        { execute: 'qmp_capabilities' },
        { execute: 'query-status' },
        { execute: 'query-named-block-nodes', arguments: { flat: true } },
        { execute: 'qom-get', arguments: { path: '/objects/ram0', property: 'share' } },
        { execute: 'query-chardev' },
        { execute: 'quit' },
      ]);
    } finally {
      child.kill('SIGKILL');
      await exited;
      expect(stderr).toBe('');
    }
  }

  function spec(vmId: string, share: boolean, memPath: string): QemuLaunchSpec {
    const disk = join(dir, `${vmId}.qcow2`);
    const seed = join(dir, `${vmId}-seed.raw`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', seed, '1M']);
    return baseSpec(dir, {
      vmId,
      name: `argv test ${vmId}`,
      memoryMiB: 64,
      memory: { path: memPath, share },
      boot: { kind: 'disk' },
      disks: [{ id: 'root', path: disk, format: 'qcow2' }, { id: 'seed', path: seed, format: 'raw', readOnly: true }],
      qmpSocket: join(dir, `${vmId}.qmp`),
      qgaSocket: join(dir, `${vmId}.qga`),
      consoleLog: join(dir, `${vmId}.console`),
      pidFile: join(dir, `${vmId}.pid`),
      incoming: 'defer',
      paused: true,
    });
  }

  it('starts owned (share=on) with incoming defer and answers query-status', async () => {
    const s = spec('owned', true, join(dir, 'ram-owned'));
    const replies = await startAndQuery(s);
    expect(replies[0]).toHaveProperty('QMP');
    expect(replies[2]).toEqual({ return: { status: 'inmigrate', singlestep: false, running: false } });
    const nodes = (replies[3] as { return: Array<{ 'node-name': string; ro: boolean }> }).return;
    expect(nodes.find((n) => n['node-name'] === 'root')?.ro).toBe(false);
    expect(nodes.find((n) => n['node-name'] === 'seed')?.ro).toBe(true);
    expect(replies[4]).toEqual({ return: true });
    // The owned memory file is created at the full size, sparse.
    expect(statSync(join(dir, 'ram-owned')).size).toBe(64 * 1024 * 1024);
    const chardevs = (replies[5] as { return: Array<{ label: string; filename: string }> }).return;
    expect(chardevs.find((c) => c.label === 'qga0')?.filename).toBe(`disconnected:unix:${s.qgaSocket},server=on`); // listening, no agent yet
    expect(chardevs.find((c) => c.label === 'serial0')?.filename).toBe('file');
    expect(existsSync(s.consoleLog)).toBe(true);
  });

  it('starts with RAM 8 KiB past a whole MiB: the file has that size', async () => {
    const s = { ...spec('extra', true, join(dir, 'ram-extra')), memoryExtraKiB: 8 };
    const replies = await startAndQuery(s);
    expect(replies[2]).toEqual({ return: { status: 'inmigrate', singlestep: false, running: false } });
    expect(statSync(join(dir, 'ram-extra')).size).toBe(64 * 1024 * 1024 + 8 * 1024);
  });

  it('starts derived (share=off) over an existing template file', async () => {
    const template = join(dir, 'ram-owned');
    const before = statSync(template);
    const replies = await startAndQuery(spec('derived', false, template));
    expect(replies[2]).toEqual({ return: { status: 'inmigrate', singlestep: false, running: false } });
    expect(replies[4]).toEqual({ return: false });
    expect(statSync(template).mtimeMs).toBe(before.mtimeMs);
  });
});
