// `offshoot host ...`: the hosts this control plane drives. add (with the
// agent's credential file), list, show, maintenance, ready, remove (drain:
// migration-policy-commands.ts).
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidInputError } from '../common/index.ts';
import { HostClient } from '../client/index.ts';
import type { HostListItem } from '../client/index.ts';
import { printJson, printTable } from './output.ts';
import type { CommandContext } from './vm-commands.ts';

function gib(bytes: number | undefined): string {
  return bytes === undefined ? '-' : `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function hostRow(h: HostListItem): Array<string | number> {
  return [h.name, h.state, h.url, h.vms, gib(h.memory?.freeBytes), gib(h.memory?.totalBytes), h.stateReason ?? ''];
}

function printHost(h: HostListItem): void {
  const facts = (h.facts ?? {}) as { accel?: string; accelReason?: string; qemuVersion?: string; hostname?: string; confinement?: { user: string | null; sandbox: boolean; reason: string | null } };
  const lines: Array<[string, string]> = [
    ['name', h.name],
    ['id', h.id],
    ['state', h.state + (h.stateReason ? ` (${h.stateReason})` : '')],
    ['url', h.url],
    ['hostname', facts.hostname ?? '-'],
    ['vms', String(h.vms)],
    ['memory', h.memory ? `${gib(h.memory.freeBytes)} free of ${gib(h.memory.totalBytes)}` : '-'],
    ['accel', facts.accel ? `${facts.accel} (${facts.accelReason ?? ''})` : '-'],
    ['qemu', facts.qemuVersion ?? '-'],
    ['confinement', facts.confinement ? (facts.confinement.user || facts.confinement.sandbox ? `user ${facts.confinement.user ?? '-'}, sandbox ${facts.confinement.sandbox ? 'on' : 'off'}` : `none${facts.confinement.reason ? ` (${facts.confinement.reason})` : ''}`) : '-'],
    ['protocol', `${h.protocolVersion} (${h.capabilities.join(', ')})`],
    ['epoch', String(h.epoch)],
    ['last seen', h.lastSeenAt ?? '-'],
  ];
  for (const [k, v] of lines) process.stdout.write(`${k.padEnd(12)} ${v}\n`);
}

export function registerHostCommands(program: Command, ctx: CommandContext): void {
  const hosts = () => new HostClient(ctx.client());
  const run = (json: unknown, fn: (h: HostClient) => Promise<unknown>, print: (value: never) => void) =>
    ctx.run(Boolean(json), async () => {
      const value = await fn(hosts());
      if (json) printJson(value);
      else print(value as never);
    });
  const host = program.command('host').description('the hosts this control plane drives (each runs `offshoot agent serve`)');
  host
    .command('add')
    .argument('<name>')
    .argument('<url>', "the agent's address, e.g. http://10.0.0.5:7100")
    .requiredOption('--token-file <file>', "the agent's credential (agent-token in its home)")
    .option('--json', 'print JSON')
    .description('add a host; refused unless its agent answers and speaks this protocol')
    .action((name: string, url: string, o: { tokenFile: string; json?: boolean }) => {
      let token: string;
      try {
        token = readFileSync(o.tokenFile, 'utf8').trim();
      } catch (err) {
        return ctx.run(Boolean(o.json), async () => {
          throw new InvalidInputError(`cannot read --token-file ${o.tokenFile}: ${(err as Error).message}`, { file: o.tokenFile });
        });
      }
      return run(o.json, (h) => h.add(name, url, token), (h: HostListItem) => process.stdout.write(`added host ${h.name} (${h.url}), ${h.state}, epoch ${h.epoch}\n`));
    });
  host.command('list').option('--json', 'print JSON').description('hosts with their state, VMs and memory')
    .action((o: { json?: boolean }) => run(o.json, (h) => h.list(), (list: HostListItem[]) => printTable(['NAME', 'STATE', 'URL', 'VMS', 'FREE', 'MEMORY', 'REASON'], list.map(hostRow))));
  host
    .command('show')
    .argument('[name]', 'a host of the fleet (default: this controller\'s own host, with its agent\'s details)')
    .option('--json', 'print JSON')
    .description('show a host')
    .action((name: string | undefined, o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        if (name) {
          const h = await hosts().get(name);
          if (o.json) printJson(h);
          else printHost(h);
          return;
        }
        const info = await ctx.client().host();
        if (o.json) printJson(info);
        else for (const [k, v] of Object.entries(info)) process.stdout.write(`${k.padEnd(12)} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}\n`);
      }),
    );
  // `host drain` (which also migrates the VMs off) is in migration-policy-commands.ts.
  for (const [verb, what] of [['maintenance', 'take a host out of placement'], ['ready', 'put a drained or held host back into placement']] as const) {
    host.command(verb).argument('<name>').option('--json', 'print JSON').description(what)
      .action((name: string, o: { json?: boolean }) => run(o.json, (h) => h[verb](name), (h: HostListItem) => process.stdout.write(`host ${h.name} is ${h.state}\n`)));
  }
  host.command('remove').argument('<name>').option('--json', 'print JSON').description('forget a host (refused while VMs live there)')
    .action((name: string, o: { json?: boolean }) => run(o.json, (h) => h.remove(name), (h: HostListItem) => process.stdout.write(`removed host ${h.name}\n`)));
}
