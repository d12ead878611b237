// Signing in: the API token is checked with an authenticated call and kept in
// sessionStorage only (gone when the tab closes; never in localStorage or a
// cookie, so no other tab or request carries it).
import { ConsoleApi } from './api.ts';

const KEY = 'offshoot.token';

export function savedToken(): string | null {
  return sessionStorage.getItem(KEY);
}

export function forgetToken(): void {
  sessionStorage.removeItem(KEY);
}

/** Resolves with an API bound to the token once the daemon accepts it; throws the daemon's error (UNAUTHORIZED) otherwise. */
export async function signIn(token: string): Promise<ConsoleApi> {
  const api = new ConsoleApi(token.trim());
  await api.client.host();
  sessionStorage.setItem(KEY, token.trim());
  return api;
}
