// Tests of the QEMU process supervisor against real QEMU processes: start and
// readiness, start failures with QEMU's message, exit detection for spawned
// and adopted processes, /proc discovery, kill with grace, and survival of
// QEMU when the process that started it dies.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { QemuLaunchSpec } from './launch-spec.ts';
import { QemuStartError, adoptQemu, findOffshootQemus, killAndWait, launchQemu, readProcessVmId, spawnQemu, vmIdFromArgv } from './process.ts';

const dir = mkdtempSync(join(tmpdir(), 'offshoot-proc-'));
const logFile = join(dir, 'qemu.log');
let counter = 0;

function spec(overrides: Partial<QemuLaunchSpec> = {}): QemuLaunchSpec {
  const vmId = `ptest-${process.pid}-${++counter}`;
  return {
    vmId,
    name: vmId,
    accel: 'tcg',
    vcpus: 1,
    memoryMiB: 32,
    memory: { path: join(dir, `${vmId}.ram`), share: true },
    boot: { kind: 'disk' },
    disks: [{ id: 'root', path: join(dir, 'root.raw'), format: 'raw', readOnly: true }],
    nics: [],
    qmpSocket: join(dir, `${vmId}.qmp`),
    qgaSocket: join(dir, `${vmId}.qga`),
    consoleLog: join(dir, `${vmId}.console`),
    pidFile: join(dir, `${vmId}.pid`),
    incoming: 'defer',
    ...overrides,
  };
}
writeFileSync(join(dir, 'root.raw'), Buffer.alloc(1024 * 1024));

/** Kills every QEMU a test of this file left behind. */
async function cleanup(): Promise<void> {
  for (const found of findOffshootQemus()) {
    if (found.vmId.startsWith(`ptest-${process.pid}-`)) await killAndWait(found.pid, { graceMs: 0 });
  }
}
afterEach(cleanup);
afterAll(async () => {
  await cleanup();
  rmSync(dir, { recursive: true, force: true });
});

function sessionOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

async function startError(promise: Promise<unknown>): Promise<QemuStartError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(QemuStartError);
    return err as QemuStartError;
  }
  throw new Error('expected QemuStartError');
}

