// Benchmark results: samples, summary statistics, and the printed table of
// Offshoot's figure beside the baseline with the ratio.
export interface Series {
  label: string;
  unit: 'ms' | 'MiB' | 'GB/s';
  samples: number[];
}

export interface Comparison {
  metric: string;
  offshoot: Series;
  baseline: Series;
}

export interface BenchResult {
  name: string;
  startedAt: string;
  machine: { cpus: number; accel: string; qemu: string; node: string };
  parameters: Record<string, unknown>;
  comparisons: Comparison[];
  notes: string[];
}

export function stats(samples: number[]): { min: number; median: number; max: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  return { min: sorted[0] ?? NaN, median, max: sorted[sorted.length - 1] ?? NaN };
}

const fmt = (n: number) => (Math.abs(n) >= 100 ? n.toFixed(0) : n.toFixed(2));

export function printReport(result: BenchResult): void {
  const m = result.machine;
  process.stdout.write(`\n${result.name}: ${m.cpus} cpus, accel ${m.accel}, ${m.qemu}, node ${m.node}\n`);
  process.stdout.write(`parameters: ${JSON.stringify(result.parameters)}\n\n`);
  const rows: string[][] = [['metric', 'who', 'n', 'min', 'median', 'max', 'unit', 'ratio (median)']];
  for (const c of result.comparisons) {
    const o = stats(c.offshoot.samples);
    const b = stats(c.baseline.samples);
    rows.push([c.metric, c.offshoot.label, String(c.offshoot.samples.length), fmt(o.min), fmt(o.median), fmt(o.max), c.offshoot.unit, `${(o.median / b.median).toFixed(2)}x`]);
    rows.push(['', c.baseline.label, String(c.baseline.samples.length), fmt(b.min), fmt(b.median), fmt(b.max), c.baseline.unit, '1.00x']);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const r of rows) process.stdout.write(`${r.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ')}\n`);
  for (const note of result.notes) process.stdout.write(`note: ${note}\n`);
}
