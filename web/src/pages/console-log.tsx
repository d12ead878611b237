// The tail of a VM's serial console (GET /vms/{ref}/console), read again
// every 2 s while the VM runs, following the end unless scrolled up.
import { useEffect, useRef, useState } from 'preact/hooks';
import { asOffshootError } from '../api.ts';
import type { VmRecord } from '../api.ts';
import { ErrorNotice } from '../components.tsx';
import { useConsole, useInterval } from '../context.ts';
import { isLive } from '../operations.ts';

const CONSOLE_BYTES = 16 * 1024;

/** The tail of the serial console, read again every 2 s while the VM runs; follows the end unless scrolled up. */
export function ConsoleLog({ vm }: { vm: VmRecord }) {
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
