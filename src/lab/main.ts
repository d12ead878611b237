// `npm run lab -- up N | status | down`: test hosts on this machine (see
// config.ts for what a lab is and docs/lab.md for how to use it). Options:
// --dir (default $OFFSHOOT_HOME/lab), --prefix, --subnet, --port; --json.
import { Command, InvalidArgumentError } from 'commander';
import { toOffshootError } from '../common/index.ts';
import { DEFAULT_PORT, DEFAULT_PREFIX, DEFAULT_SUBNET, defaultLabDir } from './config.ts';
import type { LabOptions } from './config.ts';
import { agentsAnswering, labDown, labStatus, labUp } from './lab.ts';

interface CommonFlags {
  dir?: string;
  prefix?: string;
  subnet?: string;
  port?: number;
  json?: boolean;
}

function integer(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('not a whole number');
  return Number(value);
}

function optionsOf(flags: CommonFlags): Partial<LabOptions> {
  return { dir: flags.dir, prefix: flags.prefix, subnet: flags.subnet, port: flags.port };
}

function table(rows: string[][]): void {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const r of rows) process.stdout.write(`${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}\n`);
}

async function run(json: boolean | undefined, fn: () => Promise<number | void>): Promise<void> {
  try {
    process.exitCode = (await fn()) ?? 0;
  } catch (err) {
    const e = toOffshootError(err);
    if (json) process.stdout.write(`${JSON.stringify({ error: e.toJSON() })}\n`);
    else process.stderr.write(`error: ${e.message} [${e.code}]\n`);
    process.exitCode = 1;
  }
}

const program = new Command('lab').description('test hosts in network namespaces on this machine').showHelpAfterError();
const withCommon = (c: Command) =>
  c
    .option('--dir <dir>', `the lab's folder (default ${defaultLabDir()})`)
    .option('--prefix <prefix>', `prefix of namespace and link names (default ${DEFAULT_PREFIX})`)
    .option('--subnet <cidr>', `management subnet (default ${DEFAULT_SUBNET})`)
    .option('--port <port>', `agent port (default ${DEFAULT_PORT})`, integer)
    .option('--json', 'print JSON');

withCommon(program.command('up').argument('<count>', 'hosts lab1..labN', integer).description('make hosts lab1..labN and start their agents (again: restarts agents that are not running)')).action((count: number, flags: CommonFlags) =>
  run(flags.json, async () => {
    const result = await labUp(count, optionsOf(flags));
    if (flags.json) return void process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`lab in ${result.dir}: bridge ${result.bridge} at ${result.bridgeAddress}\n`);
    table([['HOST', 'NAMESPACE', 'AGENT', 'PID', 'ACTION'], ...result.hosts.map((h) => [h.name, h.namespace, h.url, String(h.pid), h.action])]);
    const unregistered = result.hosts.filter((h) => !h.registration.registered);
    if (unregistered.length > 0) process.stdout.write(`not registered with the control plane: ${unregistered[0]?.registration.reason}\n`);
  }),
);

withCommon(program.command('status').description("the lab's hosts and their agents")).action((flags: CommonFlags) =>
  run(flags.json, async () => {
    const hosts = await labStatus(optionsOf(flags));
    const answering = await agentsAnswering(hosts);
    const view = hosts.map((h) => ({ ...h, answering: answering[h.name] ?? false }));
    if (flags.json) return void process.stdout.write(`${JSON.stringify(view, null, 2)}\n`);
    if (view.length === 0) return void process.stdout.write('no lab\n');
    table([['HOST', 'NAMESPACE', 'ADDRESS', 'AGENT', 'PID', 'STATE'], ...view.map((h) => [h.name, h.namespace, h.address, h.url, String(h.pid ?? '-'), h.running ? (h.answering ? 'running' : 'not answering') : 'stopped'])]);
  }),
);

withCommon(program.command('down').description('remove everything the lab made')).action((flags: CommonFlags) =>
  run(flags.json, async () => {
    const result = await labDown(optionsOf(flags));
    if (flags.json) return void process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`stopped ${result.stoppedPids.length} processes; removed namespaces [${result.removedNamespaces.join(', ')}], links [${result.removedLinks.join(', ')}], ${result.removedFiles.length} folders and files\n`);
  }),
);

await program.parseAsync(process.argv);
