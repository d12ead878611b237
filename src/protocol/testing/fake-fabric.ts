// The fake agent's fabric calls (calls-fabric.ts): host templates kept in
// memory beside the fake's VMs, templates and files, with the same rules as
// the real agent (the contract checks both): a host template keeps its
// memory template and files from garbage collection until it is removed; a
// template exported on one fake host can be copied (fetchFile) and imported
// on another; a child maps its memory template and gets a delta per writable
// disk; a template whose memory is gone cannot spawn (TEMPLATE_MISSING).
import { randomUUID } from 'node:crypto';
import { OffshootError } from '../../common/index.ts';
import type { FabricCallName } from '../calls-fabric.ts';
import type { AgentHandlers } from '../endpoint.ts';
import type { Locator } from '../locator.ts';
import { makeLocator } from '../locator.ts';
import type { OperationContext } from '../operations.ts';
import type { CheckpointMetadata, VmDisk, VmRuntime, VmSpec } from '../schemas.ts';
import { guestMemoryBytes } from '../schemas.ts';

export interface FakeHostTemplate {
  memoryTemplateId: string;
  memoryBytes: number;
  files: Locator[];
}

/** The parts of the fake agent its fabric calls work on. */
export interface FakeFabricHost {
  readonly hostTemplates: Map<string, FakeHostTemplate>;
  readonly templates: Set<string>;
  readonly files: Set<Locator>;
  readonly vms: Map<string, { status: 'running' | 'paused'; runtime: VmRuntime; name: string; incoming: boolean }>;
  readonly checkpoints: Map<Locator, { memoryBytes: number; metadata: CheckpointMetadata }>;
  /** Content tokens of files (fake-mobility.ts): an exported template's file carries its own, so a copy on another host can be imported. */
  readonly content: Map<Locator, string>;
  /** A fork that switched over: its template. */
  switchedFork(forkId: string): { templateId: string };
  newRuntime(vmId: string, memory: VmRuntime['memory']): VmRuntime;
  running(vmId: string): { status: 'running' | 'paused' };
  wrap<T>(call: FabricCallName, fn: () => T | Promise<T>): Promise<T>;
  op<T>(call: FabricCallName, ctx: OperationContext, fn: () => T | Promise<T>): Promise<T>;
}

/** Template checkpoint files exported by any fake agent, by content token (a copy of one keeps the token). */
const exported = new Map<string, { memoryBytes: number; metadata: CheckpointMetadata }>();

/** A template checkpoint file another fake agent exported, by the content token a copy of it carries. */
export function exportedCheckpoint(token: string | undefined): { memoryBytes: number; metadata: CheckpointMetadata } | undefined {
  return token === undefined ? undefined : exported.get(token);
}

function missing(templateId: string, what: string): OffshootError {
  return new OffshootError('TEMPLATE_MISSING', `host template ${templateId} cannot be used here: ${what}`, { templateId, what }, 409);
}

function specFiles(spec: VmSpec): Locator[] {
  const files = spec.disks.flatMap((d) => [d.file, ...d.backing]);
  if (spec.boot.kind === 'kernel') files.push(spec.boot.kernel, ...(spec.boot.initrd ? [spec.boot.initrd] : []));
  return [...new Set(files)];
}

