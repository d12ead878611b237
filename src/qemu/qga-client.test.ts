// Tests of the guest-agent client against the REAL qemu-ga running on this
// host in unix-listen mode (a fresh agent per test, with every command that
// could touch the host's power, clock, users, CPUs or filesystems blocked),
// plus a fake agent for what qemu-ga cannot be made to do: stale replies in
// the channel, and guest-shutdown (never sent to the host agent).
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TimeoutError, waitFor } from '../common/index.ts';
import { QgaClient } from './qga-client.ts';
import { QgaCommandError, QgaDisconnectedError, QgaTimeoutError } from './qemu-errors.ts';
import { FakeQmpServer } from './testing/fake-qmp-server.ts';
import type { FakeQmpHandler } from './testing/fake-qmp-server.ts';
import { probeSocket, settledWithin } from './testing/test-utils.ts';

const BLOCKED = [
  'guest-shutdown',
  'guest-suspend-disk',
  'guest-suspend-ram',
  'guest-suspend-hybrid',
  'guest-fsfreeze-freeze',
  'guest-fsfreeze-freeze-list',
  'guest-set-time',
  'guest-set-user-password',
  'guest-set-vcpus',
  'guest-set-memory-blocks',
];

interface HostAgent {
  socketPath: string;
  child: ChildProcess;
  kill(signal: NodeJS.Signals): void;
  stop(): Promise<void>;
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function socketAccepts(socketPath: string): Promise<boolean> {
  const exists = await stat(socketPath).then(
    () => true,
    () => false,
  );
  return exists && probeSocket(socketPath);
}

async function startHostAgent(dir: string, name = 'qga'): Promise<HostAgent> {
  const socketPath = path.join(dir, `${name}.sock`);
  const stateDir = path.join(dir, `${name}-state`);
  await mkdir(stateDir, { recursive: true });
  const child = spawn('/usr/sbin/qemu-ga', ['-m', 'unix-listen', '-p', socketPath, '-t', stateDir, '-b', BLOCKED.join(',')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const agent: HostAgent = {
    socketPath,
    child,
    kill: (signal) => {
      child.kill(signal);
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited(child);
      }
    },
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`qemu-ga exited with ${child.exitCode}: ${stderr}`);
        return (await socketAccepts(socketPath)) ? true : undefined;
      },
      10_000,
      'qemu-ga socket',
      10,
    );
  } catch (err) {
    await agent.stop();
    throw err;
  }
  return agent;
}


