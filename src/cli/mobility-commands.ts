// Mobility commands: `offshoot job move ID --to HOST` (a copy job handed to
// another host; the worker on its host stops after its chunk in flight and
// the new host's goes on from the progress file; waits for the job's end by
// default and prints what each host copied), `offshoot disk seed DISK --to
// HOST|DATASTORE` (a chain copied ahead of time, keeping its content ids),
// `offshoot vm move-plan NAME --to HOST` (what a move would skip and send),
// `offshoot host content HOST CHAIN...` (which content ids a host holds),
// `offshoot vm move NAME --to HOST [--datastore DS] [--live|--cold]` (a VM
// moved sending only what the destination lacks, over the destination's
// copies of its bases in DS when named; waits for its task unless --no-wait).
// --json for scripts.
import type { Command } from 'commander';
import { InvalidInputError } from '../common/index.ts';
import { MobilityClient } from '../client/index.ts';
import type { MovePlan } from '../client/index.ts';
import type { HandoverResult, MoveVmStarted, SeedResult, TaskRecord } from '../vm/index.ts';
import { printJson, printTable } from './output.ts';
import type { CommandContext } from './vm-commands.ts';

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function printResult(r: HandoverResult): void {
  process.stdout.write(`copy job ${r.job.id}: ${r.job.state}${r.job.error ? ` (${r.job.error.code}: ${r.job.error.message})` : ''}\n`);
  printTable(['HOST', 'COPIED', 'CHUNKS'], r.hosts.map((h) => [h.host, mib(h.bytesCopied), h.chunksCopied]));
}

function printSeed(r: SeedResult): void {
  process.stdout.write(`seed to datastore ${r.datastore} (host ${r.host}): ${r.job ? `copy job ${r.job.id} ${r.job.state}` : 'every layer is there already'}\n`);
  for (const l of r.skipped) process.stdout.write(`  held    ${l.disk}  ${l.contentId}  ${l.file}\n`);
  for (const l of r.copied) process.stdout.write(`  copied  ${l.disk}  ${l.contentId}  ${mib(l.bytes)}\n`);
  if (r.mismatch) process.stdout.write(`  a held layer's bytes differ from the source's (${r.mismatch.file}): copied anew\n`);
}

function printPlan(p: MovePlan): void {
  process.stdout.write(`move of ${p.vm} from ${p.from} to ${p.to}: skips ${mib(p.skippedBytes)}, sends ${mib(p.sendBytes)} of bases (and each disk's top, and memory)\n`);
  printTable(['DISK', 'LAYERS', 'HELD', 'SKIPPED', 'SENT', 'MISMATCH'], p.disks.map((d) => [d.diskId, d.layers.length, d.heldLayers, mib(d.skippedBytes), mib(d.sendBytes), d.mismatch ? d.mismatch.file : '-']));
}

function printMove(m: MoveVmStarted, task: TaskRecord): void {
  process.stdout.write(`${m.mode} move of ${m.vm} from ${m.from} to ${m.to}: task ${task.id} ${task.state}; skipped ${mib(m.skippedBytes)} of bases the destination holds, sent ${mib(m.sendBytes)} (and each disk's top${m.mode === 'live' ? ', and memory' : ''})\n`);
  printTable(['DISK', 'SKIPPED', 'SENT'], m.disks.map((d) => [d.diskId, `${d.heldLayers} (${mib(d.skippedBytes)})`, `${d.send.length} (${mib(d.sendBytes)})`]));
}

