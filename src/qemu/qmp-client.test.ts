// Tests of the QMP client: the shared contract against the fake server and
// against a real qemu-system-x86_64 (-machine none starts in milliseconds),
// then edge cases only the fake can produce.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { TimeoutError, waitFor } from '../common/index.ts';
import { QmpClient } from './qmp-client.ts';
import { runQmpContract } from './qmp-contract.ts';
import type { QmpContractTarget } from './qmp-contract.ts';
import { QmpCommandError, QmpDisconnectedError, QmpProtocolError, QmpTimeoutError, SocketConnectError } from './qemu-errors.ts';
import { FakeQmpServer } from './testing/fake-qmp-server.ts';
import { probeSocket } from './testing/test-utils.ts';

// ---- targets ----

async function fakeTarget(): Promise<QmpContractTarget> {
  const server = await FakeQmpServer.start();
  return {
    socketPath: server.socketPath,
    hang: () => server.hang(),
    kill: () => server.kill(),
    dispose: () => server.close(),
  };
}


function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

interface RealQemu extends QmpContractTarget {
  readonly child: ChildProcess;
}

async function startRealQemu(): Promise<RealQemu> {
  const dir = await mkdtemp(path.join(tmpdir(), 'offshoot-qmp-'));
  const socketPath = path.join(dir, 'qmp.sock');
  const child = spawn(
    'qemu-system-x86_64',
    ['-machine', 'none', '-nodefaults', '-display', 'none', '-accel', 'tcg', '-qmp', `unix:${socketPath},server=on,wait=off`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const dispose = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited(child);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`qemu exited with ${child.exitCode}: ${stderr}`);
        const exists = await stat(socketPath).then(
          () => true,
          () => false,
        );
        return exists && (await probeSocket(socketPath)) ? true : undefined;
      },
      10_000,
      'QEMU QMP socket',
      10,
    );
  } catch (err) {
    await dispose();
    throw err;
  }
  return {
    socketPath,
    child,
    hang: () => {
      child.kill('SIGSTOP');
    },
    kill: async () => {
      child.kill('SIGKILL');
      await exited(child);
    },
    dispose,
  };
}

runQmpContract('fake server', fakeTarget);
runQmpContract('qemu-system-x86_64 -machine none', startRealQemu);

// ---- real QEMU specifics ----

describe('QmpClient against real QEMU 7.2', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('a second client gets no greeting while the first is connected, and connects once it leaves', async () => {
    const qemu = await startRealQemu();
    cleanups.push(() => qemu.dispose());
    const first = await QmpClient.connect(qemu.socketPath);
    cleanups.push(() => first.close());
    const err = await QmpClient.connect(qemu.socketPath, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as QmpTimeoutError).operation).toBe('greeting');
    await first.close();
    const second = await QmpClient.connect(qemu.socketPath);
    cleanups.push(() => second.close());
    expect((await second.queryStatus()).running).toBe(true);
  });

  it('reports the QEMU version from the greeting', async () => {
    const qemu = await startRealQemu();
    cleanups.push(() => qemu.dispose());
    const qmp = await QmpClient.connect(qemu.socketPath);
    cleanups.push(() => qmp.close());
    expect(qmp.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(qmp.greeting.QMP.capabilities).toContain('oob');
  });

  it('quit ends the QEMU process', async () => {
    const qemu = await startRealQemu();
    cleanups.push(() => qemu.dispose());
    const qmp = await QmpClient.connect(qemu.socketPath);
    await qmp.quit();
    await exited(qemu.child);
    expect(qemu.child.exitCode).toBe(0);
  });
});

// ---- edge cases only the fake produces ----

