// Tests for the embedded default guest: boots the built kernel + initramfs in
// real QEMU (TCG, memory in a shared file as the product runs it), talks to
// the real qemu-ga in the guest over raw QGA JSON, checks the kernel release
// and the data disk, powers it off with the ACPI button and checks that the
// data disk was unmounted cleanly. Also the probe boot and the loader's error.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep, waitFor, withTimeout } from '../common/index.ts';
import {
  GUEST_PROBE_MARKER,
  GUEST_READY_MARKER,
  GuestNotBuiltError,
  PROBE_CMDLINE_FLAG,
  loadDefaultGuest,
  type GuestImage,
} from './index.ts';

const run = promisify(execFile);

/** Newline-delimited JSON over a unix socket, as QMP and QGA speak it. */
class JsonLineSocket {
  private buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private closed = false;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static open(path: string): Promise<JsonLineSocket> {
    return new Promise((resolvePromise, reject) => {
      const socket = connect(path);
      socket.once('connect', () => resolvePromise(new JsonLineSocket(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private async more(): Promise<void> {
    if (this.closed) throw new Error('socket closed');
    await new Promise<void>((r) => this.waiters.push(r));
  }

  send(message: unknown): void {
    this.socket.write(`${JSON.stringify(message)}\n`);
  }

  /** Drops everything up to and including the next 0xFF byte (QGA's guest-sync-delimited marker). */
  async skipPastDelimiter(): Promise<void> {
    while (true) {
      const at = this.buffer.indexOf(0xff);
      if (at >= 0) {
        this.buffer = this.buffer.subarray(at + 1);
        return;
      }
      this.buffer = Buffer.alloc(0);
      await this.more();
    }
  }

  async readMessage(): Promise<Record<string, unknown>> {
    while (true) {
      const at = this.buffer.indexOf(0x0a);
      if (at >= 0) {
        const line = this.buffer.subarray(0, at).toString('utf8').trim();
        this.buffer = this.buffer.subarray(at + 1);
        if (line !== '') return JSON.parse(line) as Record<string, unknown>;
        continue;
      }
      await this.more();
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Sends one command and returns its "return" value; an "error" reply throws. Skips events. */
async function execute(sock: JsonLineSocket, command: string, args?: Record<string, unknown>): Promise<unknown> {
  sock.send(args ? { execute: command, arguments: args } : { execute: command });
  while (true) {
    const reply = await sock.readMessage();
    if ('error' in reply) throw new Error(`${command}: ${JSON.stringify(reply['error'])}`);
    if ('return' in reply) return reply['return'];
  }
}

/** guest-sync-delimited until the agent answers with our id (it may not be listening yet). */
async function syncAgent(socketPath: string, ms: number): Promise<JsonLineSocket> {
  const deadline = Date.now() + ms;
  while (true) {
    const sock = await JsonLineSocket.open(socketPath);
    const id = randomBytes(4).readUInt32BE() & 0x7fffffff;
    try {
      await withTimeout(
        (async () => {
          sock.send({ execute: 'guest-sync-delimited', arguments: { id } });
          await sock.skipPastDelimiter();
          while (true) {
            const reply = await sock.readMessage();
            if (reply['return'] === id) return;
          }
        })(),
        2000,
        'guest-sync-delimited',
      );
      return sock;
    } catch (err) {
      sock.close();
      if (Date.now() >= deadline) throw err;
      await sleep(200);
    }
  }
}

interface ExecResult {
  exitcode: number;
  stdout: string;
  stderr: string;
}

async function guestExec(agent: JsonLineSocket, path: string, args: string[]): Promise<ExecResult> {
  const started = (await execute(agent, 'guest-exec', { path, arg: args, 'capture-output': true })) as { pid: number };
  return waitFor(
    async () => {
      const status = (await execute(agent, 'guest-exec-status', { pid: started.pid })) as {
        exited: boolean;
        exitcode?: number;
        'out-data'?: string;
        'err-data'?: string;
      };
      if (!status.exited) return undefined;
      return {
        exitcode: status.exitcode ?? -1,
        stdout: Buffer.from(status['out-data'] ?? '', 'base64').toString('utf8'),
        stderr: Buffer.from(status['err-data'] ?? '', 'base64').toString('utf8'),
      };
    },
    30_000,
    `guest-exec ${path}`,
    100,
  );
}

/** One QEMU process booting the default guest, with its files in a temp dir. */
class TrialVm {
  readonly serialLog: string;
  readonly qgaSocket: string;
  readonly qmpSocket: string;
  readonly overlay: string;
  readonly memFile: string;
  proc: ChildProcess | undefined;
  exitCode: number | null | undefined;
  stderr = '';

  constructor(
    private readonly guest: GuestImage,
    readonly dir: string,
  ) {
    this.serialLog = join(dir, 'serial.log');
    this.qgaSocket = join(dir, 'qga.sock');
    this.qmpSocket = join(dir, 'qmp.sock');
    this.overlay = join(dir, 'data-overlay.qcow2');
    this.memFile = join('/dev/shm', `offshoot-guest-test-${process.pid}-${randomBytes(4).toString('hex')}`);
  }

  async start(extraCmdline: string): Promise<void> {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', this.guest.dataDisk, this.overlay]);
    const args = [
      '-accel', 'tcg',
      '-nodefaults', '-display', 'none',
      '-m', '256M',
      '-object', `memory-backend-file,id=ram0,size=256M,mem-path=${this.memFile},share=on`,
      '-machine', 'q35,memory-backend=ram0',
      '-kernel', this.guest.kernel,
      '-initrd', this.guest.initrd,
      '-append', `${this.guest.cmdline} ${extraCmdline}`.trim(),
      '-drive', `file=${this.overlay},if=none,id=data0,format=qcow2`,
      '-device', 'virtio-blk-pci,drive=data0',
      '-device', 'virtio-serial-pci',
      '-chardev', `socket,id=qga0,path=${this.qgaSocket},server=on,wait=off`,
      '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
      '-qmp', `unix:${this.qmpSocket},server=on,wait=off`,
      '-serial', `file:${this.serialLog}`,
      '-no-reboot',
    ];
    const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc = proc;
    proc.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString('utf8');
    });
    proc.on('exit', (code) => {
      this.exitCode = code;
    });
  }

  async console(): Promise<string> {
    return readFile(this.serialLog, 'utf8').catch(() => '');
  }

  /** Waits for a line on the serial console; fails early if QEMU exits first. */
  async waitForConsole(marker: string, ms: number): Promise<void> {
    await waitFor(
      async () => {
        if ((await this.console()).includes(marker)) return true;
        if (this.exitCode !== undefined) {
          throw new Error(`QEMU exited (${this.exitCode}) before "${marker}": ${this.stderr}\nconsole:\n${await this.console()}`);
        }
        return undefined;
      },
      ms,
      `console marker ${marker}`,
      50,
    );
  }

  async waitForExit(ms: number): Promise<number | null> {
    return waitFor(() => (this.exitCode === undefined ? undefined : this.exitCode), ms, 'QEMU exit', 50);
  }

  async destroy(): Promise<void> {
    if (this.proc && this.exitCode === undefined) {
      this.proc.kill('SIGKILL');
      await this.waitForExit(10_000).catch(() => undefined);
    }
    await rm(this.memFile, { force: true });
  }
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

describe('loadDefaultGuest', () => {
  let empty: string;
  beforeAll(async () => {
    empty = await mkdtemp(join(tmpdir(), 'offshoot-guest-empty-'));
  });
  afterAll(async () => {
    await rm(empty, { recursive: true, force: true });
  });

  it('throws GuestNotBuiltError for a directory without a build', async () => {
    const err = await loadDefaultGuest({ dir: empty }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestNotBuiltError);
    expect(err).toMatchObject({ code: 'GUEST_NOT_BUILT', status: 500 });
    expect((err as Error).message).toContain('npm run setup');
  });

  it('throws GuestNotBuiltError for a missing directory and for a manifest naming missing files', async () => {
    await expect(loadDefaultGuest({ dir: join(empty, 'nope') })).rejects.toBeInstanceOf(GuestNotBuiltError);
    const dir = join(empty, 'broken');
    await mkdir(dir);
    await writeFile(
      join(dir, 'manifest.json'),
      JSON.stringify({ kernelRelease: 'x', kernel: 'vmlinuz', initrd: 'initrd.img', dataDisk: 'data.qcow2', cmdline: 'quiet' }),
    );
    await expect(loadDefaultGuest({ dir })).rejects.toMatchObject({ code: 'GUEST_NOT_BUILT' });
  });

  it('honours OFFSHOOT_GUEST_DIR', async () => {
    const saved = process.env['OFFSHOOT_GUEST_DIR'];
    process.env['OFFSHOOT_GUEST_DIR'] = empty;
    try {
      await expect(loadDefaultGuest()).rejects.toMatchObject({ details: { dir: expect.stringContaining('offshoot-guest-empty-') } });
    } finally {
      if (saved === undefined) delete process.env['OFFSHOOT_GUEST_DIR'];
      else process.env['OFFSHOOT_GUEST_DIR'] = saved;
    }
  });
});

describe('default guest in QEMU (TCG)', () => {
  let guest: GuestImage;
  let workDir: string;
  let diskHashBefore: string;
  const vms: TrialVm[] = [];

  beforeAll(async () => {
    guest = await loadDefaultGuest();
    workDir = await mkdtemp(join(tmpdir(), 'offshoot-guest-test-'));
    diskHashBefore = await sha256(guest.dataDisk);
  });

  afterAll(async () => {
    for (const vm of vms) await vm.destroy().catch(() => undefined);
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  async function newVm(name: string): Promise<TrialVm> {
    const dir = join(workDir, name);
    await mkdir(dir);
    const vm = new TrialVm(guest, dir);
    vms.push(vm);
    return vm;
  }

  it('boots to qemu-ga, runs commands, reads /data and powers off on the ACPI button', async () => {
    const vm = await newVm('boot');
    await vm.start('offshoot.hostname=guest-test');
    await vm.waitForConsole(GUEST_READY_MARKER, 90_000);

    const agent = await syncAgent(vm.qgaSocket, 30_000);
    try {
      const uname = await guestExec(agent, 'uname', ['-r']);
      expect(uname.exitcode).toBe(0);
      expect(uname.stdout.trim()).toBe(guest.kernelRelease);

      const readme = await guestExec(agent, 'cat', ['/data/README']);
      expect(readme.exitcode).toBe(0);
      expect(readme.stdout).toContain('Offshoot');

      const host = await guestExec(agent, 'hostname', []);
      expect(host.stdout.trim()).toBe('guest-test');

      // The tools later tests rely on, through sh and PATH.
      const tools = await guestExec(agent, 'sh', [
        '-c',
        'mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && dd if=/dev/urandom of=/tmp/m/x bs=1k count=64 2>/dev/null && ' +
          'head -c 65536 /tmp/m/x | md5sum | cut -c1-32 && md5sum < /tmp/m/x | cut -c1-32 && sleep 0.1 && sync && ip link show lo >/dev/null && echo ok',
      ]);
      expect(tools.exitcode).toBe(0);
      const [first, second, ok] = tools.stdout.trim().split('\n');
      expect(first).toMatch(/^[0-9a-f]{32}$/);
      expect(second).toBe(first);
      expect(ok).toBe('ok');
    } finally {
      agent.close();
    }

    const qmp = await JsonLineSocket.open(vm.qmpSocket);
    try {
      await qmp.readMessage(); // greeting
      await execute(qmp, 'qmp_capabilities');
      await execute(qmp, 'system_powerdown');
    } finally {
      qmp.close();
    }
    expect(await vm.waitForExit(20_000)).toBe(0);

    // /data was unmounted before power off: the journal needs no recovery.
    const raw = join(vm.dir, 'data.raw');
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', vm.overlay, raw]);
    const sbinPath = `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin`;
    const { stdout } = await run('dumpe2fs', ['-h', raw], { maxBuffer: 1 << 20, env: { ...process.env, PATH: sbinPath } });
    await rm(raw, { force: true });
    expect(stdout).toMatch(/Filesystem state:\s+clean/);
    expect(stdout).not.toMatch(/needs_recovery/);

    expect(await sha256(guest.dataDisk)).toBe(diskHashBefore);
  });

  it('answers the probe boot and powers off by itself', async () => {
    const vm = await newVm('probe');
    await vm.start(PROBE_CMDLINE_FLAG);
    await vm.waitForConsole(GUEST_PROBE_MARKER, 90_000);
    expect(await vm.waitForExit(20_000)).toBe(0);
    expect(await vm.console()).not.toContain(GUEST_READY_MARKER);
  });
});
