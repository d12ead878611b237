// The hand-out's guest step against a scripted guest agent: armed (one batch
// through the handles opened at arming: identity, clock, a script written to
// the waiter's FIFO and then its exit polled) and not armed (identity file
// writes, the clock, a shell only for a script), how it reads the outcome.
// The real guest runs it in tests/e2e/fabric.test.ts.
import { describe, expect, it } from 'vitest';
import type { QgaBatchCall, QgaClient, QgaExecResult } from '../qemu/index.ts';
import { QgaCommandError, QgaTimeoutError } from '../qemu/index.ts';
import { handOutInGuest, isArmedHandOut, pollDelayMs } from './fabric-hand-out.ts';

interface Started {
  path: string;
  args: string[];
  env: string[];
  input: string;
}

/** A guest agent whose process exits at the `exitAfter`-th status poll with `outcome`. */
function scriptedAgent(exitAfter: number, outcome: { exitcode?: number; signal?: number; out?: string; err?: string }, failFile?: string, failHandle?: number) {
  const started: Started[] = [];
  const files: Array<{ path: string; data: Buffer }> = [];
  const batches: QgaBatchCall[][] = [];
  const delays: number[] = [];
  let polls = 0;
  const qga = {
    async writeFiles(list: Array<{ path: string; data: Buffer | string }>, options: { then?: QgaBatchCall[] }) {
      for (const f of list) {
        if (f.path === failFile) throw new QgaCommandError('guest-file-open', 'GenericError', `${f.path}: Permission denied`);
        files.push({ path: f.path, data: Buffer.from(f.data) });
      }
      batches.push(options.then ?? []);
    },
    async executeBatch(calls: QgaBatchCall[]) {
      batches.push(calls);
      return calls.map((c) => {
        if ((c.args as { handle?: number } | undefined)?.handle === failHandle && c.command === 'guest-file-close') return { ok: false, error: new QgaCommandError('guest-file-close', 'GenericError', 'failed to close handle: Invalid argument') };
        return { ok: true, value: c.command === 'guest-file-write' ? { count: (c.args as { count: number }).count } : {} };
      });
    },
    async execute(command: string) {
      batches.push([{ command }]);
      return {};
    },
    async start(path: string, args: string[], options: { env?: string[]; input?: string }) {
      started.push({ path, args, env: options.env ?? [], input: options.input ?? '' });
      return 7;
    },
    async waitExec(pid: number, options: { timeoutMs: number; pollDelayMs: (elapsed: number, polls: number) => number }): Promise<QgaExecResult> {
      expect(pid).toBe(7);
      const deadline = Date.now() + options.timeoutMs;
      for (;;) {
        const d = options.pollDelayMs(0, polls);
        delays.push(d);
        if (Date.now() + d >= deadline) throw new QgaTimeoutError('exec', options.timeoutMs, { pid });
        await new Promise((r) => setTimeout(r, d));
        polls++;
        if (polls >= exitAfter) break;
      }
      return { exitCode: outcome.signal === undefined ? (outcome.exitcode ?? null) : null, signal: outcome.signal ?? null, stdout: Buffer.from(outcome.out ?? ''), stderr: Buffer.from(outcome.err ?? ''), stdoutTruncated: false, stderrTruncated: false, timings: { execMs: 0, exitMs: 1, polls } };
    },
  } as unknown as QgaClient;
  return { qga, started, files, batches, delays, polls: () => polls };
}

const armed = { pid: 7, handle: 42, files: { '/proc/sys/kernel/hostname': 10, '/etc/hostname': 11, '/etc/hosts': 12, '/dev/urandom': 13 } };

/** The bytes a batch's guest-file-write calls wrote, by handle. */
function writes(calls: QgaBatchCall[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const c of calls) if (c.command === 'guest-file-write') out.set((c.args as { handle: number }).handle, Buffer.from((c.args as { 'buf-b64': string })['buf-b64'], 'base64'));
  return out;
}

