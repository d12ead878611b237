// VMs: every VM with its state, host, memory and memory mode (owned, or
// derived from a template), live from the event stream; a filter (key /),
// arrow keys along the rows, and a dialog to create (and boot) a VM of the
// embedded default guest.
import { useState } from 'preact/hooks';
import { hostNameOfVm } from '../api.ts';
import type { VmRecord } from '../api.ts';
import { ActionDialog, Field, StateBadge, Time, onArrowKeys } from '../components.tsx';
import { useConsole } from '../context.ts';
import { shortId } from '../format.ts';
import { href, navigate } from '../router.ts';

export function memoryMode(vm: VmRecord): string {
  const memory = vm.runtime?.memory;
  if (!memory) return '—';
  return memory.mode === 'derived' ? `derived (template ${shortId(memory.templateId)})` : 'owned';
}

export function VmsPage() {
  const { store, state } = useConsole();
  const [filter, setFilter] = useState('');
  const [creating, setCreating] = useState(false);
  const localHost = state.hosts[0]?.id ?? '';
  const needle = filter.trim().toLowerCase();
  const vms = needle ? state.vms.filter((v) => [v.name, v.state, hostNameOfVm(v, state.hosts, localHost)].some((s) => s.toLowerCase().includes(needle))) : state.vms;
  return (
    <section aria-labelledby="page-title">
      <div class="page-head">
        <h1 id="page-title" tabIndex={-1}>
          Virtual machines <span class="count">{state.vms.length}</span>
        </h1>
        <div class="tools">
          <input type="search" data-filter placeholder="Filter (press /)" aria-label="Filter VMs by name, state or host" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} />
          <button type="button" class="primary" onClick={() => setCreating(true)}>
            New VM
          </button>
        </div>
      </div>
      {vms.length === 0 ? (
        <p class="empty">{state.vms.length ? 'No VM matches the filter.' : 'No VMs yet. Create one with New VM.'}</p>
      ) : (
        <table class="list vms" onKeyDown={onArrowKeys}>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Host</th>
              <th scope="col">Memory</th>
              <th scope="col">Memory mode</th>
              <th scope="col">vCPUs</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {vms.map((vm) => (
              <tr key={vm.id} data-vm={vm.name}>
                <td data-label="Name">
                  <a href={href({ page: 'vm', name: vm.name })} data-nav-item>
                    {vm.name}
                  </a>
                </td>
                <td data-label="State">
                  <StateBadge state={vm.state} />
                </td>
                <td data-label="Host">{hostNameOfVm(vm, state.hosts, localHost)}</td>
                <td data-label="Memory">{vm.spec.memoryMiB} MiB</td>
                <td data-label="Memory mode">{memoryMode(vm)}</td>
                <td data-label="vCPUs">{vm.spec.vcpus}</td>
                <td data-label="Created">
                  <Time iso={vm.createdAt} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {creating && (
        <ActionDialog
          title="New VM"
          submitLabel="Create"
          onClose={() => setCreating(false)}
          onSubmit={async (form) => {
            const data = new FormData(form);
            const name = String(data.get('name'));
            await store.api.client.createVm({ name, memory: String(data.get('memory')), vcpus: Number(data.get('vcpus')), start: data.get('start') === 'on' });
            navigate({ page: 'vm', name });
          }}
        >
          <p class="muted">A VM of the embedded default guest.</p>
          <Field label="Name" hint="letters, digits, - and _">
            <input name="name" required pattern="[A-Za-z0-9][A-Za-z0-9_\-]{0,62}" autocomplete="off" />
          </Field>
          <Field label="Memory">
            <input name="memory" value="256M" required />
          </Field>
          <Field label="vCPUs">
            <input name="vcpus" type="number" min={1} max={64} value={1} required />
          </Field>
          <label class="check">
            <input name="start" type="checkbox" checked /> Start it now
          </label>
        </ActionDialog>
      )}
    </section>
  );
}
