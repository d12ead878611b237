// Defect 1 of the hardening issue: a block stream whose `block-stream` command
// fails must not leave its wait for BLOCK_JOB_COMPLETED behind to reject later
// with nobody listening (which ends the daemon). Against the fake QMP server:
// the command fails, then the connection closes; vitest fails the run on any
// unhandled rejection, and the test also listens for one itself.
import { afterEach, describe, expect, it } from 'vitest';
import { QmpClient } from '../../src/qemu/index.ts';
import { FakeQmpServer } from '../../src/qemu/testing/fake-qmp-server.ts';
import { streamDisk } from '../../src/agent/live-disk-ops.ts';

describe('streamDisk', () => {
  let server: FakeQmpServer | undefined;
  afterEach(async () => {
    await server?.close();
  });

  it('leaves no pending wait when block-stream fails', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      server = await FakeQmpServer.start({
        handlers: {
          'query-block': () => ({ return: [{ qdev: '/machine/peripheral/disk0/virtio-backend', inserted: { 'node-name': 'disk0' } }] }),
          'block-stream': () => ({ error: { class: 'GenericError', desc: 'Failed to get write lock' } }),
        },
      });
      const qmp = await QmpClient.connect(server.socketPath);
      await expect(streamDisk(qmp, 'disk0', { base: '/nowhere/base.qcow2' })).rejects.toThrow(/write lock/);
      await qmp.close();
      await new Promise((r) => setTimeout(r, 100));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
