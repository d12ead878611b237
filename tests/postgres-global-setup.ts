// Vitest global set-up: one temporary PostgreSQL cluster for the whole run
// (src/store/pg-test-cluster.ts: installed from Debian if missing, initdb in /tmp on a
// free port, never the system's cluster), stopped and removed after the run.
// Tests find it in OFFSHOOT_TEST_DATABASE_URL (set it beforehand to use
// another server; each suite makes its own databases there). When it cannot
// start, the reason goes to OFFSHOOT_TEST_DATABASE_ERROR and every test that
// needs PostgreSQL fails with it (src/store/pg-test-cluster.ts testDatabaseUrl), while
// the rest of the run goes on.
import { startPgCluster } from '../src/store/pg-test-cluster.ts';

export default async function setup(): Promise<(() => Promise<void>) | undefined> {
  if (process.env.OFFSHOOT_TEST_DATABASE_URL) return undefined;
  try {
    // Durability settings off: a test cluster lives for one run.
    const cluster = await startPgCluster({ settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' } });
    process.env.OFFSHOOT_TEST_DATABASE_URL = cluster.url;
    return async () => {
      delete process.env.OFFSHOOT_TEST_DATABASE_URL;
      await cluster.stop();
    };
  } catch (err) {
    process.env.OFFSHOOT_TEST_DATABASE_ERROR = (err as Error).message;
    return undefined;
  }
}
