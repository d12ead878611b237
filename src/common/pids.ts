// Whether a process is alive. A zombie (exited, not yet reaped by its parent;
// common for a daemon whose parent was init in a container) counts as dead.
import { readFileSync } from 'node:fs';

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** The command line of a process (arguments joined by spaces), or '' if it is gone. */
export function processCommandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

/** Whether `pid` is a running Offshoot daemon (guards against signalling a reused pid). */
export function isDaemonProcess(pid: number): boolean {
  return isProcessAlive(pid) && /\bserve\b/.test(processCommandLine(pid));
}
