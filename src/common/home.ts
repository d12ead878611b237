// The daemon's home folder (OFFSHOOT_HOME, default ~/.offshoot): inventory,
// token, the address file the CLI reads, logs and the VMs' files.
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export interface HomePaths {
  home: string;
  inventory: string;
  token: string;
  daemonFile: string;
  log: string;
}

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.OFFSHOOT_HOME ?? join(homedir(), '.offshoot'));
}

export function homePaths(home = defaultHome()): HomePaths {
  return { home, inventory: join(home, 'inventory.sqlite'), token: join(home, 'token'), daemonFile: join(home, 'daemon.json'), log: join(home, 'daemon.log') };
}

/** What a running daemon writes so that the CLI needs nothing else. */
export interface DaemonFile {
  url: string;
  pid: number;
  startedAt: string;
}
