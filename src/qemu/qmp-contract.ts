// The QMP contract: behaviours QmpClient must show against ANY QMP server.
// qmp-client.test.ts runs it against the fake server and against a real
// qemu-system-x86_64, so the fake cannot drift from what QEMU does.
//
// A target is one server for one test: its socket, a way to make it stop
// answering (real QEMU: SIGSTOP), a way to kill it (SIGKILL), and cleanup.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TimeoutError } from '../common/index.ts';
import { QmpClient } from './qmp-client.ts';
import type { QmpEvent } from './qmp-client.ts';
import { QmpCommandError, QmpDisconnectedError } from './qemu-errors.ts';
import { settledWithin } from './testing/test-utils.ts';

export interface QmpContractTarget {
  /** A socket a QMP client can connect to right away. */
  readonly socketPath: string;
  /** From now on the server answers nothing, but keeps the connection open. */
  hang(): Promise<void> | void;
  /** The server dies abruptly; its connections close. */
  kill(): Promise<void>;
  /** Frees everything; idempotent, also after kill(). */
  dispose(): Promise<void>;
}


export function runQmpContract(label: string, makeTarget: () => Promise<QmpContractTarget>): void {
  describe(`QMP contract: ${label}`, () => {
    let target: QmpContractTarget;
    const clients: QmpClient[] = [];

    async function connect(): Promise<QmpClient> {
      const client = await QmpClient.connect(target.socketPath, { timeoutMs: 5000, commandTimeoutMs: 10_000 });
      clients.push(client);
      return client;
    }

    beforeEach(async () => {
      target = await makeTarget();
    });

    afterEach(async () => {
      await Promise.all(clients.splice(0).map((c) => c.close()));
      await target.dispose();
    });

    it('connects, reads the greeting and negotiates capabilities', async () => {
      const qmp = await connect();
      expect(qmp.greeting.QMP.capabilities).toBeInstanceOf(Array);
      expect(qmp.version.qemu.major).toBeGreaterThanOrEqual(1);
      expect(typeof qmp.version.qemu.minor).toBe('number');
      expect(typeof qmp.version.qemu.micro).toBe('number');
      expect(qmp.isClosed).toBe(false);
    });

    it('query-status reports a running VM', async () => {
      const qmp = await connect();
      const status = await qmp.queryStatus();
      expect(status).toEqual({ running: true, status: 'running' });
    });

    it('query-version matches the greeting', async () => {
      const qmp = await connect();
      const version = await qmp.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version');
      expect(version.qemu).toEqual(qmp.version.qemu);
      expect(typeof version.package).toBe('string');
    });

    it('an unknown command rejects with QmpCommandError of class CommandNotFound', async () => {
      const qmp = await connect();
      const err = await qmp.execute('offshoot-no-such-command').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QmpCommandError);
      const qerr = err as QmpCommandError;
      expect(qerr.code).toBe('QMP_COMMAND_FAILED');
      expect(qerr.command).toBe('offshoot-no-such-command');
      expect(qerr.errorClass).toBe('CommandNotFound');
      expect(qerr.desc).toContain('offshoot-no-such-command');
      // The connection survives a failed command.
      expect((await qmp.queryStatus()).running).toBe(true);
    });

    it('concurrent executes each get their own reply', async () => {
      const qmp = await connect();
      const calls = Array.from({ length: 30 }, (_, i) => {
        switch (i % 3) {
          case 0:
            return qmp.execute('query-status').then((r) => ({ i, kind: 'status', r }));
          case 1:
            return qmp.execute('query-version').then((r) => ({ i, kind: 'version', r }));
          default:
            return qmp.execute(`offshoot-missing-${i}`).then(
              (r) => ({ i, kind: 'unexpected', r }),
              (e: unknown) => ({ i, kind: 'error', r: e }),
            );
        }
      });
      const results = await Promise.all(calls);
      for (const { i, kind, r } of results) {
        if (i % 3 === 0) expect(kind === 'status' && (r as { running: boolean }).running).toBe(true);
        if (i % 3 === 1) expect(kind === 'version' && (r as { qemu: unknown }).qemu).toEqual(qmp.version.qemu);
        if (i % 3 === 2) {
          expect(kind).toBe('error');
          expect((r as QmpCommandError).desc).toContain(`offshoot-missing-${i}`);
        }
      }
    });

    it('an event subscription receives STOP and RESUME after stop and cont', async () => {
      const qmp = await connect();
      const sub = qmp.events(['STOP', 'RESUME']);
      await qmp.stop();
      expect(await qmp.queryStatus()).toEqual({ running: false, status: 'paused' });
      await qmp.cont();
      expect((await qmp.queryStatus()).running).toBe(true);
      const seen: QmpEvent[] = [];
      for await (const event of sub) {
        seen.push(event);
        if (seen.length === 2) break;
      }
      expect(seen.map((e) => e.event)).toEqual(['STOP', 'RESUME']);
      expect(seen[0]?.timestamp.seconds).toBeGreaterThan(0);
      expect(seen[0]?.data).toEqual({});
    });

    it('waitForEvent, armed before the command, sees its event', async () => {
      const qmp = await connect();
      const stopped = qmp.waitForEvent('STOP', { timeoutMs: 5000 });
      await qmp.stop();
      expect((await stopped).event).toBe('STOP');
      const resumed = qmp.waitForEvent('RESUME', { timeoutMs: 5000 });
      await qmp.cont();
      expect((await resumed).event).toBe('RESUME');
    });

    it('when the server dies, pending calls reject with QmpDisconnectedError and later calls reject at once', async () => {
      const qmp = await connect();
      const sub = qmp.events();
      await target.hang();
      const pending = [qmp.execute('query-status'), qmp.execute('query-version'), qmp.execute('query-status')];
      const outcomes = Promise.allSettled(pending);
      expect(await settledWithin(outcomes, 200)).toBe('pending');
      await target.kill();
      const results = await outcomes;
      for (const r of results) {
        expect(r.status).toBe('rejected');
        expect((r as PromiseRejectedResult).reason).toBeInstanceOf(QmpDisconnectedError);
        expect(((r as PromiseRejectedResult).reason as QmpDisconnectedError).code).toBe('QMP_DISCONNECTED');
      }
      const info = await qmp.closed;
      expect(info.reason).toMatch(/peer|ECONNRESET/);
      expect(qmp.isClosed).toBe(true);
      await expect(qmp.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
      await expect(qmp.waitForEvent('STOP', { timeoutMs: 1000 })).rejects.toBeInstanceOf(QmpDisconnectedError);
      // The subscription ends with the client.
      const next = await sub.next();
      expect(next.done).toBe(true);
    });

    it('a call that gets no answer times out, and is not a disconnect', async () => {
      const qmp = await connect();
      await target.hang();
      const err = await qmp.execute('query-status', undefined, { timeoutMs: 150 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TimeoutError);
      expect((err as TimeoutError).code).toBe('QMP_TIMEOUT');
      expect(qmp.isClosed).toBe(false);
    });

    it('close() is idempotent and rejects pending and later calls', async () => {
      const qmp = await connect();
      await target.hang();
      const pending = qmp.execute('query-status');
      await Promise.all([qmp.close(), qmp.close()]);
      await expect(pending).rejects.toBeInstanceOf(QmpDisconnectedError);
      await expect(qmp.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
      expect((await qmp.closed).reason).toBe('closed by client');
      await qmp.close();
    });

    it('quit() resolves and the connection closes', async () => {
      const qmp = await connect();
      const closedCalls: string[] = [];
      qmp.onClose((info) => closedCalls.push(info.reason));
      const shutdown = qmp.waitForEvent('SHUTDOWN', { timeoutMs: 5000 });
      await qmp.quit();
      expect((await shutdown).data).toMatchObject({ guest: false });
      await qmp.closed;
      expect(closedCalls).toHaveLength(1);
    });
  });
}
