// The console's shell: sign-in (until the daemon accepts a token), then the
// header with the pages, the event stream's state and sign-out, and the page
// of the current route. Keys: h hosts, v VMs, t tasks, f fork tree, / the
// filter, ? help; arrows move along lists. A render error shows its message
// instead of a blank page.
import { useEffect, useErrorBoundary, useMemo, useRef, useState } from 'preact/hooks';
import type { OffshootError } from './api.ts';
import { ConsoleApi, asOffshootError } from './api.ts';
import { Dialog, ErrorNotice } from './components.tsx';
import { StoreContext, useConsole } from './context.ts';
import { HostsPage } from './pages/hosts.tsx';
import { SignInPage } from './pages/sign-in.tsx';
import { TasksPage } from './pages/tasks.tsx';
import { TreePage } from './pages/tree.tsx';
import { VmDetailPage } from './pages/vm-detail.tsx';
import { VmsPage } from './pages/vms.tsx';
import type { Route } from './router.ts';
import { href, navigate, useRoute } from './router.ts';
import { forgetToken, savedToken } from './session.ts';
import { ConsoleStore } from './store.ts';

export function App() {
  const [api, setApi] = useState<ConsoleApi | null>(() => {
    const token = savedToken();
    return token ? new ConsoleApi(token) : null;
  });
  const [signInError, setSignInError] = useState<OffshootError | null>(null);
  if (!api) {
    return (
      <SignInPage
        error={signInError}
        onSignedIn={(signedIn) => {
          setSignInError(null);
          setApi(signedIn);
        }}
      />
    );
  }
  return (
    <SignedIn
      key={api.client.url}
      api={api}
      onSignOut={(error) => {
        forgetToken();
        setSignInError(error);
        setApi(null);
      }}
    />
  );
}

const PAGES: { route: Route; label: string; key: string }[] = [
  { route: { page: 'hosts' }, label: 'Hosts', key: 'h' },
  { route: { page: 'vms' }, label: 'VMs', key: 'v' },
  { route: { page: 'tasks' }, label: 'Tasks', key: 't' },
  { route: { page: 'tree' }, label: 'Fork tree', key: 'f' },
];

function SignedIn({ api, onSignOut }: { api: ConsoleApi; onSignOut: (error: OffshootError | null) => void }) {
  const store = useMemo(() => new ConsoleStore(api, (error) => onSignOut(error)), [api]);
  useEffect(() => {
    store.start();
    return () => store.stop();
  }, [store]);
  return (
    <StoreContext.Provider value={store}>
      <Shell onSignOut={() => onSignOut(null)} />
    </StoreContext.Provider>
  );
}

function isTyping(target: EventTarget | null): boolean {
  const el = target as HTMLElement | null;
  return Boolean(el && (el.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(el.tagName)));
}

function Shell({ onSignOut }: { onSignOut: () => void }) {
  const { state } = useConsole();
  const route = useRoute();
  const [help, setHelp] = useState(false);
  const main = useRef<HTMLElement>(null);

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.altKey || e.ctrlKey || e.metaKey || isTyping(e.target) || document.querySelector('dialog[open]')) return;
      const page = PAGES.find((p) => p.key === e.key);
      if (page) {
        navigate(page.route);
        e.preventDefault();
      } else if (e.key === '/') {
        const filter = document.querySelector<HTMLInputElement>('[data-filter]');
        if (filter) {
          filter.focus();
          e.preventDefault();
        }
      } else if (e.key === '?') {
        setHelp(true);
      }
    };
    addEventListener('keydown', onKey);
    return () => removeEventListener('keydown', onKey);
  }, []);

  // After a page change, move focus to the page's heading so keyboard and screen-reader users start there.
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    main.current?.querySelector<HTMLElement>('h1')?.focus();
  }, [route]);

  const current = route.page === 'vm' ? 'vms' : route.page;
  const streamLabel = state.stream === 'live' ? 'Live' : state.stream === 'connecting' ? 'Connecting…' : 'Reconnecting…';
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => (e.preventDefault(), main.current?.focus())}>
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href={href({ page: 'vms' })}>
          Offshoot
        </a>
        <nav aria-label="Pages">
          {PAGES.map((p) => (
            <a key={p.key} href={href(p.route)} aria-current={current === p.route.page ? 'page' : undefined} aria-keyshortcuts={p.key}>
              {p.label}
            </a>
          ))}
        </nav>
        <span class={`stream stream-${state.stream}`} role="status" title="Event stream from the daemon">
          {streamLabel}
        </span>
        <button type="button" class="icon" aria-label="Keyboard shortcuts" aria-keyshortcuts="?" onClick={() => setHelp(true)}>
          ?
        </button>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main id="main" ref={main} tabIndex={-1}>
        <ErrorNotice error={state.error} />
        {state.loaded ? <ErrorBoundary route={route} /> : !state.error && <p class="muted">Loading…</p>}
      </main>
      {help && <HelpDialog onClose={() => setHelp(false)} />}
    </>
  );
}

function ErrorBoundary({ route }: { route: Route }) {
  const [error, reset] = useErrorBoundary();
  if (error) {
    return (
      <div>
        <ErrorNotice error={asOffshootError(error)} />
        <button type="button" onClick={reset}>
          Try again
        </button>
      </div>
    );
  }
  return <Page route={route} />;
}

function Page({ route }: { route: Route }) {
  switch (route.page) {
    case 'hosts':
      return <HostsPage />;
    case 'vms':
      return <VmsPage />;
    case 'vm':
      return <VmDetailPage name={route.name} />;
    case 'tasks':
      return <TasksPage />;
    case 'tree':
      return <TreePage />;
  }
}

function HelpDialog({ onClose }: { onClose: () => void }) {
  return (
    <Dialog title="Keyboard shortcuts" onClose={onClose}>
      <dl class="keys">
        {PAGES.map((p) => (
          <div key={p.key}>
            <dt>
              <kbd>{p.key}</kbd>
            </dt>
            <dd>{p.label}</dd>
          </div>
        ))}
        <div>
          <dt>
            <kbd>/</kbd>
          </dt>
          <dd>Filter the list</dd>
        </div>
        <div>
          <dt>
            <kbd>↑</kbd> <kbd>↓</kbd>
          </dt>
          <dd>Move along a list</dd>
        </div>
        <div>
          <dt>
            <kbd>Esc</kbd>
          </dt>
          <dd>Close a dialog</dd>
        </div>
      </dl>
    </Dialog>
  );
}