describe('QmpClient edge cases (fake server)', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function fake(options: Parameters<typeof FakeQmpServer.start>[0] = {}): Promise<FakeQmpServer> {
    const server = await FakeQmpServer.start(options);
    cleanups.push(() => server.close());
    return server;
  }

  async function client(server: FakeQmpServer, options: Parameters<typeof QmpClient.connect>[1] = {}): Promise<QmpClient> {
    const qmp = await QmpClient.connect(server.socketPath, options);
    cleanups.push(() => qmp.close());
    return qmp;
  }

  it('reports a garbage line and keeps working', async () => {
    const server = await fake();
    const warnings: string[] = [];
    const qmp = await client(server, { onWarning: (m, d) => warnings.push(`${m}: ${String(d.line)}`) });
    server.sendRaw('this is not json\r\n{"half": \r\n');
    expect((await qmp.queryStatus()).running).toBe(true);
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toContain('this is not json');
  });

  it('matches replies that come out of order', async () => {
    const server = await fake({
      handlers: {
        'slow-a': async (_call, srv) => {
          await srv.waitForCommand('fast-b');
          await new Promise((r) => setTimeout(r, 20));
          return { return: 'a' };
        },
        'fast-b': () => ({ return: 'b' }),
      },
    });
    const qmp = await client(server);
    const order: string[] = [];
    const a = qmp.execute<string>('slow-a').then((v) => (order.push(v), v));
    const b = qmp.execute<string>('fast-b').then((v) => (order.push(v), v));
    expect(await Promise.all([a, b])).toEqual(['a', 'b']);
    expect(order).toEqual(['b', 'a']);
  });

  it('a command that never replies times out; its late reply is dropped', async () => {
    let release: (() => void) | undefined;
    const server = await fake({
      handlers: {
        never: () => ({ noReply: true }),
        late: () =>
          new Promise((resolve) => {
            release = () => resolve({ return: 'late' });
          }),
      },
    });
    const warnings: string[] = [];
    const qmp = await client(server, { onWarning: (m) => warnings.push(m) });
    const err = await qmp.execute('never', {}, { timeoutMs: 50 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as QmpTimeoutError).code).toBe('QMP_TIMEOUT');
    expect((err as QmpTimeoutError).details).toMatchObject({ command: 'never' });

    await expect(qmp.execute('late', {}, { timeoutMs: 50 })).rejects.toBeInstanceOf(QmpTimeoutError);
    release?.();
    expect((await qmp.queryStatus()).running).toBe(true);
    expect(warnings.some((w) => w.includes('matches no pending command'))).toBe(true);
  });

  it('connect times out when no greeting comes', async () => {
    const server = await fake({ greeting: null });
    const started = Date.now();
    const err = await QmpClient.connect(server.socketPath, { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as QmpTimeoutError).operation).toBe('greeting');
    expect(Date.now() - started).toBeLessThan(5000);
    await waitFor(() => (server.connections.size === 0 ? true : undefined), 2000, 'client to hang up');
  });

  it('connect rejects a first message that is not a greeting', async () => {
    const server = await fake({ greeting: { hello: 'world' } });
    await expect(QmpClient.connect(server.socketPath)).rejects.toBeInstanceOf(QmpProtocolError);
  });

  it('connect fails with SocketConnectError when nothing listens', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'offshoot-qmp-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const err = await QmpClient.connect(path.join(dir, 'nothing.sock')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SocketConnectError);
    expect((err as SocketConnectError).errno).toBe('ENOENT');
  });

  it('connect fails with QmpDisconnectedError when the server hangs up before the greeting', async () => {
    const server = await fake({ greeting: null });
    server.setHandler('unused', () => ({ return: {} }));
    const connecting = QmpClient.connect(server.socketPath, { timeoutMs: 5000 });
    await waitFor(() => (server.connections.size > 0 ? true : undefined), 2000, 'connection');
    server.dropConnections();
    await expect(connecting).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('a connection dropped with 3 calls pending rejects all three promptly', async () => {
    const server = await fake({ handlers: { slow: () => ({ noReply: true }) } });
    const qmp = await client(server);
    const calls = [1, 2, 3].map((n) => qmp.execute('slow', { n }).catch((e: unknown) => e));
    await server.waitForCommand('slow', 3);
    const dropped = Date.now();
    server.dropConnections();
    const errors = await Promise.all(calls);
    expect(Date.now() - dropped).toBeLessThan(1000);
    for (const err of errors) {
      expect(err).toBeInstanceOf(QmpDisconnectedError);
      expect((err as QmpDisconnectedError).command).toBe('slow');
    }
    expect((await qmp.closed).reason).toBe('closed by peer');
    await expect(qmp.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('a reply with neither return nor error rejects with QmpProtocolError', async () => {
    const server = await fake({ handlers: { odd: (call) => ({ raw: `${JSON.stringify({ id: call.id, huh: 1 })}\r\n` }) } });
    const qmp = await client(server);
    await expect(qmp.execute('odd')).rejects.toBeInstanceOf(QmpProtocolError);
  });

  it('passes arguments and returns the error class and desc', async () => {
    const server = await fake({
      handlers: {
        echo: (call) => ({ return: call.args }),
        fail: () => ({ error: { class: 'DeviceNotFound', desc: "Device 'x' not found" } }),
      },
    });
    const qmp = await client(server);
    expect(await qmp.execute('echo', { a: 1, b: [true] })).toEqual({ a: 1, b: [true] });
    const err = (await qmp.execute('fail').catch((e: unknown) => e)) as QmpCommandError;
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err.errorClass).toBe('DeviceNotFound');
    expect(err.desc).toBe("Device 'x' not found");
    expect(err.details).toEqual({ command: 'fail', errorClass: 'DeviceNotFound', desc: "Device 'x' not found" });
  });

  it('event subscriptions filter by name, buffer from creation, and end after the buffered events', async () => {
    const server = await fake();
    const qmp = await client(server);
    const all = qmp.events();
    const onlyB = qmp.events('B');
    const closedEarly = qmp.events(['A', 'B']);
    closedEarly.close();
    server.emitEvent('A', { n: 1 });
    server.emitEvent('B', { n: 2 });
    server.emitEvent('A', { n: 3 });
    await qmp.queryStatus(); // events were sent before this reply
    await qmp.close();
    const names = async (sub: AsyncIterable<{ event: string; data: Record<string, unknown> }>): Promise<string[]> => {
      const out: string[] = [];
      for await (const e of sub) out.push(`${e.event}${String(e.data.n)}`);
      return out;
    };
    expect(await names(all)).toEqual(['A1', 'B2', 'A3']);
    expect(await names(onlyB)).toEqual(['B2']);
    expect(await names(closedEarly)).toEqual([]);
    expect((await qmp.events().next()).done).toBe(true);
  });

  it('waitForEvent honours the predicate, the timeout and an abort signal', async () => {
    const server = await fake();
    const qmp = await client(server);
    const wanted = qmp.waitForEvent('JOB', { predicate: (e) => e.data.id === 'j2', timeoutMs: 2000 });
    server.emitEvent('JOB', { id: 'j1' });
    server.emitEvent('JOB', { id: 'j2' });
    expect((await wanted).data).toEqual({ id: 'j2' });

    const timedOut = await qmp.waitForEvent('NEVER', { timeoutMs: 50 }).catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(QmpTimeoutError);

    const controller = new AbortController();
    const aborted = qmp.waitForEvent('NEVER', { timeoutMs: 5000, signal: controller.signal });
    controller.abort(new Error('user gave up'));
    await expect(aborted).rejects.toThrow('user gave up');
  });

  it('quit counts a disconnect before the reply as success', async () => {
    const server = await fake({ handlers: { quit: () => ({ drop: true }) } });
    const qmp = await client(server);
    await expect(qmp.quit()).resolves.toBeUndefined();
    expect(qmp.isClosed).toBe(true);
  });

  it('an error without id (QEMU rejecting malformed input) is reported, not fatal', async () => {
    const server = await fake();
    const warnings: string[] = [];
    const qmp = await client(server, { onWarning: (m) => warnings.push(m) });
    server.sendRaw('{"error": {"class": "GenericError", "desc": "JSON parse error"}}\r\n');
    expect((await qmp.queryStatus()).running).toBe(true);
    expect(warnings).toHaveLength(1);
  });

  it('works with "\\n" line endings and replies split across writes', async () => {
    const server = await fake({
      lineEnding: '\n',
      handlers: {
        split: async (call) => {
          const line = `${JSON.stringify({ return: { ok: true }, id: call.id })}\n`;
          call.connection.sendRaw(line.slice(0, 7));
          await new Promise((r) => setTimeout(r, 20));
          return { raw: line.slice(7) };
        },
      },
    });
    const qmp = await client(server);
    expect(await qmp.execute('split')).toEqual({ ok: true });
  });

  it('onClose callbacks run once; unsubscribed ones do not', async () => {
    const server = await fake();
    const qmp = await client(server);
    const calls: string[] = [];
    qmp.onClose((i) => calls.push(`a:${i.reason}`));
    const off = qmp.onClose(() => calls.push('b'));
    off();
    server.dropConnections();
    await qmp.closed;
    await new Promise((r) => setImmediate(r));
    expect(calls).toEqual(['a:closed by peer']);
  });
});
