// Fault injection for end-to-end tests of crash safety: OFFSHOOT_TEST_FAULTS
// names operation points and what happens there, e.g.
//   OFFSHOOT_TEST_FAULTS='fork.prepared=sleep:30000,fork.start-child:2=fail'
// Actions: fail (the step throws), sleep:MS, unhandled (a promise rejects
// with nobody listening, the step goes on) and throw-async (an exception is
// thrown from a timer, outside any request). The last two test the daemon's
// process guards. Unset in normal use; the daemon logs a warning when it is set.
import { sleep } from '../common/index.ts';

export function faultsFromEnvironment(value: string | undefined): ((point: string) => Promise<void>) | undefined {
  if (!value) return undefined;
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