/** Adds to the `job`, `disk`, `vm` and `host` commands the other modules made (or new ones). */
export function registerMobilityCommands(program: Command, ctx: CommandContext): void {
  const group = (name: string) => program.commands.find((c) => c.name() === name) ?? program.command(name);
  const mobility = () => new MobilityClient(ctx.client());
  const job = group('job');
  job
    .command('move')
    .argument('<id>', 'copy job id')
    .requiredOption('--to <host>', 'the host that finishes the copy (it must see the files the rest of the job touches)')
    .option('--no-wait', 'answer once the job runs on the new host')
    .option('--json', 'print JSON')
    .description('hand a copy job over to another host; it goes on from its recorded chunks')
    .action((id: string, o: { to: string; wait: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const result = await mobility().moveJob(id, o.to, o.wait);
        if (o.json) printJson(result);
        else printResult(result);
      }),
    );

  group('disk')
    .command('seed')
    .argument('<disk>', 'disk id or DATASTORE/NAME')
    .requiredOption('--to <host|datastore>', "a datastore, or a host (its own default datastore)")
    .option('--verify', 'hash the layers the destination holds by id; one whose bytes differ is copied anew')
    .option('--no-wait', 'answer once the copy job is queued')
    .option('--json', 'print JSON')
    .description("copy a disk's chain ahead of time to another host, keeping its content ids (layers it holds already are skipped)")
    .action((ref: string, o: { to: string; verify?: boolean; wait: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const result = await mobility().seedDisk(ref, o.to, { verify: Boolean(o.verify), wait: o.wait });
        if (o.json) printJson(result);
        else printSeed(result);
        if (result.job && o.wait && result.job.state !== 'succeeded') return 1;
      }),
    );

  group('vm')
    .command('move-plan')
    .argument('<vm>', 'VM name or id')
    .requiredOption('--to <host>', 'the destination host')
    .option('--verify', 'hash each layer the destination holds and compare it with the source')
    .option('--json', 'print JSON')
    .description("which bases of a VM's disks a host holds by content id: what a move there would skip and send")
    .action((vm: string, o: { to: string; verify?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const plan = await mobility().movePlan(vm, o.to, Boolean(o.verify));
        if (o.json) printJson(plan);
        else printPlan(plan);
      }),
    );

  group('vm')
    .command('move')
    .argument('<vm>', 'VM name or id')
    .requiredOption('--to <host>', 'the destination host')
    .option('--datastore <name>', "a datastore of the destination: only its copies of the bases are used (a disk held elsewhere moves whole)")
    .option('--live', 'live (a migration; the default for a running VM)')
    .option('--cold', 'cold (the VM must be stopped; the default for a stopped VM)')
    .option('--verify', 'hash each base the destination holds by id and compare it with the source')
    .option('--no-wait', 'answer once the move has started')
    .option('--json', 'print JSON')
    .description('move a VM to another host, sending only what the destination lacks by content id')
    .action((vm: string, o: { to: string; datastore?: string; live?: boolean; cold?: boolean; verify?: boolean; wait: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        if (o.live && o.cold) throw new InvalidInputError('choose one of --live and --cold', { vm });
        const started = await mobility().moveVm(vm, { to: o.to, verify: Boolean(o.verify), ...(o.datastore ? { datastore: o.datastore } : {}), ...(o.live ? { mode: 'live' as const } : o.cold ? { mode: 'cold' as const } : {}) });
        const task = o.wait ? await ctx.client().waitTask(started.task.id) : started.task;
        if (o.json) printJson({ ...started, task });
        else printMove(started, task);
      }),
    );

  group('host')
    .command('content')
    .argument('<host>', 'host name or id')
    .argument('<chains...>', 'chains of content ids, each top first, comma-separated (a lone id: a standalone file)')
    .option('--verify', 'hash what is found (only layers whose id carries its hash can be verified)')
    .option('--json', 'print JSON')
    .description('which chains of content ids a host holds, and where')
    .action((host: string, chains: string[], o: { verify?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const found = await mobility().findContent(host, chains.map((c) => c.split(',')), Boolean(o.verify));
        if (o.json) printJson(found);
        else printTable(['CHAIN', 'FILE', 'VERIFIED'], found.answers.map((a) => [a.contentIds.join(','), a.file ?? '-', a.verified === null ? '-' : String(a.verified)]));
      }),
    );
}
