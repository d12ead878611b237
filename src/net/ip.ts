// Runs iproute2 (`ip`), in the current network namespace or, with
// `namespace`, in a named one (`ip -n NAME`, the namespaces `ip netns` keeps
// under /run/netns). The agent runs inside its host's namespace and passes no
// namespace; the lab and tests name one. `ipJson` parses `ip -j` output.
import { execFile } from 'node:child_process';
import { IpCommandError } from './errors.ts';

export interface IpOptions {
  /** A named network namespace (`ip -n`); default: the caller's own. */
  namespace?: string;
}

/** Runs `ip [-n NS] ARGS...` and resolves with its stdout; IpCommandError on failure. */
export function runIp(args: readonly string[], options: IpOptions = {}): Promise<string> {
  const argv = [...(options.namespace ? ['-n', options.namespace] : []), ...args];
  return new Promise((resolve, reject) => {
    execFile('ip', argv, { maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new IpCommandError(argv, String(stderr), typeof error.code === 'number' ? error.code : null, error));
      else resolve(String(stdout));
    });
  });
}

/**
 * Runs several ip commands in one process (`ip -batch -`, one command a line,
 * `flags` such as -j and -d for all of them); ip stops at the first that
 * fails, and its stderr then ends with "Command failed -:LINE". One process
 * instead of one per command is most of the cost of making a path.
 */
export function runIpBatch(commands: ReadonlyArray<readonly string[]>, options: IpOptions = {}, flags: readonly string[] = []): Promise<string> {
  const argv = [...(options.namespace ? ['-n', options.namespace] : []), ...flags, '-batch', '-'];
  const quote = (arg: string) => (/^[A-Za-z0-9_.:/=@+-]+$/.test(arg) ? arg : `"${arg.replace(/(["\\])/g, '\\$1')}"`);
  const input = commands.map((c) => c.map(quote).join(' ')).join('\n');
  return new Promise((resolve, reject) => {
    const child = execFile('ip', argv, { maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new IpCommandError([...argv, ...commands.map((c) => c.join(' '))], String(stderr), typeof error.code === 'number' ? error.code : null, error));
      else resolve(String(stdout));
    });
    child.stdin?.end(`${input}\n`);
  });
}

/** The 1-based line of a batch that failed, from ip's "Command failed -:LINE"; undefined if not a batch failure. */
export function failedBatchLine(err: unknown): number | undefined {
  const m = err instanceof IpCommandError ? /Command failed -:(\d+)/.exec(err.stderr) : null;
  return m ? Number(m[1]) : undefined;
}

/** Runs `ip -j [-n NS] ARGS...` and parses the JSON it prints (an empty output is []). */
export async function ipJson<T>(args: readonly string[], options: IpOptions = {}): Promise<T> {
  const out = await runIp(['-j', ...args], options);
  return (out.trim() === '' ? [] : JSON.parse(out)) as T;
}

/** Whether a failed ip command said that its object does not exist (idempotent deletes). */
export function isNotFound(err: unknown): boolean {
  return err instanceof IpCommandError && /Cannot find device|does not exist|No such device|Cannot find|not found/i.test(err.stderr);
}

/** Whether a failed ip command said that its object exists already. */
export function isAlreadyExists(err: unknown): boolean {
  return err instanceof IpCommandError && /File exists|already exists/i.test(err.stderr);
}

/** The names of the network namespaces `ip netns` knows. */
export async function listNamespaces(): Promise<string[]> {
  const list = await ipJson<Array<{ name: string }>>(['netns', 'list']);
  return list.map((n) => n.name);
}

/** The pids of the processes in a named namespace (`ip netns pids`). */
export async function namespacePids(namespace: string): Promise<number[]> {
  try {
    const out = await runIp(['netns', 'pids', namespace]);
    return out.split('\n').filter((l) => /^\d+$/.test(l.trim())).map(Number);
  } catch (err) {
    if (err instanceof IpCommandError && /No such file|Invalid argument|Cannot open/i.test(err.stderr)) return [];
    throw err;
  }
}
