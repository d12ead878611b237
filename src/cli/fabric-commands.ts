// `offshoot template create|place|list|show|scale|delete` and `offshoot vm claim`:
// the elastic fabric's commands, through the typed fabric client. Tables for
// people, --json for scripts; a claim prints the child's name on stdout (and
// where it came from on stderr).
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidInputError } from '../common/index.ts';
import { FabricClient } from '../client/index.ts';
import type { ClaimRequest, ClaimResult, ScaleTemplateRequest, TemplateView } from '../vm/index.ts';
import { printJson, printTable, taskProgress } from './output.ts';
import type { CommandContext } from './vm-commands.ts';

function count(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidInputError(`${name} must be a whole number, got "${value}"`, { option: name, value });
    return n;
  };
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

function mib(bytes: number | null): string {
  return bytes === null ? '-' : `${Math.round(bytes / 2 ** 20)} MiB`;
}

function printTemplate(t: TemplateView): void {
  const lines: Array<[string, string]> = [
    ['name', t.name],
    ['id', t.id],
    ['state', t.state + (t.stateReason ? ` (${t.stateReason})` : '')],
    ['source', `${t.sourceVmName} (${t.sourceVmId})`],
    ['memory', `${t.memoryMiB} MiB`],
    ['created', t.createdAt],
  ];
  for (const [k, v] of lines) process.stdout.write(`${k.padEnd(10)} ${v}\n`);
  printTable(
    ['HOST', 'STATE', 'WANTED', 'READY', 'FILLING', 'CLAIMED', 'MODE', 'BUDGET', 'NOTE'],
    t.placements.map((p) => [p.host, p.state + (p.stateReason ? ` (${p.stateReason})` : ''), p.pool.ready, p.children.ready, p.children.filling, p.children.claimed, p.pool.warm ? 'warm' : 'paused', mib(p.pool.maxMemoryBytes), p.poolNote ?? '']),
  );
}

