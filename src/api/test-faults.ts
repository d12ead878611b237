// Fault injection for end-to-end tests of crash safety: OFFSHOOT_TEST_FAULTS
// names operation points and what happens there, e.g.
//   OFFSHOOT_TEST_FAULTS='fork.prepared=sleep:30000,fork.start-child:2=fail'
// Actions: fail (the step throws), sleep:MS, unhandled (a promise rejects
// with nobody listening, the step goes on) and throw-async (an exception is
// thrown from a timer, outside any request). The last two test the daemon's
// process guards. Unset in normal use; the daemon logs a warning when it is set.
//
// `gates=DIR` turns every point into a gate a test opens and closes through
// files (the fault matrix, tests/e2e/fault-matrix.test.ts): with DIR/POINT.arm
// present, the daemon removes it, writes DIR/POINT.reached and waits until
// DIR/POINT.release appears (which it removes), so the test can inject a
// fault (kill a QEMU or the daemon, fill a disk) exactly at that point.
//
// Points: vm.create; fork.make-owned:started, fork.make-owned:migrated,
// fork.prepared, fork.start-child:N, fork.flatten; checkpoint.make-owned:*,
// checkpoint.prepared, checkpoint.writing; restore.starting, restore.running;
// clone.frozen, clone.streaming; copy.file.
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from '../common/index.ts';

function gates(dir: string): (point: string) => Promise<void> {
  return async (point) => {
    const arm = join(dir, `${point}.arm`);
    if (!existsSync(arm)) return;
    rmSync(arm, { force: true });
    writeFileSync(join(dir, `${point}.reached`), `${process.pid}\n`);
    const release = join(dir, `${point}.release`);
    while (!existsSync(release)) await sleep(20);
    rmSync(release, { force: true });
  };
}

export function faultsFromEnvironment(value: string | undefined): ((point: string) => Promise<void>) | undefined {
  if (!value) return undefined;
  if (value.startsWith('gates=')) return gates(value.slice('gates='.length));
  const rules = new Map<string, string>();
  for (const part of value.split(',')) {
    const [point, action] = part.split('=');
    if (point && action) rules.set(point.trim(), action.trim());
  }
  return async (point) => {
    const action = rules.get(point);
    if (!action) return;
    if (action === 'fail') throw new Error(`injected fault at ${point}`);
    if (action === 'unhandled') void Promise.reject(new Error(`injected unhandled rejection at ${point}`));
    if (action === 'throw-async') {
      setTimeout(() => {
        throw new Error(`injected uncaught exception at ${point}`);
      }, 0);
    }
    const match = /^sleep:(\d+)$/.exec(action);
    if (match) await sleep(Number(match[1]));
  };
}
