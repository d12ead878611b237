// Defect 1 of the hardening issue: the daemon (`offshoot serve`) must survive a
// promise that rejects with nobody listening and an exception thrown outside
// any request: it logs them and keeps answering. Faults are injected at the
// `vm.create` point (see src/api/test-faults.ts).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isProcessAlive } from '../../src/common/index.ts';
import type { TestHome } from '../harness.ts';
import { eventually, makeTestHome, startDetachedDaemon, waitForProcessExit } from '../harness.ts';

describe('daemon process guards', () => {
  let t: TestHome;
  beforeAll(() => {
    t = makeTestHome();
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it.each([
    ['unhandled', 'unhandled promise rejection'],
    ['throw-async', 'uncaught exception'],
  ])('keeps answering after an injected %s', async (action, logged) => {
    t.env.OFFSHOOT_TEST_FAULTS = `vm.create=${action}`;
    const daemon = await startDetachedDaemon(t);
    delete t.env.OFFSHOOT_TEST_FAULTS;
    const name = `g-${action}`;
    expect((await t.cli(['vm', 'create', name])).code).toBe(0);
    await eventually(() => readFileSync(join(t.home, 'daemon.log'), 'utf8').includes(logged), 10_000, `"${logged}" in the log`);
    expect(isProcessAlive(daemon.pid)).toBe(true);
    const list = await t.cli(['vm', 'list', '--json']);
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as Array<{ name: string }>).map((v) => v.name)).toContain(name);
    expect((await t.cli(['vm', 'delete', name])).code).toBe(0);
    process.kill(daemon.pid, 'SIGTERM');
    await waitForProcessExit(daemon.pid);
  });
});
