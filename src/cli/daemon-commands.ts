// `offshoot serve` (foreground or --detach), `offshoot agent serve`,
// `offshoot daemon status|stop`, `offshoot task list|show|cancel`,
// `offshoot checkpoint list|show|delete` and `offshoot events`.
import { spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { mkdir } from 'node:fs/promises';
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { OffshootError, defaultHome, homePaths, isDaemonProcess, sleep } from '../common/index.ts';
import type { DaemonFile } from '../common/index.ts';
import { clientFromEnvironment } from '../client/index.ts';
import type { CommandContext } from './vm-commands.ts';
import { printJson, printTable, taskProgress } from './output.ts';

function readDaemonFile(): DaemonFile | undefined {
  try {
    return JSON.parse(readFileSync(homePaths(defaultHome()).daemonFile, 'utf8')) as DaemonFile;
  } catch {
    return undefined;
  }
}


interface ServeFlags {
  listen?: string;
  database?: string;
  metricsListen?: string;
  allowImages: string[];
  noLocalHost: boolean;
  vcpuNice?: number;
}

const VCPU_NICE_HELP = "the nice value of this machine's guests' vCPU threads (and of each QEMU's scheduler group where the kernel groups sessions), 0-19: they yield the CPUs to QEMU's own threads and the agent when both want them (default OFFSHOOT_VCPU_NICE, else 5; 0 leaves them alone)";

/** --vcpu-nice's value: an integer from 0 to 19. */
function parseVcpuNice(value: string): number {
  const nice = Number(value);
  if (!/^\d+$/.test(value) || nice > 19) throw new InvalidArgumentError('an integer from 0 to 19');
  return nice;
}

async function serveForeground(flags: ServeFlags): Promise<void> {
  const { startDaemon } = await import('../api/index.ts');
  const home = defaultHome();
  const daemon = await startDaemon({ home, listen: flags.listen, database: flags.database, metricsListen: flags.metricsListen, allowImages: flags.allowImages, noLocalHost: flags.noLocalHost, ...(flags.vcpuNice !== undefined ? { vcpuNice: flags.vcpuNice } : {}), guardProcess: true });
  process.stdout.write(`offshoot daemon listening on ${daemon.url}${daemon.metricsUrl ? `, metrics on ${daemon.metricsUrl}/metrics` : ''} (home ${home}, log ${homePaths(home).log})\n`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    daemon.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

/** Starts the daemon in the background and returns once it answers. */
async function serveDetached(flags: ServeFlags): Promise<DaemonFile> {
  const { listen, database, metricsListen, allowImages } = flags;
  const home = defaultHome();
  const paths = homePaths(home);
  await mkdir(home, { recursive: true, mode: 0o700 });
  const existing = readDaemonFile();
  if (existing && isDaemonProcess(existing.pid)) return existing;
  // Private like every file of the home, whatever the umask of the shell that ran this.
  const out = openSync(`${paths.home}/serve.out`, 'a', 0o600);
  const args = [...process.execArgv, process.argv[1] as string, 'serve', ...(listen ? ['--listen', listen] : []), ...(metricsListen ? ['--metrics-listen', metricsListen] : []), ...allowImages.flatMap((dir) => ['--allow-images', resolve(dir)]), ...(flags.noLocalHost ? ['--no-local-host'] : []), ...(flags.vcpuNice !== undefined ? ['--vcpu-nice', String(flags.vcpuNice)] : [])];
  // The database URL goes by environment, not argv, so its password does not show in `ps`.
  const env = database ? { ...process.env, OFFSHOOT_DATABASE_URL: database } : process.env;
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', out, out], env });
  child.unref();
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const file = readDaemonFile();
    if (file && file.pid === child.pid) {
      try {
        await clientFromEnvironment({ ...process.env, OFFSHOOT_URL: file.url }).health();
        return file;
      } catch {
        // not answering yet
      }
    }
    if (child.exitCode !== null || !isDaemonProcess(child.pid as number)) {
      throw new OffshootError('DAEMON_START_FAILED', `the daemon exited at start; see ${paths.home}/serve.out and ${paths.log}`, { home }, 500);
    }
    await sleep(100);
  }
  throw new OffshootError('DAEMON_START_FAILED', `the daemon did not answer within 30 s; see ${paths.log}`, { home }, 500);
}

export function registerDaemonCommands(program: Command, ctx: CommandContext): void {
  program
    .command('serve')
    .description('run the Offshoot daemon (state in OFFSHOOT_HOME, default ~/.offshoot)')
    .option('--listen <host:port>', 'address to bind', '127.0.0.1:0')
    .option('--database <location>', 'the inventory: a postgres://… URL shared by a fleet, or a SQLite file (default OFFSHOOT_DATABASE_URL, else the home\'s inventory.sqlite)')
    .option('--metrics-listen <host:port>', 'also serve GET /metrics (Prometheus, same token) on this address')
    .option('--allow-images <dirs...>', 'folders whose disk images, kernels and checkpoint files VMs may use as they are (besides the home and the datastores; also OFFSHOOT_ALLOW_IMAGES, colon-separated)')
    .option('--no-local-host', 'drive registered hosts only: run no VM in this process (a control plane of a fleet)')
    .option('--vcpu-nice <n>', VCPU_NICE_HELP, parseVcpuNice)
    .option('--detach', 'run in the background and return once it answers')
    .option('--json', 'print JSON')
    .action((o: { listen: string; database?: string; metricsListen?: string; allowImages?: string[]; localHost: boolean; vcpuNice?: number; detach?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const allowImages = [...(o.allowImages ?? []), ...(process.env.OFFSHOOT_ALLOW_IMAGES ?? '').split(':').filter((d) => d.length > 0)];
        const flags: ServeFlags = { listen: o.listen, database: o.database, metricsListen: o.metricsListen, allowImages, noLocalHost: o.localHost === false, ...(o.vcpuNice !== undefined ? { vcpuNice: o.vcpuNice } : {}) };
        if (!o.detach) return serveForeground(flags);
        const file = await serveDetached(flags);
        if (o.json) printJson(file);
        else process.stdout.write(`offshoot daemon (pid ${file.pid}) listening on ${file.url}\n`);
      }),
    );

  const agent = program.command('agent').description('this machine as a host of a fleet');
  agent
    .command('serve')
    .description('serve the agent protocol on --listen (state in --home, default OFFSHOOT_HOME); prints where its credential is')
    .requiredOption('--listen <host:port>', 'the address control planes reach this host on')
    .option('--home <dir>', 'the agent\'s home (default OFFSHOOT_HOME, else ~/.offshoot)')
    .option('--memory-dir <dir>', 'where guest RAM files go (default OFFSHOOT_MEMORY_DIR, else a folder in /dev/shm)')
    .option('--allow-images <dirs...>', 'folders whose disk images, kernels and checkpoint files VMs may use as they are (also OFFSHOOT_ALLOW_IMAGES, colon-separated)')
    .option('--vcpu-nice <n>', VCPU_NICE_HELP, parseVcpuNice)
    .action((o: { listen: string; home?: string; memoryDir?: string; allowImages?: string[]; vcpuNice?: number }) =>
      ctx.run(false, async () => {
        const { startAgentDaemon } = await import('../api/index.ts');
        const home = o.home ? resolve(o.home) : defaultHome();
        const allowImages = [...(o.allowImages ?? []), ...(process.env.OFFSHOOT_ALLOW_IMAGES ?? '').split(':').filter((d) => d.length > 0)];
        const running = await startAgentDaemon({ home, listen: o.listen, ...(o.memoryDir ? { memoryDir: o.memoryDir } : {}), allowImages, ...(o.vcpuNice !== undefined ? { vcpuNice: o.vcpuNice } : {}), guardProcess: true });
        process.stdout.write(`offshoot agent listening on ${running.url} (home ${home}; its credential is in ${running.tokenFile})\n`);
        let stopping = false;
        const stop = () => {
          if (stopping) return;
          stopping = true;
          running.close().then(
            () => process.exit(0),
            () => process.exit(1),
          );
        };
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
      }),
    );

  const daemon = program.command('daemon').description('the background daemon');
  daemon
    .command('status')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const file = readDaemonFile();
        const running = Boolean(file && isDaemonProcess(file.pid));
        if (o.json) printJson({ running, ...(file ?? {}) });
        else process.stdout.write(running && file ? `running: pid ${file.pid} at ${file.url}\n` : 'not running\n');
        return running ? 0 : 3;
      }),
    );
  daemon
    .command('stop')
    .description('stop the daemon; VMs keep running and are re-adopted at the next start')
    .action(() =>
      ctx.run(false, async () => {
        const file = readDaemonFile();
        if (!file || !isDaemonProcess(file.pid)) {
          process.stdout.write('not running\n');
          return;
        }
        process.kill(file.pid, 'SIGTERM');
        const deadline = Date.now() + 15_000;
        while (isDaemonProcess(file.pid) && Date.now() < deadline) await sleep(100);
        process.stdout.write(isDaemonProcess(file.pid) ? `daemon ${file.pid} did not stop in 15 s\n` : `stopped daemon ${file.pid}\n`);
      }),
    );

  const task = program.command('task').description('long operations');
  task
    .command('list')
    .option('--limit <n>', 'how many', (v) => Number(v), 20)
    .option('--json', 'print JSON')
    .action((o: { json?: boolean; limit: number }) =>
      ctx.run(Boolean(o.json), async () => {
        const tasks = await ctx.client().listTasks(o.limit);
        if (o.json) printJson(tasks);
        else printTable(['ID', 'KIND', 'TARGET', 'STATE', 'PROGRESS', 'MESSAGE'], tasks.map((t) => [t.id, t.kind, t.targetName, t.state, `${Math.round(t.progress * 100)}%`, t.message.slice(0, 60)]));
      }),
    );
  task
    .command('show')
    .argument('<id>')
    .option('--wait', 'wait until it finishes')
    .option('--json', 'print JSON')
    .action((id: string, o: { json?: boolean; wait?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const record = o.wait ? await client.waitTask(id, o.json ? undefined : taskProgress(id)) : await client.getTask(id);
        if (o.json) printJson(record);
        else for (const [k, v] of Object.entries(record)) process.stdout.write(`${k.padEnd(12)} ${typeof v === 'object' ? JSON.stringify(v) : v}\n`);
      }),
    );

  task
    .command('cancel')
    .description('cancel a running task that allows it (a checkpoint being written)')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action((id: string, o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const record = await ctx.client().cancelTask(id);
        if (o.json) printJson(record);
        else process.stdout.write(`${record.id}\t${record.state}\t${record.message}\n`);
      }),
    );

  const checkpoint = program.command('checkpoint').description('checkpoint files');
  checkpoint
    .command('list')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const list = await ctx.client().listCheckpoints();
        if (o.json) printJson(list);
        else printTable(['NAME', 'VM', 'STATE', 'MEMORY', 'FILE', 'PATH', 'CREATED'], list.map((c) => [c.name, c.vmName, c.state, `${c.memoryBytes / 2 ** 20}M`, c.fileBytes === null ? '-' : `${(c.fileBytes / 2 ** 20).toFixed(1)}M`, c.path, c.createdAt]));
      }),
    );
  for (const action of ['show', 'delete'] as const) {
    checkpoint
      .command(action)
      .argument('<name>')
      .option('--json', 'print JSON')
      .action((name: string, o: { json?: boolean }) =>
        ctx.run(Boolean(o.json), async () => {
          const client = ctx.client();
          // A checkpoint file from elsewhere is shown by its absolute path.
          const ref = action === 'show' && /[/.]/.test(name) && existsSync(name) ? resolve(name) : name;
          const record = action === 'show' ? await client.getCheckpoint(ref) : await client.deleteCheckpoint(name);
          if (o.json) printJson(record);
          else if (action === 'delete') process.stdout.write(`deleted checkpoint ${record.name}\n`);
          else for (const [k, v] of Object.entries(record)) process.stdout.write(`${k.padEnd(12)} ${typeof v === 'object' ? JSON.stringify(v) : v}\n`);
        }),
      );
  }

  program
    .command('events')
    .description('stream VM state changes and task updates (one JSON object per line)')
    .action(() =>
      ctx.run(true, async () => {
        for await (const event of ctx.client().events()) process.stdout.write(`${JSON.stringify(event)}\n`);
      }),
    );
}
