// The inventory contract on PostgreSQL: a fresh database per test on the
// run's temporary cluster (tests/postgres-global-setup.ts). Fails, never
// skips, when that cluster did not start.
import { inventoryContract } from './inventory-contract.ts';
import { freshTestDatabase } from './pg-test-cluster.ts';

inventoryContract('PostgreSQL', { freshLocation: () => freshTestDatabase('offshoot_contract') });
