// One VM: its facts, memory, disks with their backing chains, checkpoints,
// recent tasks and the live tail of its serial console, and its actions:
// start, stop, pause, resume, fork N, checkpoint, clone, migrate (once the
// daemon has it), power off and delete. Whatever destroys something (stop,
// power off, delete, deleting a checkpoint) asks first; the others open a
// dialog with their options. Errors show in the dialog with their code.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { OffshootError, asOffshootError, hostOfVm } from '../api.ts';
import type { CheckpointRecord, DatastoreView, VmRecord } from '../api.ts';
import { ActionDialog, ErrorNotice, Field, Progress, StateBadge, Time, useAction } from '../components.tsx';
import { useConsole, useInterval } from '../context.ts';
import { formatBytes } from '../format.ts';
import { allows, canClone, isLive } from '../operations.ts';
import { href, navigate } from '../router.ts';
import { resultSummary, taskTitle } from '../task-view.ts';
import { memoryMode } from './vms.tsx';

type DialogKind = 'stop' | 'kill' | 'delete' | 'fork' | 'checkpoint' | 'clone' | 'migrate' | { restore: CheckpointRecord } | { deleteCheckpoint: CheckpointRecord };

const CONSOLE_BYTES = 16 * 1024;

export function VmDetailPage({ name }: { name: string }) {
  const { store, state } = useConsole();
  const vm = state.vms.find((v) => v.name === name);
  const [dialog, setDialog] = useState<DialogKind | null>(null);
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
            <Fact label="Host" value={hostOfVm(vm, localHost)} />
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
                  {[disk.path, ...disk.backing].map((path, i) => (
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

      {dialog === 'stop' && (
        <ActionDialog title={`Stop ${vm.name}?`} submitLabel="Stop" destructive onClose={close} onSubmit={() => client.stopVm(vm.id)}>
          <p>The guest is asked to power off (ACPI) and is killed if it has not after the timeout. Its memory is lost; its disks stay.</p>
        </ActionDialog>
      )}
      {dialog === 'kill' && (
        <ActionDialog title={`Power off ${vm.name} now?`} submitLabel="Power off" destructive onClose={close} onSubmit={() => client.killVm(vm.id)}>
          <p>QEMU is killed at once, like pulling the plug: the guest gets no chance to write what it holds.</p>
        </ActionDialog>
      )}
      {dialog === 'delete' && (
        <ActionDialog
          title={`Delete ${vm.name}?`}
          submitLabel="Delete"
          destructive
          onClose={close}
          onSubmit={async () => {
            await client.deleteVm(vm.id);
            navigate({ page: 'vms' });
          }}
        >
          <p>
            The VM and the files it owns (its disks' top layers, its folder) are deleted. This cannot be undone. Checkpoints of it stay.
          </p>
        </ActionDialog>
      )}
      {dialog === 'fork' && (
        <ActionDialog
          title={`Fork ${vm.name}`}
          submitLabel="Fork"
          onClose={close}
          onSubmit={async (form) => {
            const data = new FormData(form);
            const prefix = String(data.get('prefix') ?? '').trim();
            await client.forkVm(vm.id, { count: Number(data.get('count')), ...(prefix ? { prefix } : {}) });
            navigate({ page: 'tasks' });
          }}
        >
          <p class="muted">The VM stops for a moment; then it and its children run on, sharing its memory copy-on-write.</p>
          <Field label="Children">
            <input name="count" type="number" min={1} max={64} value={2} required />
          </Field>
          <Field label="Name prefix" hint={`default ${vm.name}-c (children ${vm.name}-c1, ${vm.name}-c2, …)`}>
            <input name="prefix" autocomplete="off" pattern="[A-Za-z0-9][A-Za-z0-9_\-]{0,40}" />
          </Field>
        </ActionDialog>
      )}
      {dialog === 'checkpoint' && (
        <ActionDialog
          title={`Checkpoint ${vm.name}`}
          submitLabel="Checkpoint"
          onClose={close}
          onSubmit={async (form) => {
            const data = new FormData(form);
            const name = String(data.get('name') ?? '').trim();
            await client.checkpointVm(vm.id, { ...(name ? { name } : {}), stop: data.get('stop') === 'on' });
            navigate({ page: 'tasks' });
          }}
        >
          <p class="muted">A short stun, then the VM runs on while its memory is written to the checkpoint file.</p>
          <Field label="Name" hint="default: NAME-TIMESTAMP">
            <input name="name" autocomplete="off" pattern="[A-Za-z0-9][A-Za-z0-9_\-]{0,62}" />
          </Field>
          <label class="check">
            <input name="stop" type="checkbox" /> Power the VM off after the save (suspend)
          </label>
        </ActionDialog>
      )}
      {dialog === 'clone' && <CloneDialog vm={vm} onClose={close} />}
      {dialog === 'migrate' && (
        <ActionDialog
          title={`Migrate ${vm.name}`}
          submitLabel="Migrate"
          onClose={close}
          onSubmit={async (form) => {
            await store.api.migrate(vm.id, String(new FormData(form).get('host')));
            navigate({ page: 'tasks' });
          }}
        >
          <Field label="To host">
            <select name="host" required>
              {state.hosts
                .filter((h) => h.id !== hostOfVm(vm, localHost))
                .map((h) => (
                  <option key={h.id} value={h.id}>
                    {h.name} ({h.state})
                  </option>
                ))}
            </select>
          </Field>
        </ActionDialog>
      )}
      {typeof dialog === 'object' && dialog !== null && 'restore' in dialog && (
        <ActionDialog
          title={`Restore ${dialog.restore.name}`}
          submitLabel="Restore"
          onClose={close}
          onSubmit={async (form) => {
            const data = new FormData(form);
            const name = String(data.get('name') ?? '').trim();
            await client.restore({ checkpoint: dialog.restore.id, ...(name ? { name } : {}), mode: data.get('mode') === 'eager' ? 'eager' : 'lazy' });
            navigate({ page: 'tasks' });
          }}
        >
          <p class="muted">The checkpoint becomes a new VM with its own identity.</p>
          <Field label="New VM name" hint={`default ${vm.name}-r1`}>
            <input name="name" autocomplete="off" pattern="[A-Za-z0-9][A-Za-z0-9_\-]{0,62}" />
          </Field>
          <Field label="Mode">
            <select name="mode">
              <option value="lazy">lazy: runs at once, memory streams in</option>
              <option value="eager">eager: all memory loaded first</option>
            </select>
          </Field>
        </ActionDialog>
      )}
      {typeof dialog === 'object' && dialog !== null && 'deleteCheckpoint' in dialog && (
        <ActionDialog
          title={`Delete checkpoint ${dialog.deleteCheckpoint.name}?`}
          submitLabel="Delete"
          destructive
          onClose={close}
          onSubmit={async () => {
            await client.deleteCheckpoint(dialog.deleteCheckpoint.id);
            await store.reloadCheckpoints();
          }}
        >
          <p>
            The checkpoint file <code>{dialog.deleteCheckpoint.path}</code> is deleted. This cannot be undone.
          </p>
        </ActionDialog>
      )}
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

function CloneDialog({ vm, onClose }: { vm: VmRecord; onClose: () => void }) {
  const { store } = useConsole();
  const [mode, setMode] = useState('linked');
  const [datastores, setDatastores] = useState<DatastoreView[]>([]);
  useEffect(() => void store.api.storage.listDatastores().then(setDatastores, () => undefined), [store]);
  return (
    <ActionDialog
      title={`Clone ${vm.name}`}
      submitLabel="Clone"
      onClose={onClose}
      onSubmit={async (form) => {
        const data = new FormData(form);
        const datastore = String(data.get('datastore') ?? '');
        await store.api.storage.cloneVm(vm.id, { name: String(data.get('name')), mode: mode as 'linked', ...(mode === 'full' && datastore ? { datastore } : {}), start: data.get('start') === 'on' });
        navigate({ page: 'vm', name: String(data.get('name')) });
      }}
    >
      <Field label="Name">
        <input name="name" required autocomplete="off" value={`${vm.name}-clone`} pattern="[A-Za-z0-9][A-Za-z0-9_\-]{0,62}" />
      </Field>
      <Field label="Kind">
        <select name="mode" value={mode} onChange={(e) => setMode(e.currentTarget.value)}>
          <option value="linked">linked: a delta over a frozen base (instant)</option>
          <option value="instant">instant: boots now, copies in the background</option>
          <option value="full">full: a copy on a datastore</option>
        </select>
      </Field>
      {mode === 'full' && (
        <Field label="Datastore">
          <select name="datastore" required>
            {datastores.map((d) => (
              <option key={d.name} value={d.name}>
                {d.name}
              </option>
            ))}
          </select>
        </Field>
      )}
      <label class="check">
        <input name="start" type="checkbox" /> Start the clone
      </label>
    </ActionDialog>
  );
}

/** The tail of the serial console, read again every 2 s while the VM runs; follows the end unless scrolled up. */
function ConsoleLog({ vm }: { vm: VmRecord }) {
  const { store } = useConsole();
  const [text, setText] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const pre = useRef<HTMLPreElement>(null);
  const live = isLive(vm.state);
  useInterval(
    () =>
      void store.api.client.console(vm.id, CONSOLE_BYTES).then(
        (t) => {
          setText(t);
          setError(null);
        },
        (err: unknown) => setError(err),
      ),
    live ? 2_000 : 3_600_000,
    [store, vm.id, live],
  );
  useEffect(() => {
    const el = pre.current;
    if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 80) el.scrollTop = el.scrollHeight;
  }, [text]);
  return (
    <section class="card" aria-labelledby="console-title">
      <h2 id="console-title">
        Console log {live && <span class="chip live">live</span>}
      </h2>
      {error ? <ErrorNotice error={asOffshootError(error)} /> : null}
      <pre ref={pre} class="console" tabIndex={0} aria-label="serial console output" data-console>
        {text === null ? 'Reading…' : text || '(nothing written yet)'}
      </pre>
    </section>
  );
}
