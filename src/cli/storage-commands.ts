// `offshoot datastore|disk|pool|job ...` and `offshoot vm clone|flatten`:
// the storage commands, through the typed storage client. Tables for people,
// --json for scripts; long copies show their progress on stderr.
import type { Command } from 'commander';
import { InvalidInputError } from '../common/index.ts';
import { StorageClient } from '../client/index.ts';
import type { CloneResult, CopyJobRecord, DatastoreView, DiskRecord, PoolRecord } from '../vm/index.ts';
import { isCopyJobDone } from '../vm/index.ts';
import { printJson, printTable, taskProgress } from './output.ts';
import type { CommandContext } from './vm-commands.ts';

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function jobLine(job: CopyJobRecord): string {
  const p = job.progress;
  const fraction = job.files.length ? (p.fileIndex + (p.bytesTotal ? p.bytesDone / p.bytesTotal : 0)) / job.files.length : 0;
  return `${job.id}  ${job.state}  ${Math.round(Math.min(1, fraction) * 100)}%  file ${Math.min(p.fileIndex + 1, job.files.length)}/${job.files.length}  chunks ${p.chunksDone}/${p.chunksTotal}${job.error ? `  ${job.error.code}: ${job.error.message}` : ''}`;
}

/** Polls a copy job until it ends or pauses, with a progress line on stderr. */
async function followJob(storage: StorageClient, job: CopyJobRecord, json: boolean): Promise<CopyJobRecord> {
  let current = job;
  while (!isCopyJobDone(current.state) && current.state !== 'paused') {
    await new Promise((r) => setTimeout(r, 500));
    current = await storage.getJob(job.id);
    if (!json) process.stderr.write(`${process.stderr.isTTY ? '\r\x1b[K' : ''}${jobLine(current)}${process.stderr.isTTY ? '' : '\n'}`);
  }
  if (!json && process.stderr.isTTY) process.stderr.write('\n');
  return current;
}

function diskRows(disks: DiskRecord[]): Array<Array<string | number>> {
  return disks.map((d) => [`${d.datastore}/${d.name}`, d.id, d.format, bytes(d.virtualSize), d.readOnly ? 'ro' : 'rw', d.contentId, d.parentId ?? '-']);
}

function intArg(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidInputError(`${name} must be a whole number, got "${value}"`, { option: name, value });
    return n;
  };
}

