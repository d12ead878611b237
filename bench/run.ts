// `npm run bench -- NAME [options]`: runs one benchmark, prints Offshoot's
// figure beside a baseline measured in the same run with the ratio, and writes
// the raw numbers as JSON under bench/results/. Benchmarks never assert.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootBenchmark } from './boot.ts';
import { checkpointBenchmark } from './checkpoint.ts';
import { cloneBenchmark } from './clone.ts';
import { copyBenchmark } from './copy.ts';
import { fabricBenchmark } from './fabric.ts';
import { fleetBenchmark } from './fleet.ts';
import { hostsBenchmark } from './hosts.ts';
import { migrateBenchmark } from './migrate.ts';
import { mobilityBenchmark } from './mobility.ts';
import { moveBenchmark } from './move.ts';
import { forkBenchmark } from './fork.ts';
import { groupBenchmark } from './group.ts';
import { netpathBenchmark } from './netpath.ts';
import type { BenchResult } from './report.ts';
import { printReport } from './report.ts';

const BENCHMARKS: Record<string, (args: string[]) => Promise<BenchResult>> = {
  boot: bootBenchmark,
  fork: forkBenchmark,
  checkpoint: checkpointBenchmark,
  clone: cloneBenchmark,
  copy: copyBenchmark,
  netpath: netpathBenchmark,
  fleet: fleetBenchmark,
  hosts: hostsBenchmark,
  migrate: migrateBenchmark,
  fabric: fabricBenchmark,
  mobility: mobilityBenchmark,
  group: groupBenchmark,
  move: moveBenchmark,
};

const [name, ...args] = process.argv.slice(2);
if (!name || !BENCHMARKS[name]) {
  process.stderr.write(`usage: npm run bench -- NAME [--runs N]\nbenchmarks: ${Object.keys(BENCHMARKS).join(', ')}\n`);
  process.exit(2);
}
const result = await (BENCHMARKS[name] as (args: string[]) => Promise<BenchResult>)(args);
printReport(result);
const dir = join(import.meta.dirname, 'results');
mkdirSync(dir, { recursive: true });
const file = join(dir, `${name}-${result.startedAt.replace(/[:.]/g, '-')}.json`);
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
process.stdout.write(`\nresults: ${file}\n`);