describe('spawnQemu', () => {
  it('starts QEMU detached, ready for QMP, findable in /proc', async () => {
    const s = spec();
    const proc = await spawnQemu(s, { logFile });
    expect(proc.origin).toBe('spawned');
    expect(Number(readFileSync(s.pidFile, 'utf8').trim())).toBe(proc.pid);
    expect(sessionOf(proc.pid)).toBe(proc.pid); // its own session, not the test runner's
    expect(readProcessVmId(proc.pid)).toBe(s.vmId);
    expect(findOffshootQemus()).toContainEqual({ pid: proc.pid, vmId: s.vmId });
    expect(readFileSync(logFile, 'utf8')).toContain(`offshoot: starting qemu-system-x86_64 -name guest=${s.vmId}`);

    // Killed from outside: `exited` resolves promptly with the signal.
    const t0 = Date.now();
    process.kill(proc.pid, 'SIGKILL');
    expect(await proc.exited).toEqual({ code: null, signal: 'SIGKILL' });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(proc.kill('SIGTERM')).toBe(false);
    expect(findOffshootQemus().map((f) => f.pid)).not.toContain(proc.pid);
  });

  it('fails with QEMU_START_FAILED and QEMU\'s message for a missing kernel', async () => {
    const missing = join(dir, 'no-such-vmlinuz');
    const err = await startError(spawnQemu(spec({ boot: { kind: 'kernel', kernel: missing } }), { logFile }));
    expect(err.code).toBe('QEMU_START_FAILED');
    expect(err.message).toContain(`could not open kernel file '${missing}'`);
    expect(err.logTail).toContain('No such file or directory');
    expect(err.details.exitCode).toBe(1);
  });

  it('rejects an invalid spec before starting anything', async () => {
    await expect(spawnQemu(spec({ vcpus: 0 }), { logFile })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('fails for a missing disk image', async () => {
    const err = await startError(spawnQemu(spec({ disks: [{ id: 'root', path: join(dir, 'nope.qcow2'), format: 'qcow2' }] }), { logFile }));
    expect(err.message).toMatch(/nope\.qcow2.*No such file or directory/);
  });

  it('fails for a bad option', async () => {
    const s = spec();
    const err = await startError(launchQemu({ vmId: s.vmId, args: ['-machine', 'none', '-no-such-option'], qmpSocket: s.qmpSocket, logFile }));
    expect(err.message).toContain("invalid option");
    expect(err.message).toContain('-no-such-option');
  });

  it('fails for a binary that does not exist', async () => {
    const err = await startError(spawnQemu(spec(), { logFile, binary: join(dir, 'qemu-nope') }));
    expect(err.message).toContain('cannot run');
    expect(err.message).toContain('ENOENT');
  });

  it('fails and kills QEMU when QMP never answers in time', async () => {
    const s = spec();
    // A QMP socket elsewhere: the expected one never appears.
    const args = ['-machine', 'none', '-nodefaults', '-display', 'none', '-name', `guest=x,process=offshoot-${s.vmId}`, '-qmp', `unix:${join(dir, 'other.qmp')},server=on,wait=off`];
    const err = await startError(launchQemu({ vmId: s.vmId, args, qmpSocket: s.qmpSocket, logFile, startTimeoutMs: 500 }));
    expect(err.message).toContain('not ready within 500 ms');
    expect(findOffshootQemus().map((f) => f.vmId)).not.toContain(s.vmId);
  });
});

describe('adoptQemu', () => {
  it('re-attaches by pid and sees an outside kill by polling', async () => {
    const s = spec();
    const spawned = await spawnQemu(s, { logFile });
    const adopted = adoptQemu(spawned.pid, s.vmId);
    expect(adopted).toBeDefined();
    expect(adopted?.origin).toBe('adopted');
    const t0 = Date.now();
    process.kill(spawned.pid, 'SIGKILL');
    expect(await adopted?.exited).toEqual({ code: null, signal: null });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(adopted?.kill()).toBe(false);
  });

  it('rejects a pid that is not our QEMU for that vmId', async () => {
    const s = spec();
    const proc = await spawnQemu(s, { logFile });
    expect(adoptQemu(proc.pid, 'some-other-vm')).toBeUndefined();
    expect(adoptQemu(process.pid, s.vmId)).toBeUndefined(); // the test runner itself
    expect(adoptQemu(1, s.vmId)).toBeUndefined();
    expect(adoptQemu(2 ** 22 + 1, s.vmId)).toBeUndefined(); // above pid_max
    expect(adoptQemu(-1, s.vmId)).toBeUndefined();
    // `kill` of an adopted process works too.
    const adopted = adoptQemu(proc.pid, s.vmId);
    expect(adopted?.kill('SIGTERM')).toBe(true);
    await adopted?.exited;
    // Once the machine is created, QEMU shuts down cleanly on SIGTERM and exits 0.
    expect(await proc.exited).toEqual({ code: 0, signal: null });
  });

  it('keeps QEMU running when the process that started it dies, and adopts it', async () => {
    const s = spec();
    const script = join(dir, 'daemon.mts');
    const processTs = fileURLToPath(new URL('./process.ts', import.meta.url));
    writeFileSync(script, `import { spawnQemu } from ${JSON.stringify(processTs)};\n` +
      `const p = await spawnQemu(JSON.parse(process.argv[2]), { logFile: ${JSON.stringify(logFile)} });\n` +
      `process.stdout.write(String(p.pid) + '\\n');\nsetInterval(() => {}, 1000);\n`);
    // node itself with tsx's loader (not the tsx CLI, whose child node would outlive a SIGKILL of the wrapper).
    const tsxLoader = fileURLToPath(new URL('../../node_modules/tsx/dist/esm/index.mjs', import.meta.url));
    const daemon = spawn(process.execPath, ['--import', tsxLoader, script, JSON.stringify(s)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid = await new Promise<number>((resolve, reject) => {
      daemon.stdout.setEncoding('utf8').on('data', (line: string) => resolve(Number(line.trim())));
      daemon.once('exit', (code) => reject(new Error(`daemon exited ${code}`)));
    });
    daemon.kill('SIGKILL'); // the daemon crashes
    await new Promise((resolve) => daemon.once('exit', resolve));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(findOffshootQemus()).toContainEqual({ pid, vmId: s.vmId });
    const adopted = adoptQemu(pid, s.vmId);
    expect(adopted).toBeDefined();
    expect(await killAndWait(pid, { graceMs: 3000 })).toBe('terminated');
    await adopted?.exited;
  });
});

describe('killAndWait', () => {
  it('terminates QEMU with SIGTERM within the grace period', async () => {
    const proc = await spawnQemu(spec(), { logFile });
    expect(await killAndWait(proc.pid, { graceMs: 5000 })).toBe('terminated');
    expect(await proc.exited).toEqual({ code: 0, signal: null });
    expect(await killAndWait(proc.pid)).toBe('not-running');
  });

  it('falls back to SIGKILL for a process that ignores SIGTERM', async () => {
    // An ignored signal stays ignored across exec.
    const child = spawn('sh', ['-c', 'trap "" TERM; exec sleep 30'], { stdio: 'ignore' });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const t0 = Date.now();
    expect(await killAndWait(child.pid ?? -1, { graceMs: 300 })).toBe('killed');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
  });
});

describe('vmIdFromArgv', () => {
  it('reads process=offshoot-<vmId> from -name, with escaped commas', () => {
    expect(vmIdFromArgv(['qemu', '-name', 'guest=a,,b,process=offshoot-vm-7'])).toBe('vm-7');
    expect(vmIdFromArgv(['qemu', '-name', 'guest=x'])).toBeUndefined();
    expect(vmIdFromArgv(['grep', 'process=offshoot-vm-7'])).toBeUndefined();
    expect(vmIdFromArgv(['qemu', '-name', 'guest=process=offshoot-vm-7'])).toBeUndefined();
    expect(vmIdFromArgv(['qemu', '-name'])).toBeUndefined();
  });
});
