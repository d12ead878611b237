// What must hold of a home whenever no operation is in flight: after every
// end-to-end test (tests/harness.ts) and after every fault the fault matrix
// injects. Read through the API of the daemon that serves the home, then
// compared with the files and processes on the host:
// - no record names a missing file (VM disks and chains, checkpoints, disks);
// - no orphan QEMU (each QEMU of the home is the recorded QEMU of a live VM),
//   and every running VM has its QEMU;
// - no leaked file: RAM files and templates belong to live VMs (or to a
//   fabric template's copy on the host), VM folders to known VMs, bases to a
//   VM, checkpoint, pool, copy job or fabric template, `fabric/` folders to
//   fabric templates; the work folder is
//   empty; no checkpoint temporary file is left; no copy leftovers;
// - privacy: no file under the home or the memory folder is readable or
//   writable by other users; the memory folder is 0700 and RAM files 0600.
import { existsSync, lstatSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { OffshootClient } from '../src/client/index.ts';
import { FabricClient, StorageClient } from '../src/client/index.ts';
import type { CheckpointRecord, CopyJobRecord, DatastoreRecord, DiskRecord, PoolRecord, TemplateView, VmRecord } from '../src/vm/index.ts';
import { LIVE_STATES } from '../src/vm/index.ts';
import { findOffshootQemus } from '../src/qemu/index.ts';
import { hostPathOf } from './harness.ts';

export interface HomeSnapshot {
  vms: VmRecord[];
  checkpoints: CheckpointRecord[];
  datastores: DatastoreRecord[];
  disks: DiskRecord[];
  pools: PoolRecord[];
  jobs: CopyJobRecord[];
  /** Fabric templates (their copies on hosts keep memory templates and files). */
  templates: TemplateView[];
  /** The folders the host allows (`ext.<id>:` references resolve under them). */
  allowedRoots: string[];
}

export async function snapshotHome(client: OffshootClient): Promise<HomeSnapshot> {
  const storage = new StorageClient(client);
  const [vms, checkpoints, datastores, disks, pools, jobs, templates, host] = await Promise.all([client.listVms(), client.listCheckpoints(), storage.listDatastores(), storage.listDisks(), storage.listPools(), storage.listJobs(), new FabricClient(client).listTemplates(), client.host()]);
  return { vms, checkpoints, datastores, disks, pools, jobs, templates, allowedRoots: host.allowedRoots };
}

/** QEMU processes started from this home (their command line names a path in it). */
export function homeQemus(home: string): Array<{ pid: number; vmId: string }> {
  return findOffshootQemus().filter((q) => {
    try {
      return readFileSync(`/proc/${q.pid}/cmdline`, 'utf8').includes(`${home}/`);
    } catch {
      return false;
    }
  });
}

function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    out.push(path);
    if (entry.isDirectory() && !entry.isSymbolicLink()) out.push(...walk(path));
  }
  return out;
}

/** Files and folders readable or writable by users other than their owner and the QEMU group. */
export function privacyProblems(root: string): string[] {
  const problems: string[] = [];
  for (const path of [root, ...walk(root)]) {
    let info;
    try {
      info = lstatSync(path);
    } catch {
      continue; // removed meanwhile
    }
    if (info.isSymbolicLink()) continue;
    if ((info.mode & 0o006) !== 0) problems.push(`${path} is accessible to other users (mode ${(info.mode & 0o7777).toString(8)})`);
  }
  return problems;
}

export interface InvariantOptions {
  home: string;
  memoryDir: string;
  /** Extra folders to search for checkpoint temporary files (allowed --out folders). */
  checkpointFolders?: string[];
  /** Longest chain (deltas above the root image) any VM may have. */
  maxChainDepth?: number;
}

