// The elastic fabric with the real guest, through the CLI and the API of an
// in-process daemon: a running VM with 64 MiB of random data in a tmpfs (RAM)
// and on its disk becomes a template (it runs on); its pool is scaled to 2
// paused children; a claim with a hostname, env, SSH key and a customisation
// script is checked inside the guest (its data, hostname, env file, key,
// script output, its own machine-id and MAC); two concurrent claims get
// different children; the pool refills, and survives a daemon restart (its
// children adopted, then handed out the armed way, no waiter left); a warm pool (children running idle)
// hands out a child whose clock is right though the claim did not set it,
// and a paused child's clock was set at its claim; template delete is refused while
// children exist and with --force leaves the claimed children running;
// deleting a claimed child ends its QEMU. The home's invariants hold at the
// end (tests/harness.ts), templates and all.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import type { ClaimResult, TemplateView } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, eventually, makeTestHome } from '../harness.ts';
import { GUEST_DATA_SETUP, guestShell } from '../guest-data.ts';

describe('elastic fabric: templates, ready pools, claims', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  const { sh, md5s } = guestShell(() => daemon);
  let sums: string;
  let srcMachineId: string;
  let first: ClaimResult;
  const claimed: ClaimResult[] = [];

  const ready = async () => (await daemon.fabric.show('web')).placements[0]?.children.ready ?? 0;
  const json = <T>(out: { code: number; stdout: string; stderr: string }): T => {
    expect(out.code, out.stderr).toBe(0);
    return JSON.parse(out.stdout) as T;
  };

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    const { task } = await daemon.engine.create({ name: 'src', memory: '256M', start: true });
    expect((await daemon.engine.tasks.wait(task?.id as string)).state).toBe('succeeded');
    await sh('src', GUEST_DATA_SETUP);
    sums = await md5s('src');
    srcMachineId = await sh('src', 'cat /etc/machine-id 2>/dev/null || true');
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('makes a template of a running VM (template create), which runs on', async () => {
    const made = json<TemplateView>(await t.cli(['template', 'create', 'web', '--from', 'src', '--json']));
    expect(made.state).toBe('ready');
    expect(made.placements.map((p) => [p.state, p.pool.ready])).toEqual([['ready', 0]]);
    expect((await daemon.engine.resolve('src')).state).toBe('running');
    expect(await md5s('src')).toBe(sums);
    const list = json<TemplateView[]>(await t.cli(['template', 'list', '--json']));
    expect(list.map((x) => x.name)).toEqual(['web']);
    const again = await t.cli(['template', 'create', 'web', '--from', 'src', '--json']);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('ALREADY_EXISTS');
  });

  it('keeps a pool of 2 paused ready children (template scale --wait)', async () => {
    const scaled = json<TemplateView>(await t.cli(['template', 'scale', 'web', '--ready', '2', '--wait', '--json']));
    expect(scaled.placements[0]?.children.ready).toBe(2);
    const members = await daemon.fabric.show('web');
    expect(members.placements[0]?.pool.ready).toBe(2);
    const vms = (await daemon.engine.list()).filter((v) => v.name.startsWith('web-'));
    expect(vms.map((v) => v.state)).toEqual(['paused', 'paused']);
  });

  it('hands out a customised child (vm claim) that has the template data and its own identity', async () => {
    const key = join(t.home, 'key.pub');
    writeFileSync(key, 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFabricTestKey test@offshoot\n');
    const script = join(t.home, 'custom.sh');
    writeFileSync(script, 'echo "custom $FOO $(hostname)"\necho made > /tmp/customized\n');
    first = json<ClaimResult>(await t.cli(['vm', 'claim', 'web', '--name', 'job1', '--hostname', 'job-one', '--env', 'FOO=bar', '--env', 'BAZ=two words', '--ssh-key', key, '--customize', script, '--json']));
    claimed.push(first);
    expect(first.source).toBe('pool');
    expect(first.vm.name).toBe('job1');
    expect(first.vm.state).toBe('running');
    expect(first.script?.exitCode).toBe(0);
    expect(first.script?.stdout).toContain('custom bar job-one');
    expect(await sh('job1', 'hostname')).toBe('job-one');
    expect(await sh('job1', 'cat /etc/offshoot/claim.env')).toBe('FOO=bar\nBAZ=two words');
    expect(await sh('job1', 'cat /root/.ssh/authorized_keys')).toContain('FabricTestKey');
    expect(await sh('job1', 'cat /tmp/customized')).toBe('made');
    expect(await md5s('job1')).toBe(sums);
    expect(await sh('job1', 'cat /etc/machine-id')).not.toBe(srcMachineId);
    const src = await daemon.engine.resolve('src');
    const child = await daemon.engine.resolve('job1');
    if (src.spec.nics.length > 0) expect(child.spec.nics[0]?.mac).not.toBe(src.spec.nics[0]?.mac);
    expect(child.runtime?.memory.templateId).toBe((await daemon.fabric.show('web')).placements[0]?.memoryTemplateId);
  });

  it('gives two concurrent claims different children, each its own hostname and machine-id; the pool refills', async () => {
    const pair = await Promise.all([daemon.fabric.claim('web', { hostname: 'pair-a' }), daemon.fabric.claim('web', { hostname: 'pair-b' })]);
    claimed.push(...pair);
    expect(new Set([first.vm.id, ...pair.map((c) => c.vm.id)]).size).toBe(3);
    expect(await sh(pair[0].vm.name, 'hostname')).toBe('pair-a');
    expect(await sh(pair[1].vm.name, 'hostname')).toBe('pair-b');
    const ids = await Promise.all(claimed.map((c) => sh(c.vm.name, 'cat /etc/machine-id')));
    expect(new Set([srcMachineId, ...ids]).size).toBe(4);
    await daemon.fabric.keeper.settled();
    await eventually(async () => (await ready()) === 2, 180_000, 'the pool refilled to 2');
  });

  it('keeps its pool across a daemon restart: the ready children are adopted and handed out', async () => {
    const before = (await daemon.fabric.show('web')).placements[0];
    const readyIds = (await daemon.engine.list()).filter((v) => v.state === 'paused').map((v) => v.id).sort();
    expect(readyIds).toHaveLength(2);
    await daemon.close();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    await daemon.fabric.keeper.settled();
    const after = (await daemon.fabric.show('web')).placements[0];
    expect(after?.children).toEqual(before?.children);
    expect((await daemon.engine.list()).filter((v) => v.state === 'paused').map((v) => v.id).sort()).toEqual(readyIds);
    const c = await daemon.fabric.claim('web', { hostname: 'after-restart' });
    claimed.push(c);
    expect(c.source).toBe('pool');
    expect(readyIds).toContain(c.vm.id);
    // The restarted agent found what the one before it armed in the child (qemu-ga's handles, the waiter).
    expect(c.timings.armed).toBe(true);
    expect(await sh(c.vm.name, 'hostname')).toBe('after-restart');
    expect(await sh(c.vm.name, 'cat /etc/hostname')).toBe('after-restart');
    // The claim (no script) let the waiter go: no shell of the hand-out is left in the guest.
    await eventually(async () => (await sh(c.vm.name, "grep -l 'offshoot-hand-[o]ut' /proc/[0-9]*/cmdline 2>/dev/null | wc -l")) === '0', 10_000, 'the waiter left the claimed guest');
    expect(await md5s(c.vm.name)).toBe(sums);
    await daemon.fabric.keeper.settled();
    await eventually(async () => (await ready()) === 2, 180_000, 'the pool refilled to 2 after the restart');
  });

  it('hands out a warm child (template scale --warm) running, its clock right though the claim did not set it; a paused one had its clock set', async () => {
    const guestClockOff = async (vm: string) => {
      const before = Date.now() / 1000;
      const guest = Number(await sh(vm, 'date +%s'));
      const after = Date.now() / 1000;
      return guest < before - 2 ? guest - before : guest > after + 2 ? guest - after : 0;
    };
    // The first claim's child was paused in the pool since well before it was claimed: its clock was set then.
    expect(await guestClockOff(first.vm.name)).toBe(0);
    // Scaled to one warm child: the newest paused one retires, the oldest is claimed, the refill makes a warm one.
    await daemon.fabric.scale('web', { ready: 1, warm: true }, { wait: true });
    const pausedOne = await daemon.fabric.claim('web', {});
    expect(pausedOne.source).toBe('pool');
    await daemon.engine.kill(pausedOne.vm.id);
    await daemon.engine.delete(pausedOne.vm.id);
    await daemon.fabric.keeper.settled();
    const handedOut = new Set(claimed.map((c) => c.vm.id));
    expect((await daemon.engine.list()).filter((v) => v.name.startsWith('web-') && !handedOut.has(v.id)).map((v) => v.state)).toEqual(['running']);
    const warm = await daemon.fabric.claim('web', { hostname: 'warm-one' });
    claimed.push(warm);
    expect(warm.source).toBe('pool');
    expect(await sh(warm.vm.name, 'hostname')).toBe('warm-one');
    expect(await guestClockOff(warm.vm.name)).toBe(0);
    await daemon.fabric.scale('web', { ready: 0 }, { wait: true });
  });

  it('refuses to delete the template while it has children; deleting a claimed child ends its QEMU', async () => {
    const refused = await t.cli(['template', 'delete', 'web']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('TEMPLATE_IN_USE');
    expect((await daemon.fabric.show('web')).state).toBe('ready');
    const gone = claimed.pop() as ClaimResult;
    const pid = (await daemon.engine.resolve(gone.vm.id)).runtime?.pid as number;
    await daemon.engine.kill(gone.vm.id);
    await daemon.engine.delete(gone.vm.id);
    expect(t.qemus().some((q) => q.pid === pid)).toBe(false);
    expect((await daemon.fabric.show('web')).placements[0]?.children.claimed).toBe(claimed.length);
  });

  it('template delete --force removes the pool; claimed children run on with the template data', async () => {
    const deleted = await t.cli(['template', 'delete', 'web', '--force']);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(json<TemplateView[]>(await t.cli(['template', 'list', '--json']))).toEqual([]);
    const names = (await daemon.engine.list()).map((v) => v.name).sort();
    expect(names).toEqual(['src', ...claimed.map((c) => c.vm.name)].sort());
    for (const c of claimed) {
      expect((await daemon.engine.resolve(c.vm.id)).state).toBe('running');
      expect(await md5s(c.vm.name)).toBe(sums);
    }
    expect(await t.problems()).toEqual([]);
  });
});