export function fakeFabricHandlers(f: FakeFabricHost): Pick<AgentHandlers, FabricCallName> {
  const usable = (templateId: string): FakeHostTemplate => {
    const t = f.hostTemplates.get(templateId);
    if (!t) throw missing(templateId, 'it is not on this host');
    if (!f.templates.has(t.memoryTemplateId)) throw missing(templateId, `its memory (template ${t.memoryTemplateId}) is gone`);
    return t;
  };
  return {
    keepForkTemplate: (r) =>
      f.wrap('keepForkTemplate', () => {
        const fork = f.switchedFork(r.forkId);
        const t = { memoryTemplateId: fork.templateId, memoryBytes: guestMemoryBytes(r.spec), files: specFiles(r.spec) };
        f.hostTemplates.set(r.templateId, t);
        f.files.add(makeLocator({ kind: 'home' }, 'fabric', r.templateId, 'devstate'));
        return { templateId: r.templateId, memoryTemplateId: t.memoryTemplateId, memoryBytes: t.memoryBytes, deviceStateBytes: 4096 };
      }),
    spawnFromTemplate: (r, ctx) =>
      f.op('spawnFromTemplate', ctx, () => {
        const t = usable(r.templateId);
        if (f.vms.has(r.vmId)) throw new OffshootError('VM_ALREADY_RUNNING', `VM ${r.vmId} already has a QEMU process`, { vmId: r.vmId }, 409);
        const disks: VmDisk[] = r.spec.disks.map((d) => (d.readOnly ? { ...d, owned: false } : { id: d.id, file: makeLocator({ kind: 'home' }, 'vms', r.vmId, `${d.id}.qcow2`), format: 'qcow2', readOnly: false, owned: true, backing: [d.file, ...d.backing] }));
        for (const d of disks) if (d.owned) f.files.add(d.file);
        const runtime = f.newRuntime(r.vmId, { mode: 'derived', templateId: t.memoryTemplateId });
        f.vms.set(r.vmId, { status: r.run ? 'running' : 'paused', runtime, name: r.name, incoming: false });
        return { runtime, spec: { ...r.spec, disks } };
      }),
    handOutChild: (r, ctx) =>
      f.op('handOutChild', ctx, () => {
        const vm = f.vms.get(r.vmId);
        if (!vm || vm.incoming) return { ok: false, error: `the guest agent did not answer: VM ${r.vmId} has no running QEMU on this host`, script: null, timings: { resumeMs: 0, guestMs: 0, totalMs: 0 } };
        if (r.resume) vm.status = 'running';
        if (vm.status !== 'running') return { ok: false, error: 'the guest agent did not answer: the guest is paused', script: null, timings: { resumeMs: 0, guestMs: 0, totalMs: 0 } };
        const script = r.script === undefined ? null : { exitCode: 0, stdout: fakeScriptOutput(r.script, r.hostname, r.env ?? []), stderr: '' };
        return { ok: true, error: null, script, timings: { resumeMs: 0, guestMs: 1, totalMs: 1 } };
      }),
    exportTemplate: (r, ctx) =>
      f.op('exportTemplate', ctx, () => {
        const t = usable(r.templateId);
        if (f.files.has(r.file)) throw new OffshootError('ALREADY_EXISTS', `${r.file} already exists; Offshoot never overwrites a file`, { kind: 'file', name: r.file }, 409);
        f.files.add(r.file);
        f.checkpoints.set(r.file, { memoryBytes: t.memoryBytes, metadata: r.metadata });
        const token = `template-export:${randomUUID()}`;
        f.content.set(r.file, token);
        exported.set(token, { memoryBytes: t.memoryBytes, metadata: r.metadata });
        return { fileBytes: t.memoryBytes / 2, storedPages: t.memoryBytes / 8192 };
      }),
    importTemplate: (r, ctx) =>
      f.op('importTemplate', ctx, () => {
        const token = f.content.get(r.checkpoint);
        const ckpt = f.checkpoints.get(r.checkpoint) ?? (token === undefined ? undefined : exported.get(token));
        if (!ckpt || !f.files.has(r.checkpoint)) throw new OffshootError('CHECKPOINT_NOT_FOUND', `no checkpoint file ${r.checkpoint}`, { file: r.checkpoint }, 404);
        if (ckpt.memoryBytes !== guestMemoryBytes(r.spec)) throw new OffshootError('INVALID_INPUT', `checkpoint ${r.checkpoint} holds ${ckpt.memoryBytes} bytes of memory, but the template's spec has ${r.spec.memoryMiB} MiB`, { checkpoint: r.checkpoint }, 400);
        const memoryTemplateId = randomUUID();
        f.templates.add(memoryTemplateId);
        f.hostTemplates.set(r.templateId, { memoryTemplateId, memoryBytes: ckpt.memoryBytes, files: specFiles(r.spec) });
        return { templateId: r.templateId, memoryTemplateId, memoryBytes: ckpt.memoryBytes, deviceStateBytes: 4096 };
      }),
    templateStatus: (r) =>
      f.wrap('templateStatus', () => {
        const t = f.hostTemplates.get(r.templateId);
        if (!t) return { present: false, missing: [`host template ${r.templateId}`], memoryBytes: null };
        const gone = [...(f.templates.has(t.memoryTemplateId) ? [] : [`memory template ${t.memoryTemplateId}`]), ...r.files.filter((file) => !f.files.has(file))];
        return { present: true, missing: gone, memoryBytes: f.templates.has(t.memoryTemplateId) ? t.memoryBytes / 4 : null };
      }),
    removeTemplate: (r) =>
      f.wrap('removeTemplate', () => {
        f.hostTemplates.delete(r.templateId);
        for (const file of [...f.files]) if (file.startsWith(`home:fabric/${r.templateId}/`)) f.files.delete(file);
        return {};
      }),
  };
}

/** What the fake guest prints for a script: it knows `hostname` and `echo` with "$VAR" from the claim's environment. */
function fakeScriptOutput(script: string, hostname: string, env: string[]): string {
  const vars = new Map(env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
  vars.set('OFFSHOOT_VM_NAME', hostname);
  let out = '';
  for (const line of script.split('\n').map((l) => l.trim())) {
    if (line === 'hostname') out += `${hostname}\n`;
    else if (line.startsWith('echo ')) out += `${line.slice(5).replace(/^"|"$/g, '').replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_, name: string) => vars.get(name) ?? '')}\n`;
  }
  return out;
}
