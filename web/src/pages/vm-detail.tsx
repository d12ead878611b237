// One VM: its facts, memory, disks with their backing chains, checkpoints,
// recent tasks and the live tail of its serial console, and its actions:
// start, stop, pause, resume, fork N, checkpoint, clone, migrate (once the
// daemon has it), power off and delete. Whatever destroys something (stop,
// power off, delete, deleting a checkpoint) asks first; the others open a
// dialog with their options (vm-dialogs.tsx). Errors show with their code.
import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { OffshootError, hostNameOfVm } from '../api.ts';
import { ErrorNotice, Progress, StateBadge, Time, useAction } from '../components.tsx';
import { useConsole, useInterval } from '../context.ts';
import { formatBytes } from '../format.ts';
import { allows, canClone, isLive } from '../operations.ts';
import { href } from '../router.ts';
import { resultSummary, taskTitle } from '../task-view.ts';
import { ConsoleLog } from './console-log.tsx';
import { VmDialogs } from './vm-dialogs.tsx';
import type { VmDialog } from './vm-dialogs.tsx';
import { memoryMode } from './vms.tsx';

export function VmDetailPage({ name }: { name: string }) {
  const { store, state } = useConsole();
  const vm = state.vms.find((v) => v.name === name);
  const [dialog, setDialog] = useState<VmDialog | null>(null);
  const quick = useAction();
  const live = vm ? isLive(vm.state) : false;
  const vmId = vm?.id;
  useInterval(() => void (live && vmId ? store.refreshMemory([vmId]).catch(() => undefined) : undefined), 5_000, [store, live, vmId]);

  if (!vm) {
    return (
      <section>
        <h1 tabIndex={-1}>{name}</h1>
        <ErrorNotice error={new OffshootError('NOT_FOUND', `VM "${name}" not found (deleted, or never created)`, { name }, 404)} />
        <a href={href({ page: 'vms' })}>All VMs</a>
      </section>
    );
  }
  const client = store.api.client;
  const memory = state.memory[vm.id];
  const checkpoints = state.checkpoints.filter((c) => c.vmId === vm.id);
  const tasks = state.tasks.filter((t) => t.targetId === vm.id).slice(0, 8);
  const close = () => setDialog(null);
  const localHost = state.hosts[0]?.id ?? '';

  return (
    <section aria-labelledby="page-title" class="vm-detail" data-vm={vm.name}>
      <p class="crumbs">
        <a href={href({ page: 'vms' })}>VMs</a> /
      </p>
      <div class="page-head">
        <h1 id="page-title" tabIndex={-1}>
          {vm.name} <StateBadge state={vm.state} />
        </h1>
        {vm.stateReason && <p class="muted reason">{vm.stateReason}</p>}
      </div>

      <div class="actions" role="toolbar" aria-label="VM actions">
        <button type="button" class="primary" disabled={!allows(vm.state, 'start') || quick.busy} onClick={() => void quick.run(() => client.startVm(vm.id))}>
          Start
        </button>
        <button type="button" disabled={!allows(vm.state, 'stop')} onClick={() => setDialog('stop')}>
          Stop…
        </button>
        <button type="button" disabled={!allows(vm.state, 'pause') || quick.busy} onClick={() => void quick.run(() => client.pauseVm(vm.id))}>
          Pause
        </button>
        <button type="button" disabled={!allows(vm.state, 'resume') || quick.busy} onClick={() => void quick.run(() => client.resumeVm(vm.id))}>
          Resume
        </button>
        <button type="button" disabled={!allows(vm.state, 'fork')} onClick={() => setDialog('fork')}>
          Fork…
        </button>
        <button type="button" disabled={!allows(vm.state, 'checkpoint')} onClick={() => setDialog('checkpoint')}>
          Checkpoint…
        </button>
        <button type="button" disabled={!canClone(vm.state)} onClick={() => setDialog('clone')}>
          Clone…
        </button>
        {state.capabilities.migrate && (
          <button type="button" disabled={vm.state !== 'running'} onClick={() => setDialog('migrate')}>
            Migrate…
          </button>
        )}
        <button type="button" class="danger" disabled={!allows(vm.state, 'kill')} onClick={() => setDialog('kill')}>
          Power off…
        </button>
        <button type="button" class="danger" disabled={!allows(vm.state, 'delete')} onClick={() => setDialog('delete')}>
          Delete…
        </button>
      </div>
      <ErrorNotice error={quick.error} onDismiss={quick.clear} />

      <div class="grid">
        <section class="card" aria-labelledby="facts-title">
          <h2 id="facts-title">Summary</h2>
          <dl class="facts">
            <Fact label="ID" value={<code>{vm.id}</code>} />
            <Fact label="Host" value={hostNameOfVm(vm, state.hosts, localHost)} />
            <Fact label="vCPUs" value={vm.spec.vcpus} />
            <Fact label="Memory" value={`${vm.spec.memoryMiB} MiB`} />
            <Fact label="Memory mode" value={memoryMode(vm)} />
            <Fact label="Accelerator" value={vm.runtime?.accel.toUpperCase() ?? '—'} />
            <Fact label="QEMU pid" value={vm.runtime?.pid ?? '—'} />
            <Fact label="Running since" value={<Time iso={vm.runtime?.startedAt} />} />
            <Fact label="Created" value={<Time iso={vm.createdAt} />} />
          </dl>
        </section>
        <section class="card" aria-labelledby="memory-title">
          <h2 id="memory-title">Memory use</h2>
          {memory && live ? (
            <dl class="facts">
              <Fact label="Resident (RSS)" value={formatBytes(memory.rssKiB * 1024)} />
              <Fact label="Proportional (PSS)" value={formatBytes(memory.pssKiB * 1024)} />
              <Fact label="Shared" value={formatBytes(memory.sharedKiB * 1024)} />
              <Fact label="Private" value={formatBytes(memory.privateKiB * 1024)} />
            </dl>
          ) : (
            <p class="muted">{live ? 'Measuring…' : 'Not running.'}</p>
          )}
        </section>
      </div>

      <section class="card" aria-labelledby="disks-title">
        <h2 id="disks-title">Disks</h2>
        {vm.spec.disks.length === 0 ? (
          <p class="muted">No disks.</p>
        ) : (
          <ul class="disks">
            {vm.spec.disks.map((disk) => (
              <li key={disk.id} data-disk={disk.id}>
                <p>
                  <strong>{disk.id}</strong> <span class="chip">{disk.format}</span> {disk.readOnly && <span class="chip">read-only</span>} <span class="chip">{disk.owned ? 'owned by the VM' : 'attached'}</span>{' '}
                  <span class="muted">chain depth {disk.backing.length + 1}</span>
                </p>
                <ol class="chain" aria-label={`backing chain of ${disk.id}, top first`}>
                  {[disk.file, ...disk.backing].map((path, i) => (
                    <li key={path}>
                      <code>{path}</code> {i === 0 ? <span class="muted">(top, writes go here)</span> : i === disk.backing.length ? <span class="muted">(base)</span> : null}
                    </li>
                  ))}
                </ol>
              </li>
            ))}
          </ul>
        )}
      </section>

      <section class="card" aria-labelledby="checkpoints-title">
        <h2 id="checkpoints-title">Checkpoints</h2>
        {checkpoints.length === 0 ? (
          <p class="muted">No checkpoints of this VM.</p>
        ) : (
          <table class="list checkpoints">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">State</th>
                <th scope="col">Memory</th>
                <th scope="col">File</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {checkpoints.map((c) => (
                <tr key={c.id} data-checkpoint={c.name}>
                  <td data-label="Name">{c.name}</td>
                  <td data-label="State">
                    <StateBadge state={c.state} />
                  </td>
                  <td data-label="Memory">{formatBytes(c.memoryBytes)}</td>
                  <td data-label="File">{formatBytes(c.fileBytes)}</td>
                  <td data-label="Created">
                    <Time iso={c.createdAt} />
                  </td>
                  <td class="row-actions">
                    <button type="button" disabled={c.state !== 'complete'} onClick={() => setDialog({ restore: c })}>
                      Restore…
                    </button>
                    <button type="button" class="danger" disabled={c.state === 'writing'} onClick={() => setDialog({ deleteCheckpoint: c })}>
                      Delete…
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section class="card" aria-labelledby="vm-tasks-title">
        <h2 id="vm-tasks-title">Recent tasks</h2>
        {tasks.length === 0 ? (
          <p class="muted">None.</p>
        ) : (
          <ul class="mini-tasks">
            {tasks.map((t) => (
              <li key={t.id}>
                <a href={href({ page: 'tasks' })}>{taskTitle(t)}</a> <StateBadge state={t.state} /> {t.state === 'running' ? <Progress value={t.progress} label={`${taskTitle(t)} progress`} /> : <span class="muted">{t.error ? `${t.error.code}: ${t.error.message}` : resultSummary(t)}</span>}
              </li>
            ))}
          </ul>
        )}
      </section>

      <ConsoleLog vm={vm} />

      {dialog && <VmDialogs vm={vm} dialog={dialog} onClose={close} />}
    </section>
  );
}

function Fact({ label, value }: { label: string; value: ComponentChildren }) {
  return (
    <div>
      <dt>{label}</dt>
      <dd>{value}</dd>
    </div>
  );
}
