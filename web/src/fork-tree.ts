// The fork tree: which VMs and memory templates derive from which, and the
// memory they share. Built from what the API gives:
// - lineage: each successful fork task's result (source -> children), and for
//   a fork still running, its children's state reason "forked from SOURCE";
// - templates: a live VM with derived memory maps a template (runtime.memory);
// - memory: each live VM's RSS and PSS (GET /vms/{ref}/memory). What the VMs of
//   a template save by sharing it is their RSS summed minus their PSS summed.
// A template sits under the VM it was made from (the fork's source, or the
// VM checkpointed), and the VMs that map it sit under the template; a child
// that no longer maps it (stopped, or made owned to be forked again) sits
// directly under its source. Every VM appears exactly once.
import type { TaskRecord, VmMemoryView, VmRecord } from './api.ts';

export interface VmNode {
  kind: 'vm';
  vm: VmRecord;
  memory?: VmMemoryView;
  children: TreeNode[];
}

export interface TemplateNode {
  kind: 'template';
  id: string;
  /** Live VMs mapping it (the one it was made from included). */
  vmCount: number;
  /** Guest RAM size of the template (its VMs' memory). */
  sizeBytes: number;
  /** Sum of RSS minus sum of PSS of its VMs; undefined until their memory is known. */
  savedBytes?: number;
  children: TreeNode[];
}

export type TreeNode = VmNode | TemplateNode;

export interface ForkTree {
  roots: TreeNode[];
  templates: TemplateNode[];
  /** Memory saved by sharing over all templates. */
  savedBytes: number;
}

const FORKED_FROM = /^forked from (\S+)$/;

/** child id -> source id, from fork results and from the state reason of children of a fork in flight. */
export function lineage(vms: VmRecord[], tasks: TaskRecord[]): Map<string, string> {
  const ids = new Set(vms.map((v) => v.id));
  const byName = new Map(vms.map((v) => [v.name, v.id]));
  const parent = new Map<string, string>();
  for (const task of tasks) {
    if (task.kind !== 'vm.fork' || task.state !== 'succeeded') continue;
    const result = task.result as { source?: { id?: string }; children?: { id?: string }[] } | null;
    const source = result?.source?.id ?? task.targetId;
    for (const child of result?.children ?? []) if (child.id && ids.has(child.id) && child.id !== source) parent.set(child.id, source);
  }
  for (const vm of vms) {
    const match = vm.stateReason ? FORKED_FROM.exec(vm.stateReason) : null;
    const source = match ? byName.get(match[1] as string) : undefined;
    if (source && source !== vm.id && !parent.has(vm.id)) parent.set(vm.id, source);
  }
  return parent;
}

function templateOf(vm: VmRecord): string | null {
  const memory = vm.runtime?.memory;
  return memory?.mode === 'derived' && memory.templateId ? memory.templateId : null;
}

export function buildForkTree(vms: VmRecord[], tasks: TaskRecord[], memory: Record<string, VmMemoryView | undefined> = {}): ForkTree {
  const parent = lineage(vms, tasks);
  const byId = new Map(vms.map((v) => [v.id, v]));
  const members = new Map<string, string[]>();
  for (const vm of vms) {
    const t = templateOf(vm);
    if (t) members.set(t, [...(members.get(t) ?? []), vm.id]);
  }

  // The VM each template was made from: a member that is the source of another member, else the members' common source.
  const origin = new Map<string, string | null>();
  for (const [t, ids] of members) {
    const set = new Set(ids);
    const sourceMember = ids.find((id) => ids.some((other) => parent.get(other) === id));
    const parents = new Set(ids.map((id) => parent.get(id)).filter((p): p is string => p !== undefined && !set.has(p)));
    const common = parents.size === 1 && ids.every((id) => parent.has(id)) ? [...parents][0] : undefined;
    origin.set(t, sourceMember ?? (common && byId.has(common) ? common : ids.length === 1 ? (ids[0] as string) : null));
  }

  // Where each node hangs: a VM under its template (unless it is the template's origin), else under its source.
  type Place = { kind: 'vm' | 'template'; id: string } | null;
  const placeOfVm = (vm: VmRecord): Place => {
    const t = templateOf(vm);
    if (t && origin.get(t) !== vm.id) return { kind: 'template', id: t };
    const p = parent.get(vm.id);
    return p && byId.has(p) ? { kind: 'vm', id: p } : null;
  };
  const placeOfTemplate = (t: string): Place => {
    const o = origin.get(t);
    return o ? { kind: 'vm', id: o } : null;
  };
  const key = (p: { kind: string; id: string }) => `${p.kind}:${p.id}`;
  const placeOf = (p: { kind: 'vm' | 'template'; id: string }): Place => (p.kind === 'vm' ? placeOfVm(byId.get(p.id) as VmRecord) : placeOfTemplate(p.id));
  /** A place whose chain of places loops back (inconsistent records) becomes a root. */
  const loops = (start: { kind: 'vm' | 'template'; id: string }): boolean => {
    const seen = new Set<string>([key(start)]);
    for (let p = placeOf(start); p; p = placeOf(p)) {
      if (seen.has(key(p))) return true;
      seen.add(key(p));
    }
    return false;
  };

  const vmNodes = new Map<string, VmNode>(vms.map((vm) => [vm.id, { kind: 'vm', vm, memory: memory[vm.id], children: [] }]));
  const templateNodes = new Map<string, TemplateNode>();
  for (const [t, ids] of members) {
    const stats = ids.map((id) => memory[id]);
    const known = stats.every((m) => m !== undefined);
    const saved = known ? stats.reduce((n, m) => n + ((m as VmMemoryView).rssKiB - (m as VmMemoryView).pssKiB) * 1024, 0) : undefined;
    const first = byId.get(ids[0] as string) as VmRecord;
    templateNodes.set(t, { kind: 'template', id: t, vmCount: ids.length, sizeBytes: first.spec.memoryMiB * 1024 * 1024, savedBytes: saved === undefined ? undefined : Math.max(0, saved), children: [] });
  }

  const roots: TreeNode[] = [];
  const attach = (node: TreeNode, place: Place, self: { kind: 'vm' | 'template'; id: string }) => {
    const target = place && !loops(self) ? (place.kind === 'vm' ? vmNodes.get(place.id) : templateNodes.get(place.id)) : undefined;
    (target ? target.children : roots).push(node);
  };
  for (const [t, node] of templateNodes) attach(node, placeOfTemplate(t), { kind: 'template', id: t });
  for (const vm of vms) attach(vmNodes.get(vm.id) as VmNode, placeOfVm(vm), { kind: 'vm', id: vm.id });

  const sortKey = (n: TreeNode) => (n.kind === 'template' ? `0:${n.id}` : `1:${n.vm.name}`);
  const order = (nodes: TreeNode[]) => {
    nodes.sort((a, b) => sortKey(a).localeCompare(sortKey(b)));
    for (const n of nodes) order(n.children);
  };
  order(roots);
  const templates = [...templateNodes.values()];
  return { roots, templates, savedBytes: templates.reduce((n, t) => n + (t.savedBytes ?? 0), 0) };
}