export function registerFabricCommands(program: Command, ctx: CommandContext): void {
  const fabric = () => new FabricClient(ctx.client());
  const template = program.command('template').description('parent templates: running VMs frozen as templates, with pools of ready children');

  template
    .command('create')
    .description('make a parent template of a running (or paused) VM; the VM runs on')
    .argument('<name>')
    .requiredOption('--from <vm>', 'the VM to make it of')
    .option('--host <host>', 'also place it on this host (repeatable; all or nothing)', collect)
    .option('--json', 'print JSON')
    .action((name: string, o: { from: string; host?: string[]; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const f = new FabricClient(client);
        const started = await f.createTemplate({ name, from: o.from, ...(o.host ? { hosts: o.host } : {}) });
        if (started.task) await client.waitTask(started.task.id, o.json ? undefined : taskProgress(`template ${name}`));
        const made = await f.getTemplate(name);
        if (o.json) return printJson(made);
        process.stdout.write(`${made.name}\n`);
      }),
    );

  template
    .command('place')
    .description('carry a template to another host (its memory and missing files copied); its pool there is scaled apart')
    .argument('<name>')
    .requiredOption('--host <host>', 'the host to place it on')
    .option('--json', 'print JSON')
    .action((name: string, o: { host: string; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const f = new FabricClient(client);
        const started = await f.placeTemplate(name, { host: o.host });
        if (started.task) await client.waitTask(started.task.id, o.json ? undefined : taskProgress(`placing ${name} on ${o.host}`));
        const placed = await f.getTemplate(name);
        if (o.json) return printJson(placed);
        printTemplate(placed);
      }),
    );

  template
    .command('list')
    .description('list templates')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const list = await fabric().listTemplates();
        if (o.json) return printJson(list);
        const sum = (t: TemplateView, k: 'ready' | 'claimed') => t.placements.reduce((a, p) => a + p.children[k], 0);
        printTable(
          ['NAME', 'STATE', 'SOURCE', 'MEMORY', 'HOSTS', 'READY', 'CLAIMED', 'ID'],
          list.map((t) => [t.name, t.state, t.sourceVmName, `${t.memoryMiB} MiB`, t.placements.map((p) => p.host).join(','), `${sum(t, 'ready')}/${t.placements.reduce((a, p) => a + p.pool.ready, 0)}`, sum(t, 'claimed'), t.id]),
        );
      }),
    );

  template
    .command('show')
    .description('show a template, its copies on hosts and their pools')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action((name: string, o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const t = await fabric().getTemplate(name);
        if (o.json) return printJson(t);
        printTemplate(t);
      }),
    );

  template
    .command('scale')
    .description('keep K ready children of the template on each host (paused, or running idle with --warm)')
    .argument('<name>')
    .requiredOption('--ready <k>', 'ready children per host', count('--ready'))
    .option('--warm', 'children run idle instead of paused (a claim skips the resume)')
    .option('--paused', 'children are paused (the default; undoes --warm)')
    .option('--max-memory <size>', 'the most host memory the pool may hold per host, e.g. 2G ("none": no budget)')
    .option('--host <host>', 'only the pool on this host')
    .option('--wait', 'return once the pools are refilled')
    .option('--json', 'print JSON')
    .action((name: string, o: { ready: number; warm?: boolean; paused?: boolean; maxMemory?: string; host?: string; wait?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        if (o.warm && o.paused) throw new InvalidInputError('--warm and --paused exclude each other', {});
        const request: ScaleTemplateRequest = { ready: o.ready };
        if (o.warm) request.warm = true;
        if (o.paused) request.warm = false;
        if (o.maxMemory !== undefined) request.maxMemory = o.maxMemory === 'none' ? null : o.maxMemory;
        if (o.host) request.host = o.host;
        const t = await fabric().scaleTemplate(name, request, Boolean(o.wait));
        if (o.json) return printJson(t);
        printTemplate(t);
      }),
    );

  template
    .command('delete')
    .description('delete a template; refused while it has children (--force: its pools go, claimed children run on)')
    .argument('<name>')
    .option('--force', 'remove its pool children too; its claimed children run on')
    .option('--json', 'print JSON')
    .action((name: string, o: { force?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const t = await fabric().deleteTemplate(name, Boolean(o.force));
        if (o.json) return printJson(t);
        process.stdout.write(`deleted template ${t.name}\n`);
      }),
    );

  const vm = program.commands.find((c) => c.name() === 'vm') ?? program.command('vm');
  vm.command('claim')
    .description("take a ready child of a template (or fork one on demand), customised and running; prints the child's name")
    .argument('<template>')
    .option('--name <name>', "the child's VM name (default: its pool name)")
    .option('--hostname <hostname>', 'its hostname (default: its name)')
    .option('--ssh-key <file>', "a public key file added to root's authorized_keys")
    .option('--env <K=V>', 'an environment variable for the script, kept in /etc/offshoot/claim.env (repeatable)', collect)
    .option('--customize <file>', 'a shell script run in the child; its output is printed on stderr (in the result with --json)')
    .option('--host <host>', 'take a child on this host')
    .option('--timeout-ms <ms>', 'how long the guest step may take', count('--timeout-ms'))
    .option('--json', 'print JSON')
    .action((name: string, o: { name?: string; hostname?: string; sshKey?: string; env?: string[]; customize?: string; host?: string; timeoutMs?: number; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const request: ClaimRequest = {};
        if (o.name) request.name = o.name;
        if (o.hostname) request.hostname = o.hostname;
        if (o.sshKey) request.sshKey = readFileSync(o.sshKey, 'utf8');
        if (o.env) request.env = o.env;
        if (o.customize) request.customize = readFileSync(o.customize, 'utf8');
        if (o.host) request.host = o.host;
        if (o.timeoutMs !== undefined) request.timeoutMs = o.timeoutMs;
        const result: ClaimResult = await fabric().claim(name, request);
        if (o.json) return printJson(result);
        process.stdout.write(`${result.vm.name}\n`);
        process.stderr.write(`${result.source === 'pool' ? 'from the ready pool' : 'forked on demand (no child was ready)'} on host ${result.host}; running in ${result.timings.claimMs} ms\n`);
        if (result.script) {
          if (result.script.stdout) process.stderr.write(result.script.stdout);
          if (result.script.stderr) process.stderr.write(result.script.stderr);
        }
      }),
    );
}
