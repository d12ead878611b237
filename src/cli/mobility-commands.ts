// `offshoot job move ID --to HOST`: a copy job handed to another host (the
// worker on its host stops after its chunk in flight; the new host's goes on
// from the progress file). Waits for the job's end by default and prints what
// each host copied; --json for scripts.
import type { Command } from 'commander';
import { MobilityClient } from '../client/index.ts';
import type { HandoverResult } from '../vm/index.ts';
import { printJson, printTable } from './output.ts';
import type { CommandContext } from './vm-commands.ts';

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function printResult(r: HandoverResult): void {
  process.stdout.write(`copy job ${r.job.id}: ${r.job.state}${r.job.error ? ` (${r.job.error.code}: ${r.job.error.message})` : ''}\n`);
  printTable(['HOST', 'COPIED', 'CHUNKS'], r.hosts.map((h) => [h.host, mib(h.bytesCopied), h.chunksCopied]));
}

/** Registers under the `job` command the storage commands made (or a new one). */
export function registerMobilityCommands(program: Command, ctx: CommandContext): void {
  const job = program.commands.find((c) => c.name() === 'job') ?? program.command('job').description('copy jobs');
  job
    .command('move')
    .argument('<id>', 'copy job id')
    .requiredOption('--to <host>', 'the host that finishes the copy (it must see the files the rest of the job touches)')
    .option('--no-wait', 'answer once the job runs on the new host')
    .option('--json', 'print JSON')
    .description('hand a copy job over to another host; it goes on from its recorded chunks')
    .action((id: string, o: { to: string; wait: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const result = await new MobilityClient(ctx.client()).moveJob(id, o.to, o.wait);
        if (o.json) printJson(result);
        else printResult(result);
      }),
    );
}
