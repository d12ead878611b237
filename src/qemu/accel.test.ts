// Tests of the accelerator probe: the real KVM trial on this host (which must
// fall back to TCG with a reason, within the limit), the OFFSHOOT_ACCEL
// override, the device check, and, with fake QEMU binaries, the success,
// failure and time-limit paths the home's cache and the boot's.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidInputError } from '../common/index.ts';
import { ACCEL_ENV, PROBE_CMDLINE_FLAG, PROBE_MARKER, probeAccelerator, probeArgv, qemuVersion } from './accel.ts';

const dir = mkdtempSync(join(tmpdir(), 'offshoot-acceltest-'));
const kernel = process.env.OFFSHOOT_TEST_KERNEL ?? join(dir, 'vmlinuz');
const initrd = process.env.OFFSHOOT_TEST_INITRD;
// QEMU loads any file as a (legacy) kernel, so a zero-filled one exercises the
// real KVM setup; on a working KVM host it would then hang and time out.
if (process.env.OFFSHOOT_TEST_KERNEL === undefined) writeFileSync(kernel, Buffer.alloc(64 * 1024));

const savedEnv = process.env[ACCEL_ENV];
beforeEach(() => {
  delete process.env[ACCEL_ENV];
});
afterEach(() => {
  if (savedEnv === undefined) delete process.env[ACCEL_ENV];
  else process.env[ACCEL_ENV] = savedEnv;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A fake qemu-system-x86_64: logs its pid and arguments, then runs `body` (sh). */
function fakeQemu(name: string, body: string): { binary: string; calls: () => string[] } {
  const binary = join(dir, name);
  const log = join(dir, `${name}.calls`);
  writeFileSync(binary, `#!/bin/sh
if [ "$1" = "--version" ]; then echo "QEMU emulator version 99.0.0 (fake)"; exit 0; fi
echo "$$ $*" >> ${log}
for a in "$@"; do case "$a" in file,id=probe-console,path=*) console="\${a#file,id=probe-console,path=}";; esac; done
${body}
`);
  chmodSync(binary, 0o755);
  return { binary, calls: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []) };
}

/** Alive and not a zombie. */
function running(pid: number): boolean {
  try {
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z');
  } catch {
    return false;
  }
}

/** Trial temp dirs go here, so that other processes probing at the same time do not disturb the checks. */
const trialTmp = join(dir, 'trials');
mkdirSync(trialTmp);
function probeDirs(): string[] {
  return readdirSync(trialTmp);
}

describe('probeAccelerator on this host', () => {
  it('chooses TCG with a reason, within the time limit, and cleans up', async () => {
    const cacheFile = join(dir, 'real-cache.json');
    const t0 = Date.now();
    const result = await probeAccelerator({ kernel, initrd, cmdline: 'console=ttyS0', timeoutMs: 15_000, cacheFile, tmpDir: trialTmp });
    const ms = Date.now() - t0;
    console.log(`KVM trial: ${result.accel} after ${ms} ms: ${result.reason}`);
    expect(result.accel).toBe('tcg');
    expect(result.source === 'trial' || result.source === 'device').toBe(true);
    expect(result.reason.length).toBeGreaterThan(10);
    expect(ms).toBeLessThan(15_000 + 6_000);
    expect(Number.isNaN(Date.parse(result.probedAt))).toBe(false);
    expect(probeDirs()).toEqual([]);
    if (result.source === 'trial') {
      const again = await probeAccelerator({ kernel, initrd, cmdline: 'console=ttyS0', cacheFile });
      expect(again).toEqual({ ...result, source: 'cache' });
    }
  });

  it('reads the QEMU version', async () => {
    expect(await qemuVersion()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('reads the version once per build of the binary, again after it changed', async () => {
    const binary = join(dir, 'qemu-versioned');
    const counter = join(dir, 'qemu-versioned.count');
    const write = (version: string) => {
      writeFileSync(binary, `#!/bin/sh\necho x >> ${counter}\necho "QEMU emulator version ${version} (fake)"\n`);
      chmodSync(binary, 0o755);
    };
    const spawned = () => (existsSync(counter) ? readFileSync(counter, 'utf8').trim().split('\n').length : 0);
    write('98.0.0');
    expect(await qemuVersion(binary)).toBe('98.0.0 (fake)');
    expect(await qemuVersion(binary)).toBe('98.0.0 (fake)');
    expect(spawned()).toBe(1);
    write('98.10.0'); // an upgrade: another size
    expect(await qemuVersion(binary)).toBe('98.10.0 (fake)');
    expect(spawned()).toBe(2);
  });
});

describe('probeAccelerator decisions', () => {
  it('obeys OFFSHOOT_ACCEL without spawning anything', async () => {
    const fake = fakeQemu('qemu-env', 'exit 1');
    process.env[ACCEL_ENV] = 'kvm';
    expect(await probeAccelerator({ kernel, binary: fake.binary })).toMatchObject({ accel: 'kvm', source: 'env', reason: `forced by ${ACCEL_ENV}=kvm` });
    process.env[ACCEL_ENV] = 'tcg';
    expect(await probeAccelerator({ kernel, binary: fake.binary })).toMatchObject({ accel: 'tcg', source: 'env' });
    process.env[ACCEL_ENV] = 'hvf';
    await expect(probeAccelerator({ kernel, binary: fake.binary })).rejects.toBeInstanceOf(InvalidInputError);
    expect(fake.calls()).toEqual([]);
  });

  it('chooses TCG when the KVM device cannot be opened', async () => {
    const result = await probeAccelerator({ kernel, kvmDevice: join(dir, 'no-kvm') });
    expect(result).toMatchObject({ accel: 'tcg', source: 'device' });
    expect(result.reason).toContain('ENOENT');
  });

  it('rejects a kernel that does not exist', async () => {
    await expect(probeAccelerator({ kernel: join(dir, 'missing'), kvmDevice: '/dev/null' })).rejects.toBeInstanceOf(InvalidInputError);
  });

  it('chooses KVM when the marker appears, passes the probe flag, and caches the result', async () => {
    const fake = fakeQemu('qemu-ok', `echo "Linux version 6.1" >> "$console"; sleep 0.2; echo "${PROBE_MARKER}" >> "$console"; exit 0`);
    const cacheFile = join(dir, 'cache', 'accel.json');
    const options = { kernel, cmdline: 'console=ttyS0', binary: fake.binary, cacheFile, kvmDevice: '/dev/null' };
    const first = await probeAccelerator(options);
    expect(first).toMatchObject({ accel: 'kvm', source: 'trial' });
    expect(fake.calls()).toHaveLength(1);
    expect(fake.calls()[0]).toContain(`-accel kvm -cpu host`);
    expect(fake.calls()[0]).toContain(`-append console=ttyS0 ${PROBE_CMDLINE_FLAG}`);

    // Cache hit: same answer, nothing spawned.
    const second = await probeAccelerator(options);
    expect(second).toEqual({ ...first, source: 'cache' });
    expect(fake.calls()).toHaveLength(1);
    const saved = JSON.parse(readFileSync(cacheFile, 'utf8')) as { version: number; entries: Record<string, unknown> };
    expect(saved.version).toBe(1);
    expect(Object.keys(saved.entries)).toHaveLength(1);

    // A changed kernel is a miss.
    utimesSync(kernel, new Date(), new Date(Date.now() + 5000));
    await probeAccelerator(options);
    expect(fake.calls()).toHaveLength(2);
  });

  it('shares a trial with every home on this boot of the machine through the boot cache, and copies it to the home', async () => {
    const fake = fakeQemu('qemu-boot', `echo "${PROBE_MARKER}" >> "$console"; exit 0`);
    const bootCacheFile = join(dir, 'boot', 'accel.json');
    const options = { kernel, cmdline: 'console=ttyS0', binary: fake.binary, bootCacheFile, kvmDevice: '/dev/null' };
    const first = await probeAccelerator({ ...options, cacheFile: join(dir, 'home-a', 'accel.json') });
    expect(first).toMatchObject({ accel: 'kvm', source: 'trial' });
    expect(statSync(join(dir, 'boot')).mode & 0o777).toBe(0o700);
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const saved = JSON.parse(readFileSync(bootCacheFile, 'utf8')) as { entries: Record<string, unknown> };
    expect(Object.keys(saved.entries).map((k) => (JSON.parse(k) as { boot: string }).boot)).toEqual([bootId]);

    // Another home: no trial, the boot's answer, now in that home too.
    const homeB = join(dir, 'home-b', 'accel.json');
    expect(await probeAccelerator({ ...options, cacheFile: homeB })).toEqual({ ...first, source: 'cache' });
    expect(fake.calls()).toHaveLength(1);
    expect(Object.keys((JSON.parse(readFileSync(homeB, 'utf8')) as { entries: Record<string, unknown> }).entries)).toHaveLength(1);

    // An entry of another boot is not this boot's answer.
    const entries = Object.fromEntries(Object.entries(saved.entries).map(([k, v]) => [JSON.stringify({ ...(JSON.parse(k) as object), boot: 'another-boot' }), v]));
    writeFileSync(bootCacheFile, JSON.stringify({ version: 1, entries }));
    await probeAccelerator({ ...options, cacheFile: join(dir, 'home-c', 'accel.json') });
    expect(fake.calls()).toHaveLength(2);
  });

  it('chooses KVM even when the guest powers off right after the marker', async () => {
    const fake = fakeQemu('qemu-fast', `echo "${PROBE_MARKER}" >> "$console"; exit 0`);
    expect(await probeAccelerator({ kernel, binary: fake.binary, kvmDevice: '/dev/null' })).toMatchObject({ accel: 'kvm' });
  });

  it('chooses TCG with QEMU\'s stderr when the trial aborts', async () => {
    const fake = fakeQemu('qemu-abort', `echo "error: failed to set MSR 0x10a" >&2; kill -ABRT $$`);
    const result = await probeAccelerator({ kernel, binary: fake.binary, kvmDevice: '/dev/null' });
    expect(result).toMatchObject({ accel: 'tcg', source: 'trial' });
    expect(result.reason).toContain('killed by SIGABRT');
    expect(result.reason).toContain('failed to set MSR 0x10a');
  });

  it('chooses TCG when the binary cannot run', async () => {
    const result = await probeAccelerator({ kernel, binary: join(dir, 'no-qemu'), kvmDevice: '/dev/null' });
    expect(result).toMatchObject({ accel: 'tcg', source: 'trial' });
    expect(result.reason).toContain('ENOENT');
  });

  it('kills a hanging trial at the limit, chooses TCG and cleans up', async () => {
    const fake = fakeQemu('qemu-hang', `echo "Linux version 6.1" >> "$console"; exec sleep 60`);
    const t0 = Date.now();
    const result = await probeAccelerator({ kernel, binary: fake.binary, kvmDevice: '/dev/null', timeoutMs: 700, tmpDir: trialTmp });
    const ms = Date.now() - t0;
    expect(result).toMatchObject({ accel: 'tcg', source: 'trial' });
    expect(result.reason).toContain('timed out');
    expect(ms).toBeGreaterThanOrEqual(700);
    expect(ms).toBeLessThan(5000);
    const pid = Number(fake.calls()[0]?.split(' ')[0]);
    expect(running(pid)).toBe(false);
    expect(probeDirs()).toEqual([]);
  });

  it('builds the trial argv with initrd and escaped console path', () => {
    const argv = probeArgv({ kernel: '/k', initrd: '/i' }, '/t,x/console');
    expect(argv.join(' ')).toContain('-accel kvm -cpu host');
    expect(argv).toContain('file,id=probe-console,path=/t,,x/console');
    expect(argv.slice(-4)).toEqual(['-initrd', '/i', '-append', PROBE_CMDLINE_FLAG]);
  });
});
