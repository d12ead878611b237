// `offshoot vm ...`: create, list, show, start, stop, pause, resume, kill,
// delete, exec and console, all through the typed client.
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { InvalidInputError } from '../common/index.ts';
import type { OffshootClient, VmAndTaskView } from '../client/index.ts';
import type { CheckpointRequest, CheckpointResult, CreateVmRequest, ForkRequest, ForkResult, RestoreRequest, VmRecord } from '../vm/index.ts';
import { VM_TABLE_HEAD, printJson, printTable, printVm, taskProgress, vmRow } from './output.ts';

export interface CommandContext {
  client(): OffshootClient;
  /** Runs an action, printing errors and setting the exit code. */
  run(json: boolean, action: () => Promise<number | void>): Promise<void>;
}

function intOption(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n)) throw new InvalidInputError(`${name} must be a whole number, got "${value}"`, { option: name, value });
    return n;
  };
}

async function followTask(client: OffshootClient, result: VmAndTaskView, json: boolean, label: string, wait: boolean): Promise<VmAndTaskView> {
  if (!result.task || !wait) return result;
  const task = await client.waitTask(result.task.id, json ? undefined : taskProgress(label));
  return { vm: await client.getVm(result.vm.id), task };
}

export function registerVmCommands(program: Command, ctx: CommandContext): void {
  const vm = program.command('vm').description('create and control virtual machines');

  vm.command('create')
    .description('create a VM (the embedded default guest unless --kernel or --boot-disk)')
    .argument('<name>')
    .option('--vcpus <n>', 'virtual CPUs', intOption('--vcpus'))
    .option('--memory <size>', 'guest memory, e.g. 256M or 1G')
    .option('--kernel <path>', 'boot this kernel')
    .option('--initrd <path>', 'initrd for --kernel')
    .option('--cmdline <text>', 'kernel command line for --kernel')
    .option('--boot-disk <path>', 'boot from this disk image')
    .option('--disk <path...>', 'attach extra disk images')
    .option('--network <mode>', 'user or none', 'user')
    .option('--host <host>', 'the host to place it on (default: a ready host with room)')
    .option('--no-guest-agent', 'the guest has no QEMU guest agent: start does not wait for one, exec is refused')
    .option('--start', 'boot it and return once the guest agent answers')
    .option('--timeout <seconds>', 'with --start: seconds to wait for the guest agent (default 120)', intOption('--timeout'))
    .option('--json', 'print JSON')
    .action((name: string, o: Record<string, string | string[] | number | boolean | undefined>) =>
      ctx.run(Boolean(o.json), async () => {
        const request: CreateVmRequest = { name, network: o.network as 'user' | 'none', start: Boolean(o.start) };
        if (o.guestAgent === false) request.guestAgent = false;
        if (o.timeout !== undefined) request.startTimeoutMs = (o.timeout as number) * 1000;
        if (o.vcpus !== undefined) request.vcpus = o.vcpus as number;
        if (o.memory !== undefined) request.memory = o.memory as string;
        if (o.kernel) request.kernel = { path: o.kernel as string, ...(o.initrd ? { initrd: o.initrd as string } : {}), ...(o.cmdline ? { cmdline: o.cmdline as string } : {}) };
        else if (o.initrd || o.cmdline) throw new InvalidInputError('--initrd and --cmdline need --kernel', {});
        if (o.bootDisk) request.bootDisk = o.bootDisk as string;
        if (o.host) request.host = o.host as string;
        if (o.disk) request.disks = (o.disk as string[]).map((path) => ({ path }));
        const client = ctx.client();
        const result = await followTask(client, await client.createVm(request), Boolean(o.json), `start ${name}`, true);
        if (o.json) printJson(result);
        else process.stdout.write(`created VM ${result.vm.name} (${result.vm.id}), ${result.vm.state}\n`);
      }),
    );

  vm.command('list')
    .description('list VMs')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const vms = await ctx.client().listVms();
        if (o.json) printJson(vms);
        else printTable(VM_TABLE_HEAD, vms.map(vmRow));
      }),
    );

  vm.command('show')
    .description('show a VM')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action((name: string, o: { json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const record = await client.getVm(name);
        const memory = record.runtime ? await client.vmMemory(name).catch(() => undefined) : undefined;
        if (o.json) printJson(memory ? { ...record, memory } : record);
        else printVm(record, memory);
      }),
    );

  vm.command('fork')
    .description('fork a running VM into N children that share its memory copy-on-write; prints their names')
    .argument('<name>')
    .option('--count <n>', 'how many children', intOption('--count'), 1)
    .option('--prefix <p>', 'name children P1, P2, ... (default NAME-c)')
    .option('--customize <file>', 'a shell script to run in each child after its identity is set')
    .option('--max-disk-depth <n>', 'deltas above the root image before flattening (disk state inheritance)', intOption('--max-disk-depth'))
    .option('--json', 'print JSON')
    .action((name: string, o: { count: number; prefix?: string; customize?: string; maxDiskDepth?: number; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const request: ForkRequest = { count: o.count };
        if (o.prefix) request.prefix = o.prefix;
        if (o.customize) request.customize = readFileSync(o.customize, 'utf8');
        if (o.maxDiskDepth) request.maxDiskDepth = o.maxDiskDepth;
        const started = await client.forkVm(name, request);
        const task = await client.waitTask(started.task?.id as string, o.json ? undefined : taskProgress(`fork ${name}`));
        const result = task.result as ForkResult;
        if (o.json) return printJson(result);
        for (const child of result.children) process.stdout.write(`${child.name}\n`);
        const t = result.timings;
        process.stderr.write(`source stunned ${t.stunMs.toFixed(0)} ms; first child running at ${t.firstChildMs.toFixed(0)} ms, all ${result.children.length} at ${t.allChildrenMs.toFixed(0)} ms, customized at ${t.customizedMs.toFixed(0)} ms\n`);
      }),
    );

  vm.command('checkpoint')
    .description('live checkpoint: a short stun, then the VM runs on while the file is written')
    .argument('<name>')
    .option('--name <checkpoint>', 'name of the checkpoint (default NAME-TIMESTAMP)')
    .option('--out <file>', 'where to write it (default $OFFSHOOT_HOME/checkpoints/CHECKPOINT.ckpt)')
    .option('--stop', 'power the VM off after the save (suspend)')
    .option('--json', 'print JSON')
    .action((name: string, o: { name?: string; out?: string; stop?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const request: CheckpointRequest = { stop: Boolean(o.stop) };
        if (o.name) request.name = o.name;
        if (o.out) request.out = o.out;
        const started = await client.checkpointVm(name, request);
        const taskId = started.task?.id as string;
        // Ctrl-C while the file is written cancels the checkpoint (the VM runs on; the partial file goes).
        const onInterrupt = () => {
          process.stderr.write(`\ncancelling checkpoint task ${taskId}\n`);
          void client.cancelTask(taskId).catch((err: Error) => process.stderr.write(`cannot cancel: ${err.message}\n`));
        };
        process.once('SIGINT', onInterrupt);
        const task = await client.waitTask(taskId, o.json ? undefined : taskProgress(`checkpoint ${name}`)).finally(() => process.off('SIGINT', onInterrupt));
        const result = task.result as CheckpointResult;
        if (o.json) return printJson(result);
        process.stdout.write(`${result.checkpoint.name}\t${result.checkpoint.path}\n`);
        process.stderr.write(`stun ${result.stunMs.toFixed(0)} ms; ${(result.fileBytes / 2 ** 20).toFixed(1)} MiB written in ${result.writeMs.toFixed(0)} ms (${result.gbPerSecond.toFixed(2)} GB/s of guest memory)\n`);
      }),
    );

  vm.command('restore')
    .description('restore a checkpoint (name, id or file path) as a new VM')
    .argument('<checkpoint>')
    .option('--name <new>', 'name of the new VM (default VM-rN)')
    .option('--eager', 'load all memory before the VM runs')
    .option('--lazy', 'run the VM first and load its memory on demand and in the background (the default)')
    .option('--json', 'print JSON')
    .action((checkpoint: string, o: { name?: string; eager?: boolean; lazy?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        if (o.eager && o.lazy) throw new InvalidInputError('--eager and --lazy exclude each other');
        const client = ctx.client();
        // A relative file path is resolved here: the daemon takes a name, an id or an absolute path.
        const ref = /[/.]/.test(checkpoint) && existsSync(checkpoint) ? resolve(checkpoint) : checkpoint;
        const request: RestoreRequest = { checkpoint: ref };
        if (o.eager) request.mode = 'eager';
        if (o.lazy) request.mode = 'lazy';
        if (o.name) request.name = o.name;
        const started = await client.restore(request);
        const task = await client.waitTask(started.task?.id as string, o.json ? undefined : taskProgress(`restore ${checkpoint}`));
        const result = task.result as { vm: VmRecord; runningMs: number; stream?: { streamMs: number; faultBlocks: number; backgroundBlocks: number } | null };
        if (o.json) return printJson(result);
        process.stdout.write(`${result.vm.name}\n`);
        const stream = result.stream ? `; memory streamed in ${result.stream.streamMs.toFixed(0)} ms more (${result.stream.faultBlocks} blocks on demand, ${result.stream.backgroundBlocks} in the background)` : '';
        process.stderr.write(`running after ${result.runningMs.toFixed(0)} ms${stream}\n`);
      }),
    );

  vm.command('start')
    .description('boot a VM and wait until its guest agent answers')
    .argument('<name>')
    .option('--timeout <seconds>', 'seconds to wait for the guest agent (default 120)', intOption('--timeout'))
    .option('--no-wait', 'return the task at once')
    .option('--json', 'print JSON')
    .action((name: string, o: { json?: boolean; wait: boolean; timeout?: number }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const result = await followTask(client, await client.startVm(name, o.timeout === undefined ? {} : { timeoutMs: o.timeout * 1000 }), Boolean(o.json), `start ${name}`, o.wait);
        if (o.json) printJson(result);
        else process.stdout.write(`${result.vm.name}: ${result.vm.state}\n`);
      }),
    );

  vm.command('stop')
    .description('power a VM off (ACPI), killing it after --timeout seconds')
    .argument('<name>')
    .option('--timeout <seconds>', 'seconds to wait for the guest', intOption('--timeout'), 30)
    .option('--no-wait', 'return the task at once')
    .option('--json', 'print JSON')
    .action((name: string, o: { json?: boolean; wait: boolean; timeout: number }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const result = await followTask(client, await client.stopVm(name, { timeoutMs: o.timeout * 1000 }), Boolean(o.json), `stop ${name}`, o.wait);
        if (o.json) printJson(result);
        else process.stdout.write(`${result.vm.name}: ${result.vm.state}${result.vm.stateReason ? ` (${result.vm.stateReason})` : ''}\n`);
      }),
    );

  for (const [action, description] of [
    ['pause', 'pause the vCPUs'],
    ['resume', 'resume the vCPUs'],
    ['kill', 'kill QEMU at once'],
    ['delete', 'delete a stopped VM and its files'],
  ] as const) {
    vm.command(action)
      .description(description)
      .argument('<name>')
      .option('--json', 'print JSON')
      .action((name: string, o: { json?: boolean }) =>
        ctx.run(Boolean(o.json), async () => {
          const client = ctx.client();
          const record = action === 'pause' ? await client.pauseVm(name) : action === 'resume' ? await client.resumeVm(name) : action === 'kill' ? await client.killVm(name) : await client.deleteVm(name);
          if (o.json) printJson(record);
          else process.stdout.write(action === 'delete' ? `deleted VM ${record.name}\n` : `${record.name}: ${record.state}\n`);
        }),
      );
  }

  vm.command('exec')
    .description('run a command in the guest: offshoot vm exec NAME -- CMD ARGS...; exits with its exit code')
    .argument('<name>')
    .argument('<command...>')
    .option('--stdin', 'pass this process\'s standard input to the command')
    .option('--timeout <seconds>', 'seconds to let the command run', intOption('--timeout'), 60)
    .option('--json', 'print JSON (output base64-free, as text)')
    .action((name: string, command: string[], o: { json?: boolean; stdin?: boolean; timeout: number }) =>
      ctx.run(Boolean(o.json), async () => {
        const [path, ...args] = command;
        if (!path) throw new InvalidInputError('give the command to run after --', {});
        const input = o.stdin ? readFileSync(0) : undefined;
        const result = await ctx.client().exec(name, path, args, { input, timeoutMs: o.timeout * 1000 });
        if (o.json) {
          printJson({ exitCode: result.exitCode, signal: result.signal, stdout: result.stdout.toString('utf8'), stderr: result.stderr.toString('utf8') });
        } else {
          process.stdout.write(result.stdout);
          process.stderr.write(result.stderr);
        }
        return result.exitCode ?? (result.signal ? 128 + result.signal : 1);
      }),
    );

  vm.command('console')
    .description('print the tail of the serial console')
    .argument('<name>')
    .option('--bytes <n>', 'how much to print', intOption('--bytes'), 64 * 1024)
    .action((name: string, o: { bytes: number }) =>
      ctx.run(false, async () => {
        process.stdout.write(await ctx.client().console(name, o.bytes));
      }),
    );
}