describe('QgaClient against the real qemu-ga (unix-listen on the host)', () => {
  let dir: string;
  let agent: HostAgent;
  const cleanups: Array<() => Promise<void>> = [];

  async function connect(options: Parameters<typeof QgaClient.connect>[1] = {}): Promise<QgaClient> {
    const client = await QgaClient.connect(agent.socketPath, options);
    cleanups.push(() => client.close());
    return client;
  }

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'offshoot-qga-'));
    agent = await startHostAgent(dir);
  });

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await agent.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('connects, syncs, pings, and the host agent really has the dangerous commands disabled', async () => {
    const qga = await connect();
    await qga.ping();
    await qga.sync({ timeoutMs: 2000 });
    const info = await qga.info();
    expect(info.version).toMatch(/^\d+\.\d+/);
    const byName = new Map(info.supported_commands.map((c) => [c.name, c]));
    for (const name of BLOCKED) {
      if (byName.has(name)) expect(byName.get(name)?.enabled).toBe(false);
    }
    expect(byName.get('guest-shutdown')?.['success-response']).toBe(false);
    expect(byName.get('guest-exec')?.enabled).toBe(true);
  });

  it('sync recovers from a half-sent request left in the agent by an earlier client', async () => {
    // qemu-ga keeps its JSON parser state across connections: a partial
    // request from a dead client would swallow the next client's first line.
    await new Promise<void>((resolve, reject) => {
      const s = net.connect({ path: agent.socketPath });
      s.once('error', reject);
      s.once('connect', () => {
        s.end('{"execute": "guest-info", "argu', () => resolve());
      });
    });
    await new Promise((r) => setTimeout(r, 50));
    const warnings: string[] = [];
    const qga = await connect({ timeoutMs: 3000, onWarning: (m, d) => warnings.push(`${m} ${JSON.stringify(d.message)}`) });
    await qga.ping();
    expect(warnings.some((w) => w.includes('JSON parse error'))).toBe(true);
  });

  it('exec captures stdout, stderr and the exit code', async () => {
    const qga = await connect();
    const r = await qga.exec('/bin/sh', ['-c', 'echo out; echo err >&2; exit 3']);
    expect(r.stdout.toString()).toBe('out\n');
    expect(r.stderr.toString()).toBe('err\n');
    expect(r.exitCode).toBe(3);
    expect(r.signal).toBeNull();
    expect(r.stdoutTruncated).toBe(false);
  });

  it('exec feeds stdin (text and binary)', async () => {
    const qga = await connect();
    const text = await qga.exec('/bin/cat', [], { input: 'hello\nworld\n' });
    expect(text.stdout.toString()).toBe('hello\nworld\n');
    expect(text.exitCode).toBe(0);
    const bytes = randomBytes(100 * 1024);
    const bin = await qga.exec('/bin/cat', [], { input: bytes });
    expect(bin.stdout.equals(bytes)).toBe(true);
  });

  it('exec reports a signal death and passes the environment', async () => {
    const qga = await connect();
    const killed = await qga.exec('/bin/sh', ['-c', 'kill -9 $$']);
    expect(killed).toMatchObject({ exitCode: null, signal: 9 });
    const env = await qga.exec('/usr/bin/env', [], { env: ['OFFSHOOT_TEST=yes'] });
    expect(env.stdout.toString()).toContain('OFFSHOOT_TEST=yes');
  });

  it('exec of a missing program and reading a missing file reject with QgaCommandError', async () => {
    const qga = await connect();
    const execErr = await qga.exec('/nonexistent/program').catch((e: unknown) => e);
    expect(execErr).toBeInstanceOf(QgaCommandError);
    expect((execErr as QgaCommandError).command).toBe('guest-exec');
    expect((execErr as QgaCommandError).code).toBe('QGA_COMMAND_FAILED');
    const readErr = (await qga.readFile(path.join(dir, 'missing')).catch((e: unknown) => e)) as QgaCommandError;
    expect(readErr).toBeInstanceOf(QgaCommandError);
    expect(readErr.command).toBe('guest-file-open');
    expect(readErr.errorClass).toBe('GenericError');
    expect(readErr.desc).toContain('No such file');
    const unknown = (await qga.execute('guest-offshoot-nope').catch((e: unknown) => e)) as QgaCommandError;
    expect(unknown.errorClass).toBe('CommandNotFound');
    await qga.ping();
  });

  it('writeFile then readFile round-trips 1 MiB of random bytes', async () => {
    const qga = await connect();
    const data = randomBytes(1024 * 1024);
    const file = path.join(dir, 'random.bin');
    await qga.writeFile(file, data);
    expect((await readFile(file)).equals(data)).toBe(true);
    const back = await qga.readFile(file);
    expect(back.length).toBe(data.length);
    expect(back.equals(data)).toBe(true);
    await qga.writeFile(file, '');
    expect((await qga.readFile(file)).length).toBe(0);
  });

  it('executeBatch sends several commands at once and returns each outcome, an error of one not stopping the rest', async () => {
    const qga = await connect();
    const out = await qga.executeBatch([{ command: 'guest-ping' }, { command: 'guest-offshoot-nope' }, { command: 'guest-info' }]);
    expect(out.map((o) => o.ok)).toEqual([true, false, true]);
    expect(out[1]?.ok === false && out[1].error.errorClass).toBe('CommandNotFound');
    expect(out[2]?.ok && (out[2].value as { version: string }).version).toMatch(/\d/);
    expect(await qga.executeBatch([])).toEqual([]);
    await qga.ping();
  });

  it('writeFiles writes several files in two batches and names the one that failed, closing the others', async () => {
    const qga = await connect();
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    await qga.writeFiles([{ path: a, data: 'one' }, { path: b, data: randomBytes(100) }, { path: path.join(dir, 'empty'), data: '' }], { then: [{ command: 'guest-ping' }] });
    expect(await readFile(a, 'utf8')).toBe('one');
    expect((await readFile(b)).length).toBe(100);
    const err = (await qga.writeFiles([{ path: a, data: 'two' }, { path: path.join(dir, 'missing', 'x'), data: 'x' }]).catch((e: unknown) => e)) as QgaCommandError;
    expect(err).toBeInstanceOf(QgaCommandError);
    expect(err.desc).toContain(path.join(dir, 'missing', 'x'));
    expect(await readFile(a, 'utf8')).toBe('two');
    const then = (await qga.writeFiles([{ path: a, data: 'three' }], { then: [{ command: 'guest-offshoot-nope' }] }).catch((e: unknown) => e)) as QgaCommandError;
    expect(then.errorClass).toBe('CommandNotFound');
  });

  it('file handles live in the agent, not the connection: opened (mode w truncates then) by one client, written by the next; bytes land at the close, and a refused write fails the close', async () => {
    // What the fabric's armed hand-out relies on (src/agent/fabric-hand-out.ts).
    const file = path.join(dir, 'kept');
    await writeFile(file, 'stale and long');
    const first = await connect();
    const opened = await first.executeBatch([
      { command: 'guest-file-open', args: { path: file, mode: 'w' } },
      { command: 'guest-file-open', args: { path: '/dev/full', mode: 'w' } },
    ]);
    const [kept, full] = opened.map((o) => (o.ok ? (o.value as number) : -1));
    expect(await readFile(file, 'utf8')).toBe('');
    await first.close();
    const next = await connect();
    const data = Buffer.from('fresh');
    const out = await next.executeBatch([
      { command: 'guest-file-write', args: { handle: kept, 'buf-b64': data.toString('base64'), count: data.length } },
      { command: 'guest-file-write', args: { handle: full, 'buf-b64': data.toString('base64'), count: data.length } },
    ]);
    // Buffered by stdio: counted, not yet in the file (nor refused).
    expect(out.map((o) => o.ok && (o.value as { count: number }).count)).toEqual([5, 5]);
    expect(await readFile(file, 'utf8')).toBe('');
    const closed = await next.executeBatch([
      { command: 'guest-file-close', args: { handle: kept } },
      { command: 'guest-file-close', args: { handle: full } },
    ]);
    expect(await readFile(file, 'utf8')).toBe('fresh');
    expect(closed[0]?.ok).toBe(true);
    expect(closed[1]?.ok === false && closed[1].error.desc).toMatch(/failed to close handle.*No space left on device/);
  });

  it('exec follows its poll schedule and reports its timings; start and waitExec split it', async () => {
    const qga = await connect();
    const seen: Array<[number, number]> = [];
    const r = await qga.exec('/bin/sh', ['-c', 'sleep 0.2; echo done'], { pollDelayMs: (elapsed, polls) => (seen.push([elapsed, polls]), 50) });
    expect(r.stdout.toString()).toBe('done\n');
    expect(r.timings.polls).toBe(seen.length);
    expect(seen.map(([, polls]) => polls)).toEqual(seen.map((_, i) => i));
    // More than one poll 50 ms apart over a 0.2 s command (how many depends on the host's load: 3 were seen in CI-like runs).
    expect(r.timings.polls).toBeGreaterThanOrEqual(2);
    expect(r.timings.execMs).toBeGreaterThan(0);
    expect(r.timings.exitMs).toBeGreaterThanOrEqual(200);
    const pid = await qga.start('/bin/echo', ['split']);
    const w = await qga.waitExec(pid);
    expect(w.stdout.toString()).toBe('split\n');
    expect(w.timings.execMs).toBe(0);
  });

  it('serialises concurrent calls', async () => {
    const qga = await connect();
    const results = await Promise.all([
      qga.ping(),
      qga.info().then((i) => i.version),
      qga.exec('/bin/echo', ['a']).then((r) => r.stdout.toString()),
      qga.ping(),
      qga.exec('/bin/echo', ['b']).then((r) => r.stdout.toString()),
    ]);
    expect(results[2]).toBe('a\n');
    expect(results[4]).toBe('b\n');
  });

  it('killing qemu-ga with a call pending rejects it (and the queued one) with QgaDisconnectedError', async () => {
    const qga = await connect();
    agent.kill('SIGSTOP');
    const pending = qga.ping().catch((e: unknown) => e);
    const queued = qga.info().catch((e: unknown) => e);
    expect(await settledWithin(pending, 200)).toBe('pending');
    agent.kill('SIGKILL');
    const [a, b] = await Promise.all([pending, queued]);
    expect(a).toBeInstanceOf(QgaDisconnectedError);
    expect((a as QgaDisconnectedError).code).toBe('QGA_DISCONNECTED');
    expect((a as QgaDisconnectedError).command).toBe('guest-ping');
    expect(b).toBeInstanceOf(QgaDisconnectedError);
    expect(qga.isClosed).toBe(true);
    await expect(qga.ping()).rejects.toBeInstanceOf(QgaDisconnectedError);
  });

  it('a timed-out call does not leave its late reply for the next one', async () => {
    const qga = await connect();
    agent.kill('SIGSTOP');
    const err = await qga.ping({ timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QgaTimeoutError);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as QgaTimeoutError).code).toBe('QGA_TIMEOUT');
    agent.kill('SIGCONT');
    // The agent now answers the old ping first; info must get its own reply.
    const info = await qga.info();
    expect(info.version).toMatch(/^\d+\./);
  });

  it('waitForAgent times out when nothing listens on the path', async () => {
    const started = Date.now();
    const err = await QgaClient.waitForAgent(path.join(dir, 'nobody.sock'), { timeoutMs: 600, attemptTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QgaTimeoutError);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as QgaTimeoutError).details).toMatchObject({ lastError: expect.stringContaining('ENOENT') });
    expect(Date.now() - started).toBeGreaterThanOrEqual(550);
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('waitForAgent succeeds once an agent appears', async () => {
    const later = path.join(dir, 'later');
    await mkdir(later);
    const waiting = QgaClient.waitForAgent(path.join(later, 'qga.sock'), { timeoutMs: 10_000, attemptTimeoutMs: 300 });
    await new Promise((r) => setTimeout(r, 300));
    const second = await startHostAgent(later);
    cleanups.push(() => second.stop());
    const qga = await waiting;
    cleanups.push(() => qga.close());
    await qga.ping();
  });

  it('unix-listen: reconnects work, and a second client waits until the first leaves', async () => {
    const first = await connect();
    await first.ping();
    // qemu-ga serves one connection at a time; the second connect succeeds
    // (kernel backlog) but nothing answers it.
    const err = await QgaClient.connect(agent.socketPath, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QgaTimeoutError);
    const waiting = QgaClient.waitForAgent(agent.socketPath, { timeoutMs: 10_000, attemptTimeoutMs: 300 });
    await new Promise((r) => setTimeout(r, 400));
    await first.close();
    const second = await waiting;
    cleanups.push(() => second.close());
    await second.ping();
    await second.close();
    const third = await connect();
    await third.ping();
  });
});

