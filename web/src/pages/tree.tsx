// The fork tree: which VMs and memory templates derive from which (see
// fork-tree.ts), with each template's size, how many VMs map it and what
// their sharing saves, and each VM's state and memory.
import type { TemplateNode, TreeNode, VmNode } from '../fork-tree.ts';
import { buildForkTree } from '../fork-tree.ts';
import { StateBadge } from '../components.tsx';
import { useConsole, useInterval } from '../context.ts';
import { formatBytes, shortId } from '../format.ts';
import { href } from '../router.ts';

export function TreePage() {
  const { store, state } = useConsole();
  useInterval(() => void store.refreshMemory().catch((err: unknown) => store.fail(err)), 5_000, [store]);
  const tree = buildForkTree(state.vms, state.tasks, state.memory);
  return (
    <section aria-labelledby="page-title">
      <div class="page-head">
        <h1 id="page-title" tabIndex={-1}>
          Fork tree
        </h1>
        <p class="muted" data-testid="tree-summary">
          {tree.templates.length} memory {tree.templates.length === 1 ? 'template' : 'templates'} mapped by {tree.templates.reduce((n, t) => n + t.vmCount, 0)} VMs; sharing saves {formatBytes(tree.savedBytes)}.
        </p>
      </div>
      {tree.roots.length === 0 ? (
        <p class="empty">No VMs yet.</p>
      ) : (
        <ul class="tree" aria-label="VMs and the templates they derive from">
          {tree.roots.map((node) => (
            <Node key={node.kind === 'vm' ? node.vm.id : node.id} node={node} />
          ))}
        </ul>
      )}
    </section>
  );
}

function Node({ node }: { node: TreeNode }) {
  return (
    <li class={`node node-${node.kind}`}>
      {node.kind === 'vm' ? <VmLabel node={node} /> : <TemplateLabel node={node} />}
      {node.children.length > 0 && (
        <ul>
          {node.children.map((child) => (
            <Node key={child.kind === 'vm' ? child.vm.id : child.id} node={child} />
          ))}
        </ul>
      )}
    </li>
  );
}

function VmLabel({ node }: { node: VmNode }) {
  const { vm, memory } = node;
  return (
    <div class="label" data-tree-vm={vm.name}>
      <a href={href({ page: 'vm', name: vm.name })}>{vm.name}</a> <StateBadge state={vm.state} /> <span class="muted">{vm.runtime ? vm.runtime.memory.mode : 'not running'}</span>
      {memory && (
        <span class="muted">
          {' '}
          · RSS {formatBytes(memory.rssKiB * 1024)} · PSS {formatBytes(memory.pssKiB * 1024)} · shared {formatBytes(memory.sharedKiB * 1024)}
        </span>
      )}
    </div>
  );
}

function TemplateLabel({ node }: { node: TemplateNode }) {
  return (
    <div class="label template" data-tree-template={node.id}>
      <span class="kind">template</span> <code title={node.id}>{shortId(node.id)}</code> · {formatBytes(node.sizeBytes)} · mapped by {node.vmCount} {node.vmCount === 1 ? 'VM' : 'VMs'} ·{' '}
      <strong>saves {node.savedBytes === undefined ? '…' : formatBytes(node.savedBytes)}</strong>
    </div>
  );
}
