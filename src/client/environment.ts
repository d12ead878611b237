// Finding the daemon from the environment (Node only): OFFSHOOT_URL and
// OFFSHOOT_TOKEN, else the daemon's home folder (daemon.json + token), as the
// CLI and the tests do.
import { readFileSync } from 'node:fs';
import { OffshootError, defaultHome, homePaths } from '../common/index.ts';
import type { DaemonFile } from '../common/index.ts';
import { OffshootClient } from './client.ts';

export class NoDaemonConfiguredError extends OffshootError {
  constructor(home: string) {
    super('DAEMON_NOT_FOUND', `no running daemon found for OFFSHOOT_HOME=${home} (no daemon.json); start one with \`offshoot serve\` or set OFFSHOOT_URL and OFFSHOOT_TOKEN`, { home }, 503);
  }
}

/** A client from OFFSHOOT_URL/OFFSHOOT_TOKEN, else from the daemon's home folder. */
export function clientFromEnvironment(env: NodeJS.ProcessEnv = process.env): OffshootClient {
  const home = defaultHome(env);
  const paths = homePaths(home);
  let url = env.OFFSHOOT_URL;
  let token = env.OFFSHOOT_TOKEN;
  if (!url) {
    try {
      url = (JSON.parse(readFileSync(paths.daemonFile, 'utf8')) as DaemonFile).url;
    } catch {
      throw new NoDaemonConfiguredError(home);
    }
  }
  if (!token) {
    try {
      token = readFileSync(paths.token, 'utf8').trim();
    } catch {
      throw new OffshootError('TOKEN_NOT_FOUND', `no API token: set OFFSHOOT_TOKEN or make ${paths.token} readable`, { path: paths.token }, 401);
    }
  }
  return new OffshootClient({ url, token });
}
