// Sign-in: the daemon's API token (in $OFFSHOOT_HOME/token). It is checked
// with a real API call before the console opens; a refused token shows the
// daemon's answer (UNAUTHORIZED) and the console stays closed.
import { useState } from 'preact/hooks';
import type { ConsoleApi, OffshootError } from '../api.ts';
import { asOffshootError } from '../api.ts';
import { ErrorNotice, Field } from '../components.tsx';
import { signIn } from '../session.ts';

export function SignInPage({ error: initial, onSignedIn }: { error: OffshootError | null; onSignedIn: (api: ConsoleApi) => void }) {
  const [error, setError] = useState<OffshootError | null>(initial);
  const [busy, setBusy] = useState(false);
  return (
    <main class="sign-in">
      <form
        aria-labelledby="sign-in-title"
        onSubmit={async (e) => {
          e.preventDefault();
          const token = new FormData(e.currentTarget).get('token');
          setBusy(true);
          setError(null);
          try {
            onSignedIn(await signIn(String(token ?? '')));
          } catch (err) {
            setError(asOffshootError(err));
          } finally {
            setBusy(false);
          }
        }}
      >
        <h1 id="sign-in-title">Sign in to Offshoot</h1>
        <p class="muted">
          Paste the daemon's API token: <code>cat $OFFSHOOT_HOME/token</code> (default <code>~/.offshoot/token</code>). It is kept in this tab only.
        </p>
        <Field label="API token">
          <input name="token" type="password" required autocomplete="off" spellcheck={false} autofocus />
        </Field>
        {error && (
          <div class="sign-in-error">
            <p>
              <strong>{error.code === 'UNAUTHORIZED' ? 'The daemon refused this token.' : 'Could not sign in.'}</strong>
            </p>
            <ErrorNotice error={error} />
          </div>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
