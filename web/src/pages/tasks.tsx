// Tasks: every operation, running ones first, each with a live progress bar
// (from the event stream), its phase, and its result or error code; a fork
// shows its children as they appear, a migration its passes, remaining
// memory, dirty rate and downtime; a checkpoint being written can be
// cancelled.
import { useState } from 'preact/hooks';
import type { TaskRecord, VmRecord } from '../api.ts';
import { ActionDialog, ErrorNotice, Progress, StateBadge, Time, onArrowKeys } from '../components.tsx';
import { useConsole } from '../context.ts';
import { formatBytes, formatDuration } from '../format.ts';
import { href } from '../router.ts';
import { forkChildren, isCancellable, migrationFigures, orderTasks, resultSummary, taskTitle } from '../task-view.ts';

type Show = 'all' | 'running' | 'failed';

export function TasksPage() {
  const { state } = useConsole();
  const [show, setShow] = useState<Show>('all');
  const tasks = orderTasks(state.tasks).filter((t) => show === 'all' || t.state === show);
  const running = state.tasks.filter((t) => t.state === 'running').length;
  return (
    <section aria-labelledby="page-title">
      <div class="page-head">
        <h1 id="page-title" tabIndex={-1}>
          Tasks <span class="count">{running} running</span>
        </h1>
        <fieldset class="segmented">
          <legend class="visually-hidden">Show</legend>
          {(['all', 'running', 'failed'] as const).map((s) => (
            <label key={s}>
              <input type="radio" name="show" value={s} checked={show === s} onChange={() => setShow(s)} /> {s}
            </label>
          ))}
        </fieldset>
      </div>
      {tasks.length === 0 ? (
        <p class="empty">No tasks{show === 'all' ? ' yet' : ` ${show}`}.</p>
      ) : (
        <ul class="tasks" onKeyDown={onArrowKeys}>
          {tasks.map((t) => (
            <TaskItem key={t.id} task={t} vms={state.vms} />
          ))}
        </ul>
      )}
    </section>
  );
}

function TaskItem({ task, vms }: { task: TaskRecord; vms: VmRecord[] }) {
  const { store } = useConsole();
  const [cancelling, setCancelling] = useState(false);
  const title = taskTitle(task);
  const target = vms.find((v) => v.id === task.targetId);
  const children = forkChildren(task, vms);
  const migration = migrationFigures(task);
  const summary = resultSummary(task);
  const ms = Date.parse(task.updatedAt) - Date.parse(task.createdAt);
  return (
    <li class={`task card task-${task.state}`} data-task={task.id} data-kind={task.kind} data-target={task.targetName} data-state={task.state} tabIndex={0} data-nav-item aria-label={`${title}: ${task.state}`}>
      <header>
        <h2>
          {title.replace(` ${task.targetName}`, '')} {target ? <a href={href({ page: 'vm', name: target.name })}>{task.targetName}</a> : <span>{task.targetName}</span>}
        </h2>
        <StateBadge state={task.state} />
      </header>
      <Progress value={task.state === 'succeeded' ? 1 : task.progress} label={`${title} progress`} state={task.state} />
      {task.message !== task.error?.message && (
        <p class="phase" data-phase>
          {task.message}
        </p>
      )}
      {children.length > 0 && (
        <p class="children" aria-label="children">
          {children.map((c) => (
            <span key={c.name} class="chip" data-child={c.name}>
              {c.name} <StateBadge state={c.state} />
            </span>
          ))}
        </p>
      )}
      {migration && (
        <dl class="facts migration">
          <div>
            <dt>Pass</dt>
            <dd>{migration.pass ?? '—'}</dd>
          </div>
          <div>
            <dt>Remaining memory</dt>
            <dd>{formatBytes(migration.remainingBytes)}</dd>
          </div>
          <div>
            <dt>Dirty rate</dt>
            <dd>{migration.dirtyBytesPerSecond === undefined ? '—' : `${formatBytes(migration.dirtyBytesPerSecond)}/s`}</dd>
          </div>
          <div>
            <dt>Downtime</dt>
            <dd>{formatDuration(migration.downtimeMs)}</dd>
          </div>
        </dl>
      )}
      {summary && <p class="result">{summary}</p>}
      <ErrorNotice error={task.error} />
      <p class="muted when">
        Started <Time iso={task.createdAt} />
        {task.state !== 'running' && <> · took {formatDuration(ms)}</>}
        {isCancellable(task) && (
          <>
            {' '}
            <button type="button" class="danger small" onClick={() => setCancelling(true)}>
              Cancel…
            </button>
          </>
        )}
      </p>
      {cancelling && (
        <ActionDialog title={`Cancel ${title}?`} submitLabel="Cancel the task" destructive onClose={() => setCancelling(false)} onSubmit={() => store.api.client.cancelTask(task.id)}>
          <p>The checkpoint being written and its file are removed; the VM keeps running.</p>
        </ActionDialog>
      )}
    </li>
  );
}
