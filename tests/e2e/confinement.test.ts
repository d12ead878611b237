// QEMU confined, guest memory and the home private (defects 5 and 14 of the
// hardening issue, and its "Confine QEMU" part), with an in-process daemon:
// - a VM's QEMU runs as the offshoot-qemu user with no capabilities and its
//   seccomp sandbox on, and `host show` (GET /host) says so, with the reason
//   for whatever is not confined (lazy restore without
//   vm.unprivileged_userfaultfd);
// - the memory folder is 0700 and RAM files 0600; the home's own files are
//   0600; nothing under the home is open to other users; a disk imported from
//   a 0640 file is at most 0640;
// - once every VM is deleted and the daemon stopped, nothing of the home is
//   left in the memory folder (not even the empty folder or templates/).
import { readFileSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import type { TaskRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, hostPathOf, makeTestHome, ramFileOf } from '../harness.ts';
import { privacyProblems } from '../invariants.ts';

const QEMU_USER = 'offshoot-qemu';

function statusOf(pid: number): Record<string, string> {
  return Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .map((l) => l.split(':\t'))
      .filter((p) => p.length === 2)
      .map(([k, v]) => [k as string, (v as string).trim()]),
  );
}

function uidOf(name: string): number {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${name}:`));
  return Number(line?.split(':')[2]);
}

describe('QEMU confined, memory and home private', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  const mode = (path: string) => statSync(path).mode & 0o777;
  const wait = async (p: Promise<{ task?: TaskRecord }>) => daemon.engine.tasks.wait((await p).task?.id as string);

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('runs QEMU as its own unprivileged user inside its seccomp sandbox, and says so', async () => {
    const host = await t.client().host();
    expect(host.confinement).toMatchObject({ user: QEMU_USER, confined: true, sandbox: true });
    const uffd = readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1';
    expect(host.confinement.lazyRestoreConfined).toBe(uffd);
    if (!uffd) expect(host.confinement.reasons.join(' ')).toMatch(/unprivileged_userfaultfd/);
    expect((await wait(daemon.engine.create({ name: 'conf', memory: '128M', start: true }))).state).toBe('succeeded');
    const pid = (await daemon.engine.resolve('conf')).runtime?.pid as number;
    const status = statusOf(pid);
    expect(status.Uid?.split(/\s+/).map(Number)).toEqual(Array(4).fill(uidOf(QEMU_USER)));
    expect(status.CapEff).toBe('0000000000000000');
    expect(status.Seccomp).toBe('2');
    expect(status.NoNewPrivs).toBe('1');
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')).toContain('on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    // The guest works as ever: a fork (device state over agent-served sockets, no exec:) and an exec.
    const fork = await wait(daemon.engine.fork('conf', { count: 1 }));
    expect(fork.state, JSON.stringify(fork.error)).toBe('succeeded');
    const child = (await daemon.engine.list()).find((v) => v.name === 'conf-c1');
    expect(statusOf(child?.runtime?.pid as number).Uid?.split(/\s+/)[0]).toBe(String(uidOf(QEMU_USER)));
    const out = await daemon.engine.exec('conf-c1', { path: '/bin/sh', args: ['-c', 'echo ok'] });
    expect(Buffer.from(out.stdout, 'base64').toString()).toBe('ok\n');
  });

  it('keeps guest memory and the home private', async () => {
    expect(mode(t.memoryDir)).toBe(0o700);
    for (const f of ['inventory.sqlite', 'daemon.log', 'token', 'daemon.json']) expect(mode(join(t.home, f)), f).toBe(0o600);
    const vms = await daemon.engine.list();
    for (const vm of vms) expect(mode(ramFileOf(t.memoryDir, vm)), vm.name).toBe(vm.runtime?.memory.mode === 'owned' ? 0o600 : mode(ramFileOf(t.memoryDir, vm)) & 0o700);
    expect(privacyProblems(t.home)).toEqual([]);
    expect(privacyProblems(t.memoryDir)).toEqual([]);
  });

  it('imports a disk no more readable than its source', async () => {
    const ds = join(t.home, 'datastores', 'ds1');
    await daemon.storage.catalog.addDatastore({ name: 'ds1', path: ds });
    const source = join(t.home, 'source.raw');
    writeFileSync(source, Buffer.alloc(1 << 20));
    chmodSync(source, 0o640);
    const disk = await daemon.storage.catalog.importDisk({ datastore: 'ds1', name: 'imported', source, format: 'raw' });
    expect(mode(hostPathOf(t.home, disk.file)) & ~0o640).toBe(0);
    chmodSync(source, 0o600);
    const strict = await daemon.storage.catalog.importDisk({ datastore: 'ds1', name: 'strict', source, format: 'raw' });
    expect(mode(hostPathOf(t.home, strict.file)) & ~0o600).toBe(0);
    await daemon.storage.catalog.deleteDisk('ds1/imported');
    await daemon.storage.catalog.deleteDisk('ds1/strict');
    await daemon.storage.catalog.removeDatastore('ds1');
  });

  it('leaves nothing in the memory folder once every VM is deleted and the daemon stopped', async () => {
    for (const vm of await daemon.engine.list()) {
      await daemon.engine.kill(vm.id).catch(() => undefined);
      await daemon.engine.delete(vm.id);
    }
    await daemon.close();
    expect(() => statSync(t.memoryDir)).toThrow(/ENOENT/);
    // A daemon again for closeTestDaemon, which checks the home.
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
  });
});
