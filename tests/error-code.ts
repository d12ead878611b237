// The stable code a promise rejects with ('no error' when it resolves), for
// orchestration tests that check refusals by code.
import { OffshootError } from '../src/common/index.ts';

export async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'no error';
  } catch (err) {
    return err instanceof OffshootError ? err.code : String(err);
  }
}
