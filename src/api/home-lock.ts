// One daemon per home: an exclusive lock file (created with O_EXCL, holding the
// daemon's pid) taken before recovery and released at shutdown. A lock whose
// process is gone (or is not a daemon: a reused pid) is stale and taken over.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OffshootError, isDaemonProcess } from '../common/index.ts';

export class DaemonAlreadyRunningError extends OffshootError {
  constructor(home: string, pid: number) {
    super('DAEMON_ALREADY_RUNNING', `another daemon (pid ${pid}) already serves ${home}`, { home, pid }, 409);
  }
}

export async function acquireHomeLock(home: string): Promise<() => Promise<void>> {
  const path = join(home, 'daemon.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return async () => {
        const holder = Number((await readFile(path, 'utf8').catch(() => '')).trim());
        if (holder === process.pid) await rm(path, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (holder && holder !== process.pid && isDaemonProcess(holder)) throw new DaemonAlreadyRunningError(home, holder);
      await rm(path, { force: true });
    }
  }
  throw new OffshootError('DAEMON_LOCK_FAILED', `cannot take the daemon lock in ${home}`, { home }, 500);
}
