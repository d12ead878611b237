// The hand-out's guest step against a scripted guest agent (what it asks the
// guest to run, how it polls for the exit and reads the outcome). The real
// guest runs it in tests/e2e/fabric.test.ts.
import { describe, expect, it } from 'vitest';
import type { QgaClient } from '../qemu/index.ts';
import { handOutInGuest, pollDelayMs } from './fabric-hand-out.ts';

interface Exec {
  path: string;
  arg: string[];
  env: string[];
  'input-data': string;
}

/** A guest agent whose process exits at the `exitAfter`-th status poll with `outcome`. */
function scriptedAgent(exitAfter: number, outcome: { exitcode?: number; signal?: number; out?: string; err?: string }) {
  const execs: Exec[] = [];
  let polls = 0;
  const qga = {
    async execute(command: string, args: Record<string, unknown>) {
      if (command === 'guest-exec') {
        execs.push(args as unknown as Exec);
        return { pid: 7 };
      }
      if (command === 'guest-exec-status') {
        expect(args.pid).toBe(7);
        polls++;
        if (polls < exitAfter) return { exited: false };
        return { exited: true, exitcode: outcome.exitcode, signal: outcome.signal, 'out-data': Buffer.from(outcome.out ?? '').toString('base64'), 'err-data': Buffer.from(outcome.err ?? '').toString('base64') };
      }
      throw new Error(`unexpected ${command}`);
    },
  } as unknown as QgaClient;
  return { qga, execs, polls: () => polls };
}

describe('hand-out guest step', () => {
  it('runs one shell with the hostname, the clock only when asked, fresh entropy then the script on stdin, and the env; polls until the exit', async () => {
    const a = scriptedAgent(3, { exitcode: 0, out: 'hello\n' });
    const r = await handOutInGuest(a.qga, { hostname: 'job-one', vmId: 'vm-1', script: 'echo hello\n', env: ['A=1'], timeoutMs: 5_000, setClock: true });
    expect(r).toMatchObject({ ok: true, error: null, script: { exitCode: 0, stdout: 'hello\n', stderr: '' } });
    expect(r.steps.polls).toBe(3);
    expect(a.execs).toHaveLength(1);
    const exec = a.execs[0] as Exec;
    expect(exec.path).toBe('/bin/sh');
    const [, , name, hostname, seconds, hasScript] = exec.arg;
    expect([name, hostname, hasScript]).toEqual(['offshoot-claim', 'job-one', '1']);
    expect(Math.abs(Number(seconds) - Date.now() / 1000)).toBeLessThan(60);
    const input = Buffer.from(exec['input-data'], 'base64').toString();
    expect(input).toMatch(/^[0-9a-f]{64}\necho hello\n$/);
    expect(exec.env).toEqual(expect.arrayContaining(['OFFSHOOT_VM_NAME=job-one', 'OFFSHOOT_VM_ID=vm-1', 'A=1']));

    const b = scriptedAgent(1, { exitcode: 0 });
    const warm = await handOutInGuest(b.qga, { hostname: 'warm', vmId: 'vm-2', timeoutMs: 5_000, setClock: false });
    expect(warm).toMatchObject({ ok: true, script: null });
    expect(b.execs[0]?.arg.slice(3)).toEqual(['warm', '', '0']);
    // Fresh entropy each time.
    expect(Buffer.from(b.execs[0]?.['input-data'] as string, 'base64').toString()).not.toBe(input.slice(0, 65));
  });

  it("reports a failed identity step, a failed script with its output, and a signal; never the identity's failure as the script's", async () => {
    const identity = await handOutInGuest(scriptedAgent(1, { exitcode: 97, err: 'offshoot: cannot set the hostname\n' }).qga, { hostname: 'h', vmId: 'v', script: 'true', timeoutMs: 5_000, setClock: true });
    expect(identity).toMatchObject({ ok: false, script: null });
    expect(identity.error).toMatch(/identity step exited with 97: offshoot: cannot set the hostname/);
    const script = await handOutInGuest(scriptedAgent(2, { exitcode: 3, out: 'partial', err: 'boom' }).qga, { hostname: 'h', vmId: 'v', script: 'exit 3', timeoutMs: 5_000, setClock: false });
    expect(script).toMatchObject({ ok: false, error: 'the customisation script exited with 3', script: { exitCode: 3, stdout: 'partial', stderr: 'boom' } });
    const killed = await handOutInGuest(scriptedAgent(1, { signal: 9 }).qga, { hostname: 'h', vmId: 'v', timeoutMs: 5_000, setClock: false });
    expect(killed).toMatchObject({ ok: false, script: null });
    expect(killed.error).toMatch(/signal 9/);
  });

  it('gives up when the step does not end in its time limit', async () => {
    const stuck = scriptedAgent(Number.POSITIVE_INFINITY, {});
    await expect(handOutInGuest(stuck.qga, { hostname: 'h', vmId: 'v', timeoutMs: 100, setClock: false })).rejects.toThrow(/did not end within 100 ms \(guest pid 7\)/);
    expect(stuck.polls()).toBeGreaterThan(1);
  });

  it('polls often at first, less for a long script, and less while more hand-outs run than there are CPUs', () => {
    expect(pollDelayMs(0, 1, 2)).toBe(2);
    expect(pollDelayMs(500, 1, 2)).toBe(10);
    expect(pollDelayMs(5_000, 2, 2)).toBe(100);
    expect(pollDelayMs(0, 20, 2)).toBe(20);
    expect(pollDelayMs(5_000, 20, 2)).toBe(200);
  });
});