describe('QgaClient against a fake agent', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A fake agent: no greeting, no negotiation, replies to guest-sync-delimited like qemu-ga. */
  async function fakeAgent(handlers: Record<string, FakeQmpHandler> = {}, syncPrefix = ''): Promise<FakeQmpServer> {
    const server = await FakeQmpServer.start({
      greeting: null,
      requireCapabilities: false,
      lineEnding: '\n',
      handlers: {
        'guest-sync-delimited': (call) => ({
          raw: Buffer.concat([Buffer.from(syncPrefix, 'latin1'), Buffer.from([0xff]), Buffer.from(`${JSON.stringify({ return: call.args.id })}\n`)]),
        }),
        'guest-ping': () => ({ return: {} }),
        ...handlers,
      },
    });
    cleanups.push(() => server.close());
    return server;
  }

  it('sync discards stale replies, stale sync answers and junk before its own answer', async () => {
    const stale =
      '{"return": {}, "id": "og1"}\n' + // a reply nobody read
      '\xff{"return": 424242}\n' + // an older client's sync answer
      'garbage \x00 bytes\n' +
      '{"return": {"pid": 7}, "id": "og2"'; // half a line, completed by the junk below
    const server = await fakeAgent({}, stale);
    const warnings: string[] = [];
    const qga = await QgaClient.connect(server.socketPath, { timeoutMs: 2000, onWarning: (m) => warnings.push(m) });
    cleanups.push(() => qga.close());
    await qga.ping();
    expect(warnings.length).toBeGreaterThanOrEqual(2);
    // Stale lines that arrive later are dropped too, by id.
    server.sendRaw('{"return": {"pid": 9}, "id": "og77"}\n');
    await qga.ping();
  });

  it('shutdown takes silence or a disconnect as success, and an error reply as failure', async () => {
    const silent = await fakeAgent({ 'guest-shutdown': () => ({ noReply: true }) });
    const a = await QgaClient.connect(silent.socketPath);
    cleanups.push(() => a.close());
    await expect(a.shutdown()).resolves.toBeUndefined();
    expect(silent.received.find((c) => c.command === 'guest-shutdown')?.args).toEqual({ mode: 'powerdown' });

    const dropping = await fakeAgent({ 'guest-shutdown': () => ({ drop: true }) });
    const b = await QgaClient.connect(dropping.socketPath);
    cleanups.push(() => b.close());
    await expect(b.shutdown('reboot')).resolves.toBeUndefined();
    expect(b.isClosed).toBe(true);

    const refusing = await fakeAgent({
      'guest-shutdown': () => ({ error: { class: 'CommandNotFound', desc: 'Command guest-shutdown has been disabled' } }),
    });
    const c = await QgaClient.connect(refusing.socketPath);
    cleanups.push(() => c.close());
    await expect(c.shutdown()).rejects.toBeInstanceOf(QgaCommandError);
    await c.ping();
  });

  it('connect times out when the channel has no agent behind it', async () => {
    const server = await fakeAgent({ 'guest-sync-delimited': () => ({ noReply: true }) });
    const err = await QgaClient.connect(server.socketPath, { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QgaTimeoutError);
    await waitFor(() => (server.connections.size === 0 ? true : undefined), 2000, 'client to hang up');
  });

  it('exec polls until the process exits and honours its time limit', async () => {
    let polls = 0;
    const server = await fakeAgent({
      'guest-exec': () => ({ return: { pid: 42 } }),
      'guest-exec-status': (call) => {
        polls++;
        if (call.args.pid !== 42) return { error: { class: 'GenericError', desc: 'bad pid' } };
        return polls < 4 ? { return: { exited: false } } : { return: { exited: true, exitcode: 0, 'out-data': Buffer.from('done').toString('base64') } };
      },
    });
    const qga = await QgaClient.connect(server.socketPath);
    cleanups.push(() => qga.close());
    const r = await qga.exec('/bin/true');
    expect(r.stdout.toString()).toBe('done');
    expect(r.stderr.length).toBe(0);
    expect(polls).toBe(4);

    server.setHandler('guest-exec-status', () => ({ return: { exited: false } }));
    const err = await qga.exec('/bin/sleep', ['100'], { timeoutMs: 150 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QgaTimeoutError);
    expect((err as QgaTimeoutError).details).toMatchObject({ pid: 42 });
  });
});
