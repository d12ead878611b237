// End to end through the real CLI and a detached daemon: a default guest is
// created and booted, runs commands through its agent, is paused, resumed,
// survives a daemon SIGKILL + restart (re-adopted, same QEMU, even one whose
// monitor greets only after the new daemon waited 8 s), is stopped,
// started again, killed from outside (marked failed promptly) and deleted
// with its files. Illegal operations answer ILLEGAL_STATE.
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { sleep } from '../../src/common/index.ts';
import { eventually, guestKernelRelease, makeTestHome, memoryFiles, startDetachedDaemon, waitForProcessExit } from '../harness.ts';

/** Connections waiting in the backlog of a QEMU's QMP socket (Recv-Q of its listening socket in `ss`). */
function pendingMonitorConnects(qemuPid: number): number {
  const line = execFileSync('ss', ['-xlpH'], { encoding: 'utf8' })
    .split('\n')
    .find((l) => l.includes(`pid=${qemuPid},`) && /\/qmp-[^ ]*\.sock /.test(l));
  return line ? Number(line.trim().split(/\s+/)[2]) : 0;
}

describe('VM lifecycle through the CLI', () => {
  let t: TestHome;
  let daemonPid: number;
  const name = 'life1';

  beforeAll(async () => {
    t = makeTestHome();
    daemonPid = (await startDetachedDaemon(t)).pid;
  });
  afterAll(async () => {
    await t.cleanup();
  });

  const show = async (): Promise<VmRecord> => {
    const r = await t.cli(['vm', 'show', name, '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as VmRecord;
  };

  it('refuses a second daemon on the same home', async () => {
    const second = await t.cli(['serve', '--json']);
    expect(second.code).toBe(1);
    expect(JSON.parse(second.stderr).error.code).toBe('DAEMON_ALREADY_RUNNING');
  });

  it('creates and boots the default guest with --start', async () => {
    const r = await t.cli(['vm', 'create', name, '--memory', '256M', '--vcpus', '1', '--start', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { vm: VmRecord; task: { state: string } };
    expect(out.vm.state).toBe('running');
    expect(out.task.state).toBe('succeeded');
    const list = JSON.parse((await t.cli(['vm', 'list', '--json'])).stdout) as Array<Record<string, unknown>>;
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ name, id: out.vm.id, state: 'running' });
    expect(memoryFiles(t)).toEqual([`${out.vm.id}.ram`]);
  });

  it('runs uname -r in the guest', async () => {
    const r = await t.cli(['vm', 'exec', name, '--', 'uname', '-r']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(guestKernelRelease());
  });

  it('passes stdout, stderr, stdin and the exit code through', async () => {
    const r = await t.cli(['vm', 'exec', name, '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    expect(r).toMatchObject({ code: 7, stdout: 'out\n', stderr: 'err\n' });
    const md5 = await t.cli(['vm', 'exec', name, '--stdin', '--', 'md5sum'], { input: 'hello\n' });
    expect(md5.stdout).toContain('b1946ac92492d2347c6235b4d2611184');
    const data = await t.cli(['vm', 'exec', name, '--', 'cat', '/data/README']);
    expect(data.code).toBe(0);
    expect(data.stdout.length).toBeGreaterThan(0);
  });

  it('pauses and resumes; refuses operations in the wrong state', async () => {
    expect((await t.cli(['vm', 'pause', name])).code).toBe(0);
    expect((await show()).state).toBe('paused');
    const exec = await t.cli(['vm', 'exec', name, '--json', '--', 'true']);
    expect(exec.code).toBe(1);
    expect(JSON.parse(exec.stderr).error).toMatchObject({ code: 'ILLEGAL_STATE', details: { state: 'paused', required: ['running'] } });
    expect((await t.cli(['vm', 'resume', name])).code).toBe(0);
    expect((await show()).state).toBe('running');
    for (const op of [['vm', 'start', name], ['vm', 'delete', name], ['vm', 'resume', name]]) {
      const r = await t.cli([...op, '--json']);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stderr).error.code).toBe('ILLEGAL_STATE');
    }
  });

  it('keeps the guest running across a daemon SIGKILL and re-adopts it, even when its monitor answers late', async () => {
    const before = await show();
    process.kill(daemonPid, 'SIGKILL');
    await waitForProcessExit(daemonPid, 5_000);
    const qemuPid = before.runtime?.pid as number;
    expect(t.qemus().map((q) => q.pid)).toEqual([qemuPid]);
    // A QEMU too busy to greet for longer than one connect attempt (5 s) is still the VM, not an orphan:
    // it stays stopped until the new daemon's connection has waited 8 s in its monitor's backlog.
    process.kill(qemuPid, 'SIGSTOP');
    const starting = startDetachedDaemon(t);
    starting.catch(() => undefined);
    try {
      await eventually(async () => pendingMonitorConnects(qemuPid) > 0, 60_000, "the new daemon's call on the stopped QEMU");
      await sleep(8_000);
    } finally {
      process.kill(qemuPid, 'SIGCONT');
    }
    daemonPid = (await starting).pid;
    const after = await show();
    expect(after.state).toBe('running');
    expect(after.runtime?.pid).toBe(before.runtime?.pid);
    const r = await t.cli(['vm', 'exec', name, '--', 'uname', '-r']);
    expect(r.stdout.trim()).toBe(guestKernelRelease());
    expect((await t.cli(['vm', 'pause', name])).code).toBe(0);
    expect((await t.cli(['vm', 'resume', name])).code).toBe(0);
  });

  it('forks through the CLI: prints the children, runs --customize in each, shows shared memory', async () => {
    const script = join(t.home, 'customize.sh');
    writeFileSync(script, 'echo "hello from $OFFSHOOT_VM_NAME" > /tmp/greeting\ncat /tmp/greeting\n', { mode: 0o600 });
    const r = await t.cli(['vm', 'fork', name, '--count', '2', '--prefix', 'kid', '--customize', script]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(['kid1', 'kid2']);
    expect(r.stderr).toMatch(/source stunned \d+ ms/);
    const greeting = await t.cli(['vm', 'exec', 'kid2', '--', 'cat', '/tmp/greeting']);
    expect(greeting.stdout).toBe('hello from kid2\n');
    const shown = JSON.parse((await t.cli(['vm', 'show', 'kid1', '--json'])).stdout) as VmRecord & { memory: { mode: string; sharedKiB: number } };
    expect(shown.memory.mode).toBe('derived');
    expect(shown.memory.sharedKiB).toBeGreaterThan(0);
    expect((await t.cli(['vm', 'show', 'kid1'])).stdout).toMatch(/memory use\s+rss .* shared .* private/);
    for (const kid of ['kid1', 'kid2']) {
      expect((await t.cli(['vm', 'kill', kid])).code).toBe(0);
      expect((await t.cli(['vm', 'delete', kid])).code).toBe(0);
    }
  });

  it('stops with an ACPI power-down and frees the memory file', async () => {
    const r = await t.cli(['vm', 'stop', name, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { vm: VmRecord; task: { result: { forced: boolean } } };
    expect(out.vm.state).toBe('stopped');
    expect(out.task.result.forced).toBe(false);
    expect(t.qemus()).toEqual([]);
    expect(memoryFiles(t)).toEqual([]);
  });

  it('marks the VM failed promptly when QEMU is killed from outside', async () => {
    expect((await t.cli(['vm', 'start', name])).code).toBe(0);
    const running = await show();
    expect(running.state).toBe('running');
    process.kill(running.runtime?.pid as number, 'SIGKILL');
    await eventually(async () => (await show()).state === 'failed', 5_000, 'VM to be marked failed');
    const failed = await show();
    expect(failed.stateReason).toMatch(/SIGKILL|unexpectedly/);
    expect(failed.runtime).toBeNull();
    expect(memoryFiles(t)).toEqual([]);
  });

  it('deletes the VM and its files', async () => {
    const vm = await show();
    const r = await t.cli(['vm', 'delete', name]);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(`${t.home}/vms/${vm.id}`)).toBe(false);
    expect(existsSync(`${t.home}/vms/${vm.id}`)).toBe(false);
    expect(JSON.parse((await t.cli(['vm', 'list', '--json'])).stdout)).toEqual([]);
    const missing = await t.cli(['vm', 'show', name, '--json']);
    expect(JSON.parse(missing.stderr).error.code).toBe('NOT_FOUND');
  });
});
