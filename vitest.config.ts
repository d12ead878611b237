// Test runner configuration: tests sit beside the code as *.test.ts.
// Files run one at a time: integration tests boot real QEMU guests and the
// machine has two cores, so parallel files would only add timeouts.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'tests/**/*.test.ts', 'web/src/**/*.test.ts'],
    // A temporary PostgreSQL cluster for the inventory's tests (OFFSHOOT_TEST_DATABASE_URL).
    globalSetup: ['tests/postgres-global-setup.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
