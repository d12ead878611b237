// The signed-in console's store, shared with every page through a context,
// and a hook that re-renders a page when the store changes.
import { createContext } from 'preact';
import { useContext, useEffect, useReducer } from 'preact/hooks';
import type { ConsoleState, ConsoleStore } from './store.ts';

export const StoreContext = createContext<ConsoleStore | null>(null);

export function useConsole(): { store: ConsoleStore; state: ConsoleState } {
  const store = useContext(StoreContext);
  if (!store) throw new Error('useConsole outside of a signed-in console');
  const [, rerender] = useReducer((n: number) => n + 1, 0);
  useEffect(() => store.subscribe(() => rerender(undefined)), [store]);
  return { store, state: store.state };
}

/** Runs `tick` now and every `ms` while the page is shown. */
export function useInterval(tick: () => void, ms: number, deps: unknown[] = []): void {
  useEffect(() => {
    tick();
    const timer = setInterval(tick, ms);
    return () => clearInterval(timer);
  }, deps);
}