export function registerStorageCommands(program: Command, ctx: CommandContext): void {
  const storage = () => new StorageClient(ctx.client());
  const run = (json: unknown, fn: (s: StorageClient) => Promise<unknown>, print: (value: never) => void) =>
    ctx.run(Boolean(json), async () => {
      const value = await fn(storage());
      if (json) printJson(value);
      else print(value as never);
    });

  const ds = program.command('datastore').description('datastores: named folders that hold disks');
  ds.command('add').argument('<name>').argument('<path>', 'absolute folder path').option('--host <host>', "the host whose folder it is (default: the controller's own)").option('--json', 'print JSON').description('add a datastore (existing disks in it are read from their sidecars)')
    .action((name: string, path: string, o: { json?: boolean; host?: string }) => run(o.json, (s) => s.addDatastore(name, path, o.host), (d: DatastoreView) => process.stdout.write(`added datastore ${d.name} at ${d.path} (${d.usage.diskCount} disks)\n`)));
  ds.command('attach').argument('<name>').requiredOption('--host <host>', 'the host that joins').option('--path <path>', 'where that host sees the folder (default: the same path)').option('--json', 'print JSON').description('share a datastore with another host that sees the same folder')
    .action((name: string, o: { host: string; path?: string; json?: boolean }) => run(o.json, (s) => s.attachDatastore(name, o.host, o.path), (d: DatastoreView) => process.stdout.write(`datastore ${d.name} is ${d.kind} on ${d.hosts.length} hosts\n`)));
  ds.command('list').option('--json', 'print JSON').description('list datastores with capacity and use')
    .action((o: { json?: boolean }) => run(o.json, (s) => s.listDatastores(), (list: DatastoreView[]) => printTable(['NAME', 'PATH', 'DISKS', 'USED', 'FREE', 'CAPACITY'], list.map((d) => [d.name, d.path, d.usage.diskCount, bytes(d.usage.usedBytes), bytes(d.usage.freeBytes), bytes(d.usage.capacityBytes)]))));
  ds.command('show').argument('<name>').option('--json', 'print JSON').description('show a datastore')
    .action((name: string, o: { json?: boolean }) => run(o.json, (s) => s.getDatastore(name), (d: DatastoreView) => process.stdout.write(`name      ${d.name}\npath      ${d.path}\ndisks     ${d.usage.diskCount}\nused      ${bytes(d.usage.usedBytes)}\nfree      ${bytes(d.usage.freeBytes)}\ncapacity  ${bytes(d.usage.capacityBytes)}\n`)));
  ds.command('remove').argument('<name>').option('--json', 'print JSON').description('forget a datastore (its files stay); refused while in use')
    .action((name: string, o: { json?: boolean }) => run(o.json, (s) => s.removeDatastore(name), () => process.stdout.write(`removed datastore ${name} (files kept)\n`)));
  ds.command('rescan').argument('<name>').option('--json', 'print JSON').description('rebuild the disk records of a datastore from its sidecar files')
    .action((name: string, o: { json?: boolean }) =>
      run(o.json, (s) => s.rescanDatastore(name), (r: { disks: DiskRecord[]; problems: { file: string; reason: string }[] }) => {
        process.stdout.write(`${r.disks.length} disks found\n`);
        for (const p of r.problems) process.stdout.write(`  skipped ${p.file}: ${p.reason}\n`);
      }));

  const disk = program.command('disk').description('disks in datastores (DISK is an id or DATASTORE/NAME)');
  disk.command('list').option('--datastore <name>').option('--json', 'print JSON').description('list disks')
    .action((o: { datastore?: string; json?: boolean }) => run(o.json, (s) => s.listDisks(o.datastore), (list: DiskRecord[]) => printTable(['DISK', 'ID', 'FORMAT', 'SIZE', 'MODE', 'CONTENT ID', 'PARENT'], diskRows(list))));
  disk.command('create').argument('<datastore>').argument('<name>').requiredOption('--size <size>', 'e.g. 10G').option('--format <fmt>', 'qcow2 or raw', 'qcow2').option('--json', 'print JSON').description('create a blank disk')
    .action((datastore: string, name: string, o: { size: string; format: 'qcow2' | 'raw'; json?: boolean }) => run(o.json, (s) => s.createDisk({ datastore, name, size: o.size, format: o.format }), (d: DiskRecord) => process.stdout.write(`created disk ${d.datastore}/${d.name} (${d.id})\n`)));
  disk.command('import').argument('<datastore>').argument('<name>').argument('<file>', 'qcow2, raw or monolithic vmdk').option('--format <fmt>', 'qcow2 or raw', 'qcow2').option('--json', 'print JSON').description('import an image file as a new disk')
    .action((datastore: string, name: string, file: string, o: { format: 'qcow2' | 'raw'; json?: boolean }) => run(o.json, (s) => s.importDisk({ datastore, name, source: file, format: o.format }), (d: DiskRecord) => process.stdout.write(`imported ${file} as disk ${d.datastore}/${d.name} (${d.id}, ${bytes(d.virtualSize)})\n`)));
  disk.command('show').argument('<disk>').option('--json', 'print JSON').description('show a disk, its chain and who uses it')
    .action((ref: string, o: { json?: boolean }) =>
      run(o.json, (s) => s.getDisk(ref), (d: DiskRecord & { chain: { path: string; format: string; virtualSize: number }[]; users: string[] }) => {
        printTable(['DISK', 'ID', 'FORMAT', 'SIZE', 'MODE', 'CONTENT ID', 'PARENT'], diskRows([d]));
        process.stdout.write(`chain:\n${d.chain.map((c, i) => `  ${'  '.repeat(i)}${c.path} (${c.format})`).join('\n')}\nused by: ${d.users.join(', ') || 'nothing'}\n`);
      }));
  disk.command('resize').argument('<disk>').argument('<size>').option('--json', 'print JSON').description('grow a disk nothing uses')
    .action((ref: string, size: string, o: { json?: boolean }) => run(o.json, (s) => s.resizeDisk(ref, size), (d: DiskRecord) => process.stdout.write(`disk ${d.datastore}/${d.name} is now ${bytes(d.virtualSize)}\n`)));
  disk.command('delete').argument('<disk>').option('--json', 'print JSON').description('delete a disk nothing uses or descends from')
    .action((ref: string, o: { json?: boolean }) => run(o.json, (s) => s.deleteDisk(ref), (d: DiskRecord) => process.stdout.write(`deleted disk ${d.datastore}/${d.name}\n`)));
  disk.command('verify').argument('<disk>').option('--against <disk>', 'compare with this disk (default: every disk of the same content id)').option('--json', 'print JSON').description('hash a disk and prove equal content ids mean equal content')
    .action((ref: string, o: { against?: string; json?: boolean }) =>
      run(o.json, (s) => s.verifyDisk(ref, o.against), (r: { disk: string; contentId: string; contentHash: string; compared: { disk: string; contentHash: string; equal: boolean }[] }) => {
        process.stdout.write(`${r.disk}  ${r.contentId}  ${r.contentHash}\n`);
        for (const c of r.compared) process.stdout.write(`  ${c.equal ? 'equal    ' : 'DIFFERENT'} ${c.disk}  ${c.contentHash}\n`);
      }));
  disk.command('move').argument('<disk>').argument('<datastore>').option('--no-wait', 'return once the copy job is queued').option('--json', 'print JSON').description('move a disk to another datastore (a resumable copy job)')
    .action((ref: string, datastore: string, o: { wait: boolean; json?: boolean }) =>
      run(o.json, async (s) => {
        const job = await s.moveDisk(ref, datastore);
        return o.wait ? followJob(s, job, Boolean(o.json)) : job;
      }, (j: CopyJobRecord) => process.stdout.write(`${jobLine(j)}\n`)));

  disk.command('flatten').argument('<vm>').option('--disk <id>', 'only this disk of the VM').option('--json', 'print JSON').description("flatten a running VM's disk chains online (QEMU block-stream); unused bases are then removed")
    .action((ref: string, o: { disk?: string; json?: boolean }) =>
      run(o.json, async (s) => {
        const task = await s.flattenVm(ref, o.disk);
        return ctx.client().waitTask(task.id, o.json ? undefined : taskProgress(`flatten ${ref}`));
      }, (t: { state: string; message: string }) => process.stdout.write(`flatten ${t.state}: ${t.message}\n`)));

  const vm = program.commands.find((c) => c.name() === 'vm');
  if (vm) {
    vm.command('clone').argument('<source>').argument('<name>')
      .option('--linked', 'a delta over the frozen source disks (default; O(1))')
      .option('--full', 'an independent copy on --datastore (from a pool when one is ready)')
      .option('--instant', 'boots at once; the source data streams into its disk in the background')
      .option('--datastore <name>', 'where a full clone\'s disks go')
      .option('--start', 'boot the clone (always for --instant)')
      .option('--no-wait', 'return at once (do not follow the copy or the stream)')
      .option('--json', 'print JSON')
      .description('clone a stopped or running VM')
      .action((source: string, name: string, o: { linked?: boolean; full?: boolean; instant?: boolean; datastore?: string; start?: boolean; wait: boolean; json?: boolean }) =>
        run(o.json, async (s) => {
          const modes = [o.linked && 'linked', o.full && 'full', o.instant && 'instant'].filter(Boolean) as Array<'linked' | 'full' | 'instant'>;
          if (modes.length > 1) throw new InvalidInputError('choose one of --linked, --full, --instant', { modes });
          const result = await s.cloneVm(source, { name, mode: modes[0] ?? 'linked', ...(o.datastore ? { datastore: o.datastore } : {}), ...(o.start ? { start: true } : {}) });
          if (!o.wait) return result;
          const client = ctx.client();
          const job = result.job ? await followJob(s, result.job, Boolean(o.json)) : null;
          const task = result.task ? await client.waitTask(result.task.id, o.json ? undefined : taskProgress(`clone ${name}`)) : null;
          const vmRecord = job?.state === 'succeeded' || result.vm ? await client.getVm(name).catch(() => null) : null;
          return { ...result, vm: vmRecord ?? result.vm, job: job ?? result.job, task: task ?? result.task };
        }, (r: CloneResult) => process.stdout.write(`${r.mode} clone ${name}${r.vm ? `: ${r.vm.state}` : ''}${r.pool ? ` (disks from pool ${r.pool})` : ''}${r.job ? `; copy ${r.job.state}` : ''}${r.task ? `; ${r.task.kind} ${r.task.state}` : ''} (${Math.round(r.ms)} ms to create)\n`)));
    vm.command('attach-disk').argument('<vm>').argument('<disk>', 'datastore disk (id or DATASTORE/NAME)').option('--json', 'print JSON').description('attach a datastore disk to a stopped VM (it becomes a read-only base; the VM writes to its own delta)')
      .action((ref: string, diskRef: string, o: { json?: boolean }) => run(o.json, (s) => s.attachDisk(ref, diskRef), (v: { name: string; spec: { disks: { id: string; path: string }[] } }) => process.stdout.write(`attached ${diskRef} to ${v.name} as ${v.spec.disks.at(-1)?.id}\n`)));
  }

  const pool = program.command('pool').description('pools of pre-copied disks for fast full clones');
  const poolRow = (p: PoolRecord) => [p.name, p.sourceVmName, p.datastore, `${p.slots.filter((s) => s.state === 'ready').length}/${p.size}`, p.slots.filter((s) => s.state === 'filling').length, p.id];
  const POOL_HEAD = ['NAME', 'SOURCE VM', 'DATASTORE', 'READY', 'FILLING', 'ID'];
  pool.command('create').argument('<name>').requiredOption('--vm <vm>', 'source VM').requiredOption('--datastore <name>').requiredOption('--size <k>', 'copies to keep', intArg('--size')).option('--json', 'print JSON').description('keep K copies of a VM\'s disks on a datastore')
    .action((name: string, o: { vm: string; datastore: string; size: number; json?: boolean }) => run(o.json, (s) => s.createPool({ name, vm: o.vm, datastore: o.datastore, size: o.size }), (p: PoolRecord) => printTable(POOL_HEAD, [poolRow(p)])));
  pool.command('list').option('--json', 'print JSON').description('list pools')
    .action((o: { json?: boolean }) => run(o.json, (s) => s.listPools(), (list: PoolRecord[]) => printTable(POOL_HEAD, list.map(poolRow))));
  pool.command('show').argument('<pool>').option('--json', 'print JSON').description('show a pool and its slots')
    .action((ref: string, o: { json?: boolean }) =>
      run(o.json, (s) => s.getPool(ref), (p: PoolRecord) => {
        printTable(POOL_HEAD, [poolRow(p)]);
        for (const slot of p.slots) process.stdout.write(`  ${slot.id}  ${slot.state}${slot.jobId ? `  job ${slot.jobId}` : ''}\n`);
      }));
  pool.command('resize').argument('<pool>').argument('<k>', 'copies to keep', intArg('k')).option('--json', 'print JSON').description('change how many copies a pool keeps')
    .action((ref: string, k: number, o: { json?: boolean }) => run(o.json, (s) => s.resizePool(ref, k), (p: PoolRecord) => printTable(POOL_HEAD, [poolRow(p)])));
  pool.command('delete').argument('<pool>').option('--json', 'print JSON').description('delete a pool and its copies')
    .action((ref: string, o: { json?: boolean }) => run(o.json, (s) => s.deletePool(ref), (p: PoolRecord) => process.stdout.write(`deleted pool ${p.name}\n`)));

  const job = program.command('job').description('copy jobs (full clones, pool refills, disk moves)');
  job.command('list').option('--json', 'print JSON').description('list copy jobs')
    .action((o: { json?: boolean }) => run(o.json, (s) => s.listJobs(), (list: CopyJobRecord[]) => { for (const j of list) process.stdout.write(`${jobLine(j)}  ${j.purpose.kind}\n`); }));
  job.command('show').argument('<id>').option('--json', 'print JSON').description('show a copy job')
    .action((id: string, o: { json?: boolean }) => run(o.json, (s) => s.getJob(id), (j: CopyJobRecord) => { process.stdout.write(`${jobLine(j)}\n`); for (const f of j.files) process.stdout.write(`  ${f.source} -> ${f.target}\n`); }));
  for (const action of ['pause', 'resume', 'cancel'] as const) {
    job.command(action).argument('<id>').option('--json', 'print JSON').description(`${action} a copy job`)
      .action((id: string, o: { json?: boolean }) => run(o.json, (s) => (action === 'pause' ? s.pauseJob(id) : action === 'resume' ? s.resumeJob(id) : s.cancelJob(id)), (j: CopyJobRecord) => process.stdout.write(`${jobLine(j)}\n`)));
  }
}
