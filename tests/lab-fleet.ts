// A control plane with two lab hosts, for end-to-end tests that act across
// hosts: a test home's daemon, and lab1 and lab2 (network namespaces running
// `offshoot agent serve`, registered with it) on the test's own prefix and
// subnet. close() kills the VMs left, stops the daemon, takes the lab down
// and removes the home and the lab's folder.
import { mkdtempSync, rmSync } from 'node:fs';
import type { DaemonOptions, RunningDaemon } from '../src/api/index.ts';
import { startDaemon } from '../src/api/index.ts';
import { silentLogger } from '../src/common/index.ts';
import { labDown, labUp } from '../src/lab/lab.ts';
import type { UpResult } from '../src/lab/lab.ts';
import type { TestHome } from './harness.ts';
import { makeTestHome } from './harness.ts';

export interface LabFleet {
  t: TestHome;
  daemon: RunningDaemon;
  lab: UpResult;
  labDir: string;
  close(): Promise<void>;
}

/** Starts the daemon (with `options` beside its home) and two lab hosts; on a failure, removes what it made. */
export async function startLabFleet(prefix: string, subnet: string, options: Partial<DaemonOptions> = {}): Promise<LabFleet> {
  const t = makeTestHome();
  const daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir, logger: silentLogger, ...options });
  const labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  const close = async () => {
    for (const vm of await daemon.engine.list().catch(() => [])) await daemon.engine.kill(vm.id).catch(() => undefined);
    await daemon.close();
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    rmSync(labDir, { recursive: true, force: true });
    await t.cleanup();
  };
  try {
    const lab = await labUp(2, { dir: labDir, prefix, subnet }, t.home);
    return { t, daemon, lab, labDir, close };
  } catch (err) {
    await close();
    throw err;
  }
}
