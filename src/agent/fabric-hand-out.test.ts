// The hand-out's guest step against a scripted guest agent: armed (a request
// written to the waiter's FIFO, its exit polled) and not armed (identity file
// writes, the clock, a shell only for a script), how it reads the outcome.
// The real guest runs it in tests/e2e/fabric.test.ts.
import { describe, expect, it } from 'vitest';
import type { QgaBatchCall, QgaClient, QgaExecResult } from '../qemu/index.ts';
import { QgaCommandError, QgaTimeoutError } from '../qemu/index.ts';
import { handOutInGuest, pollDelayMs } from './fabric-hand-out.ts';

interface Started {
  path: string;
  args: string[];
  env: string[];
  input: string;
}

/** A guest agent whose process exits at the `exitAfter`-th status poll with `outcome`. */
function scriptedAgent(exitAfter: number, outcome: { exitcode?: number; signal?: number; out?: string; err?: string }, failFile?: string) {
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
      return calls.map((c) => ({ ok: true, value: c.command === 'guest-file-write' ? { count: (c.args as { count: number }).count } : {} }));
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

const armed = { pid: 7, handle: 42 };

describe('hand-out guest step', () => {
  it('armed: writes the request (hostname, fresh entropy, then the env and script) to the waiter in one batch with the clock only when asked, and polls its exit', async () => {
    const a = scriptedAgent(3, { exitcode: 0, out: 'hello\n' });
    const r = await handOutInGuest(a.qga, { hostname: 'job-one', vmId: 'vm-1', script: 'echo hello\n', env: ['A=it\'s'], timeoutMs: 5_000, setClock: true }, armed);
    expect(r).toMatchObject({ ok: true, error: null, script: { exitCode: 0, stdout: 'hello\n', stderr: '' }, steps: { armed: true, polls: 3 } });
    expect(a.started).toEqual([]);
    expect(a.batches).toHaveLength(1);
    const [write, close, clock] = a.batches[0] as QgaBatchCall[];
    expect([write?.command, close?.command, clock?.command]).toEqual(['guest-file-write', 'guest-file-close', 'guest-set-time']);
    expect(Math.abs((clock?.args as { time: number }).time / 1e6 - Date.now())).toBeLessThan(60_000);
    expect((close?.args as { handle: number }).handle).toBe(42);
    const request = Buffer.from((write?.args as { 'buf-b64': string })['buf-b64'], 'base64').toString();
    const [hostname, seed, hasScript, ...rest] = request.split('\n');
    expect([hostname, hasScript]).toEqual(['job-one', '1']);
    expect(seed).toMatch(/^[0-9a-f]{64}$/);
    expect(rest.join('\n')).toBe("export 'A=it'\\''s'\necho hello\n");

    const b = scriptedAgent(1, { exitcode: 0 });
    const warm = await handOutInGuest(b.qga, { hostname: 'warm', vmId: 'vm-2', timeoutMs: 5_000, setClock: false }, armed);
    expect(warm).toMatchObject({ ok: true, script: null });
    expect(b.batches[0]?.map((c) => c.command)).toEqual(['guest-file-write', 'guest-file-close']);
    const warmRequest = Buffer.from(((b.batches[0] as QgaBatchCall[])[0]?.args as { 'buf-b64': string })['buf-b64'], 'base64').toString().split('\n');
    expect([warmRequest[0], warmRequest[2]]).toEqual(['warm', '0']);
    // Fresh entropy each time.
    expect(warmRequest[1]).not.toBe(seed);
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

    // A script too large for the waiter's FIFO goes the unarmed way, and the waiter is let go (its FIFO closed).
    const c = scriptedAgent(1, { exitcode: 0 });
    await handOutInGuest(c.qga, { hostname: 'big', vmId: 'vm-4', script: 'x'.repeat(64 * 1024), timeoutMs: 5_000, setClock: false }, armed);
    expect(c.batches[0]).toEqual([{ command: 'guest-file-close' }]);
    expect(c.started).toHaveLength(1);
  });

  it("reports a failed identity step, a failed script with its output, and a signal; never the identity's failure as the script's", async () => {
    const identity = await handOutInGuest(scriptedAgent(1, { exitcode: 97, err: 'offshoot: cannot set the hostname\n' }).qga, { hostname: 'h', vmId: 'v', script: 'true', timeoutMs: 5_000, setClock: true }, armed);
    expect(identity).toMatchObject({ ok: false, script: null });
    expect(identity.error).toMatch(/identity step exited with 97: offshoot: cannot set the hostname/);
    const noRequest = await handOutInGuest(scriptedAgent(1, { exitcode: 96 }).qga, { hostname: 'h', vmId: 'v', script: 'true', timeoutMs: 5_000, setClock: false }, armed);
    expect(noRequest).toMatchObject({ ok: false, script: null });
    const files = await handOutInGuest(scriptedAgent(1, { exitcode: 0 }, '/etc/hosts').qga, { hostname: 'h', vmId: 'v', script: 'true', timeoutMs: 5_000, setClock: false });
    expect(files).toMatchObject({ ok: false, script: null });
    expect(files.error).toMatch(/identity step failed: .*\/etc\/hosts: Permission denied/);
    const script = await handOutInGuest(scriptedAgent(2, { exitcode: 3, out: 'partial', err: 'boom' }).qga, { hostname: 'h', vmId: 'v', script: 'exit 3', timeoutMs: 5_000, setClock: false }, armed);
    expect(script).toMatchObject({ ok: false, error: 'the customisation script exited with 3', script: { exitCode: 3, stdout: 'partial', stderr: 'boom' } });
    const killed = await handOutInGuest(scriptedAgent(1, { signal: 9 }).qga, { hostname: 'h', vmId: 'v', timeoutMs: 5_000, setClock: false }, armed);
    expect(killed).toMatchObject({ ok: false, script: null });
    expect(killed.error).toMatch(/signal 9/);
  });

  it('gives up when the step does not end in its time limit', async () => {
    const stuck = scriptedAgent(Number.POSITIVE_INFINITY, {});
    await expect(handOutInGuest(stuck.qga, { hostname: 'h', vmId: 'v', timeoutMs: 100, setClock: false }, armed)).rejects.toThrow(/did not end within 100 ms \(guest pid 7\)/);
    expect(stuck.polls()).toBeGreaterThan(1);
    expect(stuck.delays[0]).toBe(2);
  });

  it('polls often at first, less for a long script, and less while more hand-outs run than there are CPUs', () => {
    expect(pollDelayMs(0, 1, 2)).toBe(2);
    expect(pollDelayMs(500, 1, 2)).toBe(10);
    expect(pollDelayMs(5_000, 2, 2)).toBe(100);
    expect(pollDelayMs(0, 20, 2)).toBe(20);
    expect(pollDelayMs(5_000, 20, 2)).toBe(200);
  });
});