describe('hand-out guest step', () => {
  it('armed, no script: one batch of writes and closes through the armed handles (the clock only when asked, the FIFO closed last), no process, no poll', async () => {
    const a = scriptedAgent(1, { exitcode: 0 });
    const r = await handOutInGuest(a.qga, { hostname: 'warm', vmId: 'vm-2', timeoutMs: 5_000, setClock: true }, armed);
    expect(r).toMatchObject({ ok: true, error: null, script: null, steps: { armed: true } });
    expect(r.steps.polls).toBeUndefined();
    expect(a.polls()).toBe(0);
    expect(a.started).toEqual([]);
    expect(a.batches).toHaveLength(1);
    const calls = a.batches[0] as QgaBatchCall[];
    expect(calls.map((c) => [c.command, (c.args as { handle?: number } | undefined)?.handle])).toEqual([
      ['guest-file-write', 10],
      ['guest-file-close', 10],
      ['guest-file-write', 11],
      ['guest-file-close', 11],
      ['guest-file-write', 12],
      ['guest-file-close', 12],
      ['guest-file-write', 13],
      ['guest-file-close', 13],
      ['guest-set-time', undefined],
      ['guest-file-close', 42],
    ]);
    expect(Math.abs((calls[8]?.args as { time: number }).time / 1e6 - Date.now())).toBeLessThan(60_000);
    const w = writes(calls);
    expect([w.get(10)?.toString(), w.get(11)?.toString(), w.get(12)?.toString(), w.get(13)?.length]).toEqual(['warm', 'warm\n', '127.0.0.1\tlocalhost\n127.0.1.1\twarm\n', 32]);

    // Without the clock; fresh entropy each time.
    const b = scriptedAgent(1, { exitcode: 0 });
    expect(await handOutInGuest(b.qga, { hostname: 'warm', vmId: 'vm-2', timeoutMs: 5_000, setClock: false }, armed)).toMatchObject({ ok: true });
    expect(b.batches[0]?.map((c) => c.command)).not.toContain('guest-set-time');
    expect(writes(b.batches[0] as QgaBatchCall[]).get(13)?.equals(w.get(13) as Buffer)).toBe(false);
  });

  it('armed, with a script: the same batch also writes the name, the env and the script into the FIFO before closing it, and polls the waiter', async () => {
    const a = scriptedAgent(3, { exitcode: 0, out: 'hello\n' });
    const r = await handOutInGuest(a.qga, { hostname: 'job-one', vmId: 'vm-1', script: 'echo hello\n', env: ["A=it's"], timeoutMs: 5_000, setClock: false }, armed);
    expect(r).toMatchObject({ ok: true, error: null, script: { exitCode: 0, stdout: 'hello\n', stderr: '' }, steps: { armed: true, polls: 3 } });
    expect(a.started).toEqual([]);
    expect(a.batches).toHaveLength(1);
    const calls = a.batches[0] as QgaBatchCall[];
    expect(calls.slice(-2).map((c) => [c.command, (c.args as { handle: number }).handle])).toEqual([
      ['guest-file-write', 42],
      ['guest-file-close', 42],
    ]);
    expect(writes(calls).get(42)?.toString()).toBe("job-one\nexport 'A=it'\\''s'\necho hello\n");
    expect(writes(calls).get(10)?.toString()).toBe('job-one');
  });

  it('armed: a failed identity write or close fails the hand-out, naming the file; a waiter that got no script fails it too', async () => {
    const closeFailed = await handOutInGuest(scriptedAgent(1, { exitcode: 0 }, undefined, 10).qga, { hostname: 'x'.repeat(70), vmId: 'v', timeoutMs: 5_000, setClock: false }, armed);
    expect(closeFailed).toMatchObject({ ok: false, script: null, steps: { armed: true } });
    expect(closeFailed.error).toMatch(/identity step failed: \/proc\/sys\/kernel\/hostname: .*Invalid argument/);
    const noScript = await handOutInGuest(scriptedAgent(1, { exitcode: 96 }).qga, { hostname: 'h', vmId: 'v', script: 'true', timeoutMs: 5_000, setClock: false }, armed);
    expect(noScript).toMatchObject({ ok: false, script: null });
    expect(noScript.error).toMatch(/waiter got no script/);
    const fifoFailed = await handOutInGuest(scriptedAgent(1, { exitcode: 0 }, undefined, 42).qga, { hostname: 'h', vmId: 'v', script: 'true', timeoutMs: 5_000, setClock: false }, armed);
    expect(fifoFailed).toMatchObject({ ok: false, script: null });
    expect(fifoFailed.error).toMatch(/did not reach the guest's waiter/);
  });

  it('reads back an armed record only when it is whole', () => {
    expect(isArmedHandOut(JSON.parse(JSON.stringify(armed)))).toBe(true);
    expect(isArmedHandOut({ pid: 7, handle: 42 })).toBe(false);
    expect(isArmedHandOut({ ...armed, files: { ...armed.files, '/etc/hosts': -1 } })).toBe(false);
    expect(isArmedHandOut(null)).toBe(false);
  });

  it('not armed: the identity as file writes (the clock in the same batch when asked), and a shell only for a script', async () => {
    const a = scriptedAgent(1, { exitcode: 0 });
    const r = await handOutInGuest(a.qga, { hostname: 'plain', vmId: 'vm-3', timeoutMs: 5_000, setClock: true });
    expect(r).toMatchObject({ ok: true, script: null, steps: { armed: false } });
    expect(a.started).toEqual([]);
    expect(a.files.map((f) => [f.path, f.path === '/dev/urandom' ? f.data.length : f.data.toString()])).toEqual([
      ['/proc/sys/kernel/hostname', 'plain'],
      ['/etc/hostname', 'plain\n'],
      ['/etc/hosts', '127.0.0.1\tlocalhost\n127.0.1.1\tplain\n'],
      ['/dev/urandom', 32],
    ]);
    expect(a.batches[0]?.map((c) => c.command)).toEqual(['guest-set-time']);

    const b = scriptedAgent(2, { exitcode: 0, out: 'hi' });
    const s = await handOutInGuest(b.qga, { hostname: 'plain', vmId: 'vm-3', script: 'echo hi', env: ['A=1'], timeoutMs: 5_000, setClock: false });
    expect(s).toMatchObject({ ok: true, script: { stdout: 'hi' } });
    expect(b.batches[0]).toEqual([]);
    expect(b.started).toHaveLength(1);
    expect(b.started[0]).toMatchObject({ path: '/bin/sh', args: ['-s'], input: 'echo hi' });
    expect(b.started[0]?.env).toEqual(expect.arrayContaining(['OFFSHOOT_VM_NAME=plain', 'OFFSHOOT_VM_ID=vm-3', 'A=1']));

    // Armed, a script too large for the waiter's FIFO: the identity through the handles, the waiter let go (its
    // FIFO closed with nothing in it), the script in a shell of its own.
    const c = scriptedAgent(1, { exitcode: 0 });
    const big = await handOutInGuest(c.qga, { hostname: 'big', vmId: 'vm-4', script: 'x'.repeat(64 * 1024), timeoutMs: 5_000, setClock: false }, armed);
    expect(big).toMatchObject({ ok: true, steps: { armed: true } });
    expect(writes(c.batches[0] as QgaBatchCall[]).has(42)).toBe(false);
    expect(c.batches[0]?.at(-1)).toEqual({ command: 'guest-file-close', args: { handle: 42 } });
    expect(c.started).toHaveLength(1);
  });

  it('reports a failed identity step, a failed script with its output, and a signal', async () => {
    const files = await handOutInGuest(scriptedAgent(1, { exitcode: 0 }, '/etc/hosts').qga, { hostname: 'h', vmId: 'v', script: 'true', timeoutMs: 5_000, setClock: false });
    expect(files).toMatchObject({ ok: false, script: null });
    expect(files.error).toMatch(/identity step failed: .*\/etc\/hosts: Permission denied/);
    const script = await handOutInGuest(scriptedAgent(2, { exitcode: 3, out: 'partial', err: 'boom' }).qga, { hostname: 'h', vmId: 'v', script: 'exit 3', timeoutMs: 5_000, setClock: false }, armed);
    expect(script).toMatchObject({ ok: false, error: 'the customisation script exited with 3', script: { exitCode: 3, stdout: 'partial', stderr: 'boom' } });
    const killed = await handOutInGuest(scriptedAgent(1, { signal: 9 }).qga, { hostname: 'h', vmId: 'v', script: 'kill -9 $$', timeoutMs: 5_000, setClock: false }, armed);
    expect(killed).toMatchObject({ ok: false });
    expect(killed.error).toMatch(/signal 9/);
  });

  it('gives up when the step does not end in its time limit', async () => {
    const stuck = scriptedAgent(Number.POSITIVE_INFINITY, {});
    await expect(handOutInGuest(stuck.qga, { hostname: 'h', vmId: 'v', script: 'sleep 1000', timeoutMs: 100, setClock: false }, armed)).rejects.toThrow(/did not end within 100 ms \(guest pid 7\)/);
    expect(stuck.polls()).toBeGreaterThan(1);
    expect(stuck.delays[0]).toBe(2);
  });

  it('polls often at first, less for a long script', () => {
    expect(pollDelayMs(0)).toBe(2);
    expect(pollDelayMs(500)).toBe(10);
    expect(pollDelayMs(5_000)).toBe(100);
  });
});
