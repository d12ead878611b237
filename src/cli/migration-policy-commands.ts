// `offshoot migration-policy show|set` (defaults of live migrations for the
// fleet or one host: bandwidth cap, downtime limit, post-copy, auto-converge,
// how many migrations a host sends and receives at once) and `offshoot host
// drain NAME` (set the host draining and live-migrate its VMs off, as one task
// with progress; the result lists the VMs moved and those not moved with the
// reason; exit 1 when a running VM could not be moved).
import type { Command } from 'commander';
import { InvalidInputError, OffshootError } from '../common/index.ts';
import { MigrationPolicyClient } from '../client/index.ts';
import type { DrainResult, PolicyView, TaskRecord } from '../vm/index.ts';
import { printJson, printTable } from './output.ts';
import type { CommandContext } from './vm-commands.ts';

const MiB = 2 ** 20;
const FIELDS = [
  ['maxBandwidthBytesPerSecond', 'max bandwidth'],
  ['downtimeLimitMs', 'downtime limit'],
  ['postcopy', 'post-copy'],
  ['autoConverge', 'auto-converge'],
  ['maxOutgoing', 'max outgoing'],
  ['maxIncoming', 'max incoming'],
] as const;

function show(field: string, value: unknown): string {
  if (value === undefined) return '-';
  if (field === 'maxBandwidthBytesPerSecond') return `${Math.round((value as number) / MiB)} MiB/s`;
  if (field === 'downtimeLimitMs') return `${String(value)} ms`;
  return String(value);
}

function whole(name: string, min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidInputError(`${name} must be a whole number of at least ${min}, got "${value}"`, { option: name, value });
    return n;
  };
}

function onOff(value: string): boolean {
  if (value === 'on' || value === 'true') return true;
  if (value === 'off' || value === 'false') return false;
  throw new InvalidInputError(`--auto-converge must be on or off, got "${value}"`, { option: '--auto-converge', value });
}

function printView(view: PolicyView): void {
  const host = view.host;
  const head = ['SETTING', 'DEFAULT', 'FLEET', ...(host ? [`HOST ${host.name}`] : []), 'EFFECTIVE', 'FROM'];
  const effective = host?.effective ?? view.effective;
  printTable(
    head,
    FIELDS.map(([field, label]) => [label, show(field, view.defaults[field]), show(field, view.fleet[field]), ...(host ? [show(field, host.policy[field])] : []), show(field, effective[field]), effective.sources[field]]),
  );
  if (!host && view.hosts.length > 0) process.stdout.write(`hosts with an override: ${view.hosts.map((h) => h.host).join(', ')}\n`);
}

