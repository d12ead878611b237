// The dialogs of a VM's actions: those that destroy something (stop, power
// off, delete, deleting a checkpoint) ask and say what is lost; the others
// (fork, checkpoint, clone, restore, migrate) take their options. Each shows
// the daemon's error, with its code, in the dialog.
import { useEffect, useState } from 'preact/hooks';
import { hostOfVm } from '../api.ts';
import type { CheckpointRecord, DatastoreView, VmRecord } from '../api.ts';
import { ActionDialog, Field } from '../components.tsx';
import { useConsole } from '../context.ts';
import { navigate } from '../router.ts';

export type VmDialog = 'stop' | 'kill' | 'delete' | 'fork' | 'checkpoint' | 'clone' | 'migrate' | { restore: CheckpointRecord } | { deleteCheckpoint: CheckpointRecord };

export function VmDialogs({ vm, dialog, onClose: close }: { vm: VmRecord; dialog: VmDialog; onClose: () => void }) {
  const { store, state } = useConsole();
  const client = store.api.client;
  const localHost = state.hosts[0]?.id ?? '';
  return (
    <>
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
            <input name="count" type="number" min={1} max={64} defaultValue={2} required />
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
    </>
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
        <input name="name" required autocomplete="off" defaultValue={`${vm.name}-clone`} pattern="[A-Za-z0-9][A-Za-z0-9_\-]{0,62}" />
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
