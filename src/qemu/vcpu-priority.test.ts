// A real QEMU (paused at -S, two vCPUs): setVcpuNice changes the nice value
// of its vCPU threads only; its main thread (monitor, devices) keeps its own.
// setAutogroupNice changes the scheduler group of a QEMU in a session of its
// own (as the agent starts them), never the caller's own.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../common/index.ts';
import { QmpClient } from './qmp-client.ts';
import { probeSocket } from './testing/test-utils.ts';
import { setAutogroupNice, setVcpuNice, vcpuThreadIds } from './vcpu-priority.ts';

/** A thread's nice value, from /proc (field 19 of its stat, after the command name in parentheses). */
async function niceOf(pid: number, tid: number): Promise<number> {
  const line = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  return Number(line.slice(line.lastIndexOf(')') + 2).split(' ')[16]);
}

describe('vCPU thread priority (real QEMU)', () => {
  let dir: string;
  let child: ReturnType<typeof spawn>;
  let qmp: QmpClient;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'offshoot-vcpu-'));
    const socketPath = path.join(dir, 'qmp.sock');
    child = spawn('qemu-system-x86_64', ['-machine', 'pc', '-S', '-nodefaults', '-display', 'none', '-accel', 'tcg', '-smp', '2', '-m', '64', '-qmp', `unix:${socketPath},server=on,wait=off`], { stdio: 'ignore' });
    await waitFor(async () => ((await stat(socketPath).then(() => true, () => false)) && (await probeSocket(socketPath)) ? true : undefined), 20_000, 'QEMU QMP socket', 20);
    qmp = await QmpClient.connect(socketPath);
  }, 30_000);

  afterAll(async () => {
    qmp?.close();
    child?.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('renices each vCPU thread and nothing else', async () => {
    const pid = child.pid as number;
    const tids = await vcpuThreadIds(qmp);
    expect(tids).toHaveLength(2);
    expect(tids).not.toContain(pid);
    expect(await setVcpuNice(qmp, 7)).toEqual(tids);
    for (const tid of tids) expect(await niceOf(pid, tid)).toBe(7);
    expect(await niceOf(pid, pid)).toBe(0);
    // Back to the default value of its other threads.
    await setVcpuNice(qmp, 0);
    for (const tid of tids) expect(await niceOf(pid, tid)).toBe(0);
  });

  it("gives a QEMU in a session of its own that session's scheduler group, never the caller's", async () => {
    const own = await readFile('/proc/self/autogroup', 'utf8').catch(() => null);
    // A kernel without autogroups: nothing to change.
    if (own === null) {
      expect(await setAutogroupNice(child.pid as number, 7)).toBe(false);
      return;
    }
    // This test's QEMU shares the test's session: left alone.
    expect(await setAutogroupNice(child.pid as number, 7)).toBe(false);
    expect(await readFile('/proc/self/autogroup', 'utf8')).toBe(own);
    const detached = spawn('qemu-system-x86_64', ['-machine', 'none', '-nodefaults', '-display', 'none', '-S'], { stdio: 'ignore', detached: true });
    try {
      await waitFor(async () => ((await readFile(`/proc/${detached.pid}/autogroup`, 'utf8').catch(() => '')) !== own ? true : undefined), 10_000, 'a QEMU in its own session', 20);
      expect(await setAutogroupNice(detached.pid as number, 7)).toBe(true);
      expect(await readFile(`/proc/${detached.pid}/autogroup`, 'utf8')).toMatch(/ nice 7\n?$/);
      expect(await readFile('/proc/self/autogroup', 'utf8')).toBe(own);
    } finally {
      detached.kill('SIGKILL');
    }
    await expect(setAutogroupNice(detached.pid as number, 20)).rejects.toThrow(RangeError);
  });

  it('refuses a value Linux does not have', async () => {
    await expect(setVcpuNice(qmp, 20)).rejects.toThrow(RangeError);
    await expect(setVcpuNice(qmp, -1)).rejects.toThrow(RangeError);
  });
});
