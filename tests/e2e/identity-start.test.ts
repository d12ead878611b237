// Defects 12 and 13 of the hardening issue, with the real guest:
// - one identity step for every new VM made from another: linked, instant
//   and full clones (of a running and of a stopped source), a fork child and
//   a restored checkpoint each get their own hostname and /etc/machine-id
//   (the source's are set as a stock guest keeps them), applied in the guest
//   once its agent answers (a clone at its first boot);
// - `vm start` returns only when the guest is usable, for any guest: the
//   embedded guest booted through the generic kernel path (no defaultGuest
//   flag) has its agent answering when start returns; a guest created with
//   guestAgent: false starts without waiting and refuses exec clearly; a guest
//   whose agent never answers fails its start with GUEST_AGENT_UNAVAILABLE
//   after the timeout asked for, and nothing of it keeps running.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import { loadDefaultGuest } from '../../src/guest/index.ts';
import type { TaskRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, makeTestHome } from '../harness.ts';

const SOURCE_MACHINE_ID = '0123456789abcdef0123456789abcdef';

describe('identity of new VMs, and start returning when the guest is usable', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  const wait = async (task: TaskRecord | undefined | null) => daemon.engine.tasks.wait(task?.id as string);
  const sh = async (vm: string, script: string) => {
    const r = await daemon.engine.exec(vm, { path: '/bin/sh', args: ['-c', script] });
    return Buffer.from(r.stdout, 'base64').toString('utf8').trim();
  };
  /** Hostname and machine-id as the guest sees them. */
  const identityOf = async (vm: string) => {
    const [hostname, machineId] = (await sh(vm, 'hostname; cat /etc/machine-id')).split('\n');
    return { hostname, machineId };
  };
  const expectOwnIdentity = async (name: string) => {
    const seen = await identityOf(name);
    const record = await daemon.engine.resolve(name);
    expect(seen.hostname, name).toBe(name);
    expect(seen.machineId, name).not.toBe(SOURCE_MACHINE_ID);
    expect(seen.machineId, name).toBe(record.spec.identity?.machineId);
    expect(record.spec.identity?.pending, name).toBe(false);
  };

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    expect((await wait((await daemon.engine.create({ name: 'src', memory: '128M', start: true })).task)).state).toBe('succeeded');
    // As a stock guest keeps them: the source's identity, also in the state a clone copies.
    await sh('src', `echo ${SOURCE_MACHINE_ID} > /etc/machine-id`);
    expect(await identityOf('src')).toEqual({ hostname: 'src', machineId: SOURCE_MACHINE_ID });
    await daemon.storage.catalog.addDatastore({ name: 'ds', path: join(t.home, 'datastores', 'ds') });
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('gives linked, instant and full clones, fork children and restored VMs their own hostname and machine-id', async () => {
    const linked = await daemon.storage.clone('src', { name: 'cl-linked', mode: 'linked', start: true });
    const instant = await daemon.storage.clone('src', { name: 'cl-instant', mode: 'instant' });
    const full = await daemon.storage.clone('src', { name: 'cl-full', mode: 'full', datastore: 'ds', start: true });
    expect((await wait(linked.task)).state).toBe('succeeded');
    expect((await wait(instant.task)).state).toBe('succeeded');
    const job = await daemon.storage.jobs.wait(full.job?.id as string);
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const fullVm = await daemon.engine.resolve('cl-full');
    const fullStart = (await daemon.engine.tasks.list(50)).find((task) => task.kind === 'vm.start' && task.targetId === fullVm.id);
    expect((await wait(fullStart)).state).toBe('succeeded');
    const fork = await wait((await daemon.engine.fork('src', { count: 1 })).task);
    expect(fork.state).toBe('succeeded');
    const checkpoint = await wait((await daemon.engine.checkpoint('src', { name: 'ck' })).task);
    expect(checkpoint.state).toBe('succeeded');
    const restored = await wait((await daemon.engine.restore({ checkpoint: 'ck', name: 'restored', mode: 'eager' })).task);
    expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');
    for (const name of ['cl-linked', 'cl-instant', 'cl-full', 'src-c1', 'restored']) await expectOwnIdentity(name);
    expect(await identityOf('src')).toEqual({ hostname: 'src', machineId: SOURCE_MACHINE_ID });
  });

  it('gives a clone of a stopped source its identity at its first boot', async () => {
    await wait((await daemon.engine.stop('src')).task);
    const clone = await daemon.storage.clone('src', { name: 'cl-cold', mode: 'linked' });
    expect(clone.vm?.spec.identity?.pending).toBe(true);
    const started = await wait((await daemon.engine.start('cl-cold')).task);
    expect(started.state, JSON.stringify(started.error)).toBe('succeeded');
    expect((started.result as { identity: { ok: boolean } }).identity.ok).toBe(true);
    await expectOwnIdentity('cl-cold');
  });

  it('returns from start of a guest booted through the generic kernel path only once its agent answers', async () => {
    const images = join(t.home, 'images');
    const guestDir = join(images, readdirSync(images).find((d) => d.startsWith('default-guest-')) as string);
    const guest = await loadDefaultGuest();
    const kernel = { path: join(guestDir, 'vmlinuz'), initrd: join(guestDir, 'initrd.img'), cmdline: guest.cmdline };
    const created = await daemon.engine.create({ name: 'generic', memory: '128M', kernel, network: 'none', start: true });
    expect(created.vm.spec.defaultGuest).toBe(false);
    const started = await wait(created.task);
    expect(started.state, JSON.stringify(started.error)).toBe('succeeded');
    expect((started.result as { guestAgent: string }).guestAgent).toBe('answered');
    // The guest prints this just before it runs qemu-ga, seconds after QEMU is up (under TCG).
    expect(await daemon.engine.console('generic')).toContain('OFFSHOOT-GUEST-READY');
    expect(await sh('generic', 'echo usable')).toBe('usable');
    await daemon.engine.kill('generic');

    const noAgent = await daemon.engine.create({ name: 'no-agent', memory: '128M', kernel, network: 'none', guestAgent: false, start: true });
    const plain = await wait(noAgent.task);
    expect(plain.state).toBe('succeeded');
    expect((plain.result as { guestAgent: string }).guestAgent).toBe('none');
    await expect(daemon.engine.exec('no-agent', { path: '/bin/true' })).rejects.toMatchObject({ code: 'GUEST_AGENT_ABSENT', status: 409 });
    await daemon.engine.kill('no-agent');

    // A shell as init, waiting on the console, so no agent ever: the start fails after the time asked for,
    // and nothing of it keeps running.
    const silent = await daemon.engine.create({ name: 'silent', memory: '128M', kernel: { ...kernel, cmdline: `${guest.cmdline} rdinit=/bin/sh` }, network: 'none', start: true, startTimeoutMs: 3000 });
    const failed = await wait(silent.task);
    expect(failed.state).toBe('failed');
    expect(failed.error?.code).toBe('GUEST_AGENT_UNAVAILABLE');
    expect(failed.error?.message).toMatch(/3000 ms.*guestAgent: false/);
    expect((await daemon.engine.resolve('silent')).state).toBe('failed');
    expect(t.qemus().filter((q) => q.vmId === silent.vm.id)).toEqual([]);
  });
});