/** Every broken invariant, as a sentence; empty when the home is consistent. */
export function homeProblems(s: HomeSnapshot, o: InvariantOptions): string[] {
  const problems: string[] = [];
  const at = (file: string) => hostPathOf(o.home, file, s.allowedRoots);
  const missing = (what: string, file: string) => !existsSync(at(file)) && problems.push(`${what} names ${file} (${at(file)}), which does not exist`);
  const live = s.vms.filter((v) => LIVE_STATES.includes(v.state));
  for (const vm of s.vms) {
    for (const d of vm.spec.disks) {
      missing(`VM ${vm.name} disk ${d.id}`, d.file);
      for (const b of d.backing) missing(`VM ${vm.name} disk ${d.id} chain`, b);
      if (o.maxChainDepth !== undefined && !d.readOnly && d.owned && d.backing.length > o.maxChainDepth) problems.push(`VM ${vm.name} disk ${d.id} has a chain ${d.backing.length} deep (limit ${o.maxChainDepth} deltas above its root)`);
    }
    if (vm.state === 'running' && !vm.runtime) problems.push(`VM ${vm.name} is running without a runtime`);
  }
  for (const c of s.checkpoints) {
    if (c.state === 'complete') missing(`checkpoint ${c.name}`, c.file);
    if (c.state === 'writing') problems.push(`checkpoint ${c.name} is still being written`);
    for (const d of c.spec.disks) for (const p of [d.file, ...d.backing]) missing(`checkpoint ${c.name}`, p);
  }
  for (const d of s.disks) missing(`disk ${d.datastore}/${d.name}`, d.file);

  // Processes.
  const qemus = homeQemus(o.home);
  for (const q of qemus) {
    const vm = live.find((v) => v.id === q.vmId);
    if (!vm || vm.runtime?.pid !== q.pid) problems.push(`orphan QEMU pid ${q.pid} of VM id ${q.vmId} (${vm ? `its record says pid ${vm.runtime?.pid}, state ${vm.state}` : 'no live VM has it'})`);
  }
  for (const vm of live) if (vm.runtime && !qemus.some((q) => q.pid === vm.runtime?.pid)) problems.push(`VM ${vm.name} is ${vm.state} but its QEMU (pid ${vm.runtime.pid}) is gone`);

  // Files.
  const liveIds = new Set(live.map((v) => v.id));
  for (const f of existsSync(o.memoryDir) ? readdirSync(o.memoryDir) : []) {
    if (f === 'templates') continue;
    if (!f.endsWith('.ram') || !liveIds.has(f.slice(0, -4))) problems.push(`memory file ${f} belongs to no live VM`);
  }
  const placements = s.templates.flatMap((t) => t.placements);
  const templates = new Set([...live.map((v) => v.runtime?.memory.templateId), ...placements.map((p) => p.memoryTemplateId)].filter(Boolean));
  for (const f of existsSync(join(o.memoryDir, 'templates')) ? readdirSync(join(o.memoryDir, 'templates')) : []) {
    if (!templates.has(f.replace(/\.ram$/, ''))) problems.push(`template ${f} is mapped by no live VM`);
  }
  const known = new Set(s.vms.map((v) => v.id));
  for (const d of existsSync(join(o.home, 'vms')) ? readdirSync(join(o.home, 'vms')) : []) if (!known.has(d)) problems.push(`VM folder ${d} belongs to no VM`);
  for (const f of existsSync(join(o.home, 'work')) ? readdirSync(join(o.home, 'work')) : []) problems.push(`work file ${f} left by an operation`);
  const usedBases = new Set<string>([
    ...s.vms.flatMap((v) => v.spec.disks.flatMap((d) => [d.file, ...d.backing])),
    ...s.checkpoints.flatMap((c) => c.spec.disks.flatMap((d) => [d.file, ...d.backing])),
    ...s.pools.flatMap((p) => p.sourceFiles.flatMap((f) => f.chain.map((c) => c.file))),
    ...s.jobs.filter((j) => !['succeeded', 'cancelled'].includes(j.state)).flatMap((j) => j.files.map((f) => f.source)),
    ...placements.flatMap((p) => p.files),
  ].map(at));
  const templateIds = new Set(s.templates.map((t) => t.id));
  for (const d of existsSync(join(o.home, 'fabric')) ? readdirSync(join(o.home, 'fabric')) : []) if (!templateIds.has(d)) problems.push(`fabric folder ${d} belongs to no template`);
  for (const f of existsSync(join(o.home, 'bases')) ? readdirSync(join(o.home, 'bases')) : []) if (!usedBases.has(join(o.home, 'bases', f))) problems.push(`base ${f} is used by nothing`);
  const checkpointPaths = new Set(s.checkpoints.map((c) => at(c.file)));
  for (const f of existsSync(join(o.home, 'checkpoints')) ? readdirSync(join(o.home, 'checkpoints')) : []) if (!checkpointPaths.has(join(o.home, 'checkpoints', f))) problems.push(`checkpoint file ${f} has no record`);
  for (const dir of [join(o.home, 'checkpoints'), ...(o.checkpointFolders ?? [])]) {
    for (const f of existsSync(dir) ? readdirSync(dir) : []) if (f.startsWith('.offshoot-ckpt-')) problems.push(`checkpoint temporary file ${join(dir, f)} left`);
  }
  const activeJobs = s.jobs.filter((j) => !['succeeded', 'cancelled', 'failed'].includes(j.state));
  for (const ds of s.datastores) {
    const recorded = new Set(s.disks.filter((d) => d.datastore === ds.name).map((d) => at(d.file)));
    const folder = ds.hosts[0]?.path ?? '';
    for (const f of existsSync(join(folder, 'disks')) ? readdirSync(join(folder, 'disks')) : []) {
      const path = join(folder, 'disks', f);
      const top = path.replace(/\.meta\.json$/, '').replace(/\.copy.*$/, '');
      const inJob = activeJobs.some((j) => j.files.some((x) => at(x.target) === top)) || s.jobs.some((j) => j.state === 'failed' && j.files.some((x) => at(x.target) === top));
      if (!recorded.has(top) && !inJob) problems.push(`datastore ${ds.name} holds ${f}, which no disk record or copy job names`);
    }
  }

  // Privacy.
  problems.push(...privacyProblems(o.home));
  if (existsSync(o.memoryDir)) {
    problems.push(...privacyProblems(o.memoryDir));
    const mode = lstatSync(o.memoryDir).mode & 0o777;
    if (mode !== 0o700) problems.push(`memory folder ${o.memoryDir} has mode ${mode.toString(8)}, not 700`);
    for (const f of walk(o.memoryDir)) if (f.endsWith('.ram') && (lstatSync(f).mode & 0o077) !== 0) problems.push(`RAM file ${f} is open to its group or others (mode ${(lstatSync(f).mode & 0o777).toString(8)})`);
  }
  return problems;
}
