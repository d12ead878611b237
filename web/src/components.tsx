// Small building blocks shared by the pages: the error notice (every API
// error shows its code and message), state badges, progress bars, times in
// the browser's locale, and dialogs (the native <dialog>: focus stays inside,
// Escape closes) for actions and for confirming anything that destroys.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { OffshootError } from './api.ts';
import { asOffshootError } from './api.ts';
import { formatAgo, formatPercent, formatTime } from './format.ts';

/** An error as the API gives it (an OffshootError, or a task's error record). */
export interface ErrorLike {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

export function ErrorNotice({ error, onDismiss }: { error: ErrorLike | null | undefined; onDismiss?: () => void }) {
  if (!error) return null;
  const details = Object.keys(error.details ?? {}).length ? JSON.stringify(error.details, null, 2) : null;
  return (
    <div class="notice error" role="alert">
      <p>
        <code class="code">{error.code}</code> <span class="message">{error.message}</span>
      </p>
      {details && (
        <details>
          <summary>Details</summary>
          <pre>{details}</pre>
        </details>
      )}
      {onDismiss && (
        <button type="button" class="link" onClick={onDismiss}>
          Dismiss
        </button>
      )}
    </div>
  );
}

export function StateBadge({ state }: { state: string }) {
  return <span class={`badge state-${state}`}>{state}</span>;
}

export function Progress({ value, label, state }: { value: number; label: string; state?: string }) {
  return (
    <div class={`progress ${state ? `progress-${state}` : ''}`}>
      <progress max={1} value={value} aria-label={label} aria-valuetext={formatPercent(value)} />
      <span class="percent">{formatPercent(value)}</span>
    </div>
  );
}

export function Time({ iso, relative = false }: { iso: string | null | undefined; relative?: boolean }) {
  if (!iso) return <span>—</span>;
  return (
    <time dateTime={iso} title={formatTime(iso)}>
      {relative ? formatAgo(iso) : formatTime(iso)}
    </time>
  );
}

/** A modal dialog; `onClose` runs on Escape, the close button, and a click on the backdrop. */
export function Dialog({ title, onClose, children, wide = false }: { title: string; onClose: () => void; children: ComponentChildren; wide?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    const opener = document.activeElement as HTMLElement | null;
    dialog.showModal();
    return () => {
      dialog.close();
      opener?.focus?.();
    };
  }, []);
  return (
    <dialog
      ref={ref}
      class={wide ? 'wide' : ''}
      aria-labelledby="dialog-title"
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
      onClick={(e) => e.target === ref.current && onClose()}
    >
      <header>
        <h2 id="dialog-title">{title}</h2>
        <button type="button" class="icon" aria-label="Close" onClick={onClose}>
          ×
        </button>
      </header>
      {children}
    </dialog>
  );
}

/** Runs an async action once, tracking busy and error; the error is shown where the form is. */
export function useAction(): { busy: boolean; error: OffshootError | null; run: (action: () => Promise<unknown>) => Promise<boolean>; clear: () => void } {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<OffshootError | null>(null);
  return {
    busy,
    error,
    clear: () => setError(null),
    run: async (action) => {
      setBusy(true);
      setError(null);
      try {
        await action();
        return true;
      } catch (err) {
        setError(asOffshootError(err));
        return false;
      } finally {
        setBusy(false);
      }
    },
  };
}

/** A form in a dialog: submit runs the action; success closes the dialog, an error stays in it. */
export function ActionDialog(props: { title: string; submitLabel: string; destructive?: boolean; onSubmit: (form: HTMLFormElement) => Promise<unknown>; onClose: () => void; children?: ComponentChildren }) {
  const action = useAction();
  return (
    <Dialog title={props.title} onClose={props.onClose}>
      <form
        method="dialog"
        onSubmit={async (e) => {
          e.preventDefault();
          if (await action.run(() => props.onSubmit(e.currentTarget))) props.onClose();
        }}
      >
        {props.children}
        <ErrorNotice error={action.error} />
        <footer>
          <button type="button" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class={props.destructive ? 'danger' : 'primary'} disabled={action.busy} autofocus={!props.children}>
            {action.busy ? 'Working…' : props.submitLabel}
          </button>
        </footer>
      </form>
    </Dialog>
  );
}

export function Field({ label, children, hint }: { label: string; children: ComponentChildren; hint?: string }) {
  return (
    <div class="field">
      <label>
        <span>{label}</span>
        {children}
      </label>
      {hint && <small>{hint}</small>}
    </div>
  );
}

/** Moves focus between the links of a list or table with the arrow keys (and Home/End). */
export function onArrowKeys(e: KeyboardEvent): void {
  if (!['ArrowDown', 'ArrowUp', 'Home', 'End'].includes(e.key)) return;
  const container = e.currentTarget as HTMLElement;
  const items = [...container.querySelectorAll<HTMLElement>('[data-nav-item]')];
  const i = items.indexOf(document.activeElement as HTMLElement);
  const next = e.key === 'Home' ? 0 : e.key === 'End' ? items.length - 1 : e.key === 'ArrowDown' ? Math.min(items.length - 1, i + 1) : Math.max(0, i - 1);
  if (items[next]) {
    e.preventDefault();
    items[next].focus();
  }
}
