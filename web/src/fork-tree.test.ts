import { describe, expect, it } from 'vitest';
import type { TaskRecord, VmMemoryView, VmRecord } from './api.ts';
import { buildForkTree, lineage } from './fork-tree.ts';
import type { TemplateNode, TreeNode, VmNode } from './fork-tree.ts';

const at = '2026-01-01T00:00:00.000Z';
function vm(id: string, name: string, template: string | null, state: VmRecord['state'] = 'running', stateReason: string | null = null): VmRecord {
  return {
    id,
    name,
    state,
    stateReason,
    spec: { vcpus: 1, memoryMiB: 256, boot: { kind: 'disk' }, disks: [], nics: [], defaultGuest: true },
    hostId: 'h1',
    runtime: state === 'running' ? { hostId: 'h1', pid: 1, accel: 'tcg', instance: 'i', memory: { mode: template ? 'derived' : 'owned', templateId: template }, startedAt: at } : null,
    createdAt: at,
    updatedAt: at,
  };
}
function fork(source: string, children: string[]): TaskRecord {
  return { id: `t-${source}`, kind: 'vm.fork', targetId: source, targetName: source, state: 'succeeded', progress: 1, message: 'done', result: { source: { id: source, name: source }, children: children.map((id) => ({ id, name: id })) }, error: null, createdAt: at, updatedAt: at };
}
const mem = (rssMiB: number, pssMiB: number): VmMemoryView => ({ rssKiB: rssMiB * 1024, pssKiB: pssMiB * 1024, sharedKiB: (rssMiB - pssMiB) * 1024, privateKiB: pssMiB * 1024, mode: 'derived', templateId: 'T1' });

/** name(children...) with templates as [T]. */
function shape(nodes: TreeNode[]): string[] {
  return nodes.map((n) => {
    const label = n.kind === 'vm' ? n.vm.name : `[${n.id}]`;
    return n.children.length ? `${label}(${shape(n.children).join(' ')})` : label;
  });
}

describe('the fork tree', () => {
  it('puts the template under the forked VM and the children under the template, with the memory they save', () => {
    const vms = [vm('s', 'src', 'T1'), vm('a', 'src-c1', 'T1'), vm('b', 'src-c2', 'T1'), vm('o', 'other', null)];
    const tree = buildForkTree(vms, [fork('s', ['a', 'b'])], { s: mem(250, 100), a: mem(240, 90), b: mem(240, 90) });
    expect(shape(tree.roots)).toEqual(['other', 'src([T1](src-c1 src-c2))']);
    const template = (tree.roots[1] as VmNode).children[0] as TemplateNode;
    expect(template.vmCount).toBe(3);
    expect(template.sizeBytes).toBe(256 * 1024 * 1024);
    expect(template.savedBytes).toBe((250 + 240 + 240 - 100 - 90 - 90) * 1024 * 1024);
    expect(tree.savedBytes).toBe(template.savedBytes);
  });

  it('keeps the memory unknown until every VM of a template has reported it', () => {
    const tree = buildForkTree([vm('s', 'src', 'T1'), vm('a', 'src-c1', 'T1')], [fork('s', ['a'])], { s: mem(250, 100) });
    expect(tree.templates[0]?.savedBytes).toBeUndefined();
  });

  it('follows a fork of a fork, and children that left the template stay under their source', () => {
    const vms = [vm('s', 'src', 'T1'), vm('a', 'src-c1', 'T2'), vm('b', 'src-c2', null, 'stopped', 'stopped by request'), vm('g', 'src-c1-c1', 'T2')];
    const tree = buildForkTree(vms, [fork('s', ['a', 'b']), fork('a', ['g'])]);
    expect(shape(tree.roots)).toEqual(['src([T1] src-c1([T2](src-c1-c1)) src-c2)']);
  });

  it('sees the children of a fork still running by their state reason', () => {
    const vms = [vm('s', 'src', 'T1'), vm('a', 'src-c1', null, 'starting', 'forked from src')];
    expect(lineage(vms, []).get('a')).toBe('s');
    expect(shape(buildForkTree(vms, []).roots)).toEqual(['src([T1] src-c1)']);
  });

  it('shows a checkpointed VM with the template it maps', () => {
    expect(shape(buildForkTree([vm('s', 'solo', 'T9')], []).roots)).toEqual(['solo([T9])']);
  });

  it('survives records that point in a circle', () => {
    const vms = [vm('a', 'a', null, 'stopped'), vm('b', 'b', null, 'stopped')];
    const tree = buildForkTree(vms, [fork('a', ['b']), fork('b', ['a'])]);
    expect(shape(tree.roots).sort()).toEqual(['a', 'b']);
  });
});