export function registerMigrationPolicyCommands(program: Command, ctx: CommandContext): void {
  const policy = program.command('migration-policy').description('defaults of live migrations, for the fleet or per host (a migration\'s own options come first, then its source host\'s, then the fleet\'s, then built-in)');
  policy
    .command('show')
    .option('--host <host>', "a host: its override and what its migrations get")
    .option('--json', 'print JSON')
    .description('show the built-in defaults, the fleet\'s policy, a host\'s override and what applies')
    .action((o: { host?: string; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const view = await new MigrationPolicyClient(ctx.client()).show(o.host);
        if (o.json) printJson(view);
        else printView(view);
      }),
    );
  policy
    .command('set')
    .option('--host <host>', "change this host's override (default: the fleet's policy)")
    .option('--max-bandwidth <rate>', 'bandwidth cap, e.g. 500M (bytes per second)')
    .option('--downtime-limit <ms>', 'the longest stop at the switch-over QEMU plans for', whole('--downtime-limit', 1))
    .option('--postcopy <mode>', 'auto (when pre-copy does not converge), never, always')
    .option('--auto-converge <on|off>', "throttle the guest's vCPUs while it dirties memory too fast", onOff)
    .option('--max-outgoing <n>', 'how many migrations a host sends at once (more wait in a queue)', whole('--max-outgoing', 1))
    .option('--max-incoming <n>', 'how many migrations a host receives at once (more wait in a queue)', whole('--max-incoming', 1))
    .option('--unset <setting...>', 'remove settings from this scope: max-bandwidth, downtime-limit, postcopy, auto-converge, max-outgoing, max-incoming')
    .option('--clear', "drop the host's whole override (with --host)")
    .option('--json', 'print JSON')
    .description("change the fleet's migration policy or a host's override")
    .action((o: { host?: string; maxBandwidth?: string; downtimeLimit?: number; postcopy?: string; autoConverge?: boolean; maxOutgoing?: number; maxIncoming?: number; unset?: string[]; clear?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = new MigrationPolicyClient(ctx.client());
        let view: PolicyView;
        if (o.clear) {
          if (!o.host) throw new InvalidInputError('--clear drops a host\'s override: name the host with --host', { option: '--clear' });
          view = await client.clear(o.host);
        } else {
          const names: Record<string, string> = { 'max-bandwidth': 'maxBandwidth', 'downtime-limit': 'downtimeLimitMs', postcopy: 'postcopy', 'auto-converge': 'autoConverge', 'max-outgoing': 'maxOutgoing', 'max-incoming': 'maxIncoming' };
          const patch: Record<string, unknown> = {};
          for (const u of o.unset ?? []) {
            const key = names[u];
            if (!key) throw new InvalidInputError(`--unset: unknown setting "${u}"; one of ${Object.keys(names).join(', ')}`, { option: '--unset', value: u });
            patch[key] = null;
          }
          if (o.maxBandwidth !== undefined) patch.maxBandwidth = o.maxBandwidth;
          if (o.downtimeLimit !== undefined) patch.downtimeLimitMs = o.downtimeLimit;
          if (o.postcopy !== undefined) patch.postcopy = o.postcopy;
          if (o.autoConverge !== undefined) patch.autoConverge = o.autoConverge;
          if (o.maxOutgoing !== undefined) patch.maxOutgoing = o.maxOutgoing;
          if (o.maxIncoming !== undefined) patch.maxIncoming = o.maxIncoming;
          if (Object.keys(patch).length === 0) throw new InvalidInputError('nothing to set: give a setting (e.g. --max-outgoing 2), --unset or --clear', {});
          view = await client.set(o.host, patch);
        }
        if (o.json) printJson(view);
        else printView(view);
      }),
    );

  const host = program.commands.find((c) => c.name() === 'host') ?? program.command('host');
  host
    .command('drain')
    .argument('<name>')
    .option('--to <host>', 'send every VM to this host (default: per VM, the ready host with the most free memory)')
    .option('--stopped <stay|move>', 'stopped VMs: stay on the host (default), or move with their files (a cold move; bases the destination holds are skipped)', 'stay')
    .option('--no-wait', 'print the task and return at once')
    .option('--json', 'print JSON')
    .description('take a host out of placement and live-migrate its running VMs off (under the migration limits; --stopped move also cold-moves its stopped VMs); its copy jobs move by themselves')
    .action((name: string, o: { to?: string; stopped: string; wait: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        if (o.stopped !== 'stay' && o.stopped !== 'move') throw new InvalidInputError(`--stopped is stay or move, not "${o.stopped}"`, { stopped: o.stopped });
        const { task: started } = await new MigrationPolicyClient(client).drain(name, { ...(o.to ? { to: o.to } : {}), stopped: o.stopped });
        if (!o.wait) return o.json ? printJson(started) : void process.stdout.write(`${started.id}\n`);
        const tty = process.stderr.isTTY && !o.json;
        let task: TaskRecord;
        try {
          task = await client.waitTask(started.id, o.json || !tty ? undefined : (t) => process.stderr.write(`\r\x1b[K${t.message}`));
        } finally {
          if (tty) process.stderr.write('\n');
        }
        if (task.state !== 'succeeded') throw task.error ? new OffshootError(task.error.code, task.error.message, task.error.details, 500) : new OffshootError('TASK_FAILED', task.message, {}, 500);
        const result = task.result as DrainResult;
        if (o.json) printJson(result);
        else {
          process.stdout.write(`host ${result.host} is draining: ${result.moved.length} VM(s) moved, ${result.notMoved.length} not moved\n`);
          if (result.moved.length) printTable(['VM', 'TO', 'MODE', 'DOWNTIME', 'QUEUED'], result.moved.map((m) => [m.vm, m.to, m.mode, m.mode === 'cold' ? '-' : m.downtimeMs === null ? '?' : `${m.downtimeMs} ms`, `${m.queuedMs} ms`]));
          for (const n of result.notMoved) process.stdout.write(`not moved: ${n.vm} (${n.state}): ${n.reason}\n`);
        }
        return result.notMoved.some((n) => n.outcome === 'failed') ? 1 : 0;
      }),
    );
}
