// Test harness for end-to-end tests: a throw-away OFFSHOOT_HOME and memory
// directory, the real CLI (bin/offshoot) run as a subprocess, the daemon run
// either in-process or as a detached subprocess, and a check at the end of
// every test file that nothing of this home is left behind or open to other
// users: cleanup() (and closeTestDaemon) read the home's records from its
// daemon and fail the test on any broken invariant (tests/invariants.ts: an
// orphan QEMU, a leaked memory, VM, base, work or checkpoint file, a record
// naming a missing file, a world-readable file), then kill what is left.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { RunningDaemon } from '../src/api/index.ts';
import { clientFromEnvironment } from '../src/client/index.ts';
import type { OffshootClient } from '../src/client/index.ts';
import { isProcessAlive } from '../src/common/index.ts';
import { allowedRootId } from '../src/agent/index.ts';
import { findOffshootQemus, killAndWait } from '../src/qemu/index.ts';
import { homeProblems, privacyProblems, snapshotHome } from './invariants.ts';
import type { InvariantOptions } from './invariants.ts';

export const REPO = resolve(import.meta.dirname, '..');
export const CLI = join(REPO, 'bin', 'offshoot');

export interface TestHome {
  home: string;
  memoryDir: string;
  env: NodeJS.ProcessEnv;
  client(): OffshootClient;
  cli(args: string[], options?: { input?: string }): Promise<CliResult>;
  /** QEMU processes started from this home that are still running. */
  qemus(): Array<{ pid: number; vmId: string }>;
  /** Broken invariants of the home as its daemon sees it now (see tests/invariants.ts); [] when no daemon answers. */
  problems(options?: Partial<InvariantOptions>): Promise<string[]>;
  /** Checks the invariants, kills anything left, stops the daemon, removes the folders; throws on any problem found. */
  cleanup(): Promise<void>;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function makeTestHome(): TestHome {
  const home = mkdtempSync('/tmp/osh-');
  const memoryDir = mkdtempSync('/dev/shm/osh-test-');
  const { OFFSHOOT_URL: _url, OFFSHOOT_TOKEN: _token, ...inherited } = process.env;
  const env: NodeJS.ProcessEnv = { ...inherited, OFFSHOOT_HOME: home, OFFSHOOT_MEMORY_DIR: memoryDir };
  const qemus = () =>
    findOffshootQemus().filter((q) => {
      try {
        return readFileSync(`/proc/${q.pid}/cmdline`, 'utf8').includes(`${home}/`);
      } catch {
        return false;
      }
    });
  return {
    home,
    memoryDir,
    env,
    client: () => clientFromEnvironment(env),
    cli: (args, options = {}) =>
      new Promise((resolvePromise) => {
        const child = execFile(CLI, args, { env, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
          const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
          resolvePromise({ code, stdout, stderr });
        });
        if (options.input !== undefined) child.stdin?.end(options.input);
        else child.stdin?.end();
      }),
    qemus,
    problems: (options = {}) => currentProblems({ home, memoryDir, ...options }, env),
    cleanup: async () => {
      const found: string[] = [];
      let live = new Set<number>();
      const daemonFile = join(home, 'daemon.json');
      if (existsSync(daemonFile)) {
        try {
          const { pid } = JSON.parse(readFileSync(daemonFile, 'utf8')) as { pid: number };
          const snapshot = await snapshotHome(clientFromEnvironment(env)).catch(() => undefined);
          if (snapshot) {
            found.push(...homeProblems(snapshot, { home, memoryDir }));
            live = new Set(snapshot.vms.map((v) => v.runtime?.pid).filter((p): p is number => p !== undefined));
          }
          if (pid !== process.pid) await killAndWait(pid, { graceMs: 5_000 });
        } catch {
          // already gone
        }
      }
      // VMs keep running when their daemon stops; anything else of this home is a leak.
      for (const q of qemus()) {
        if (!live.has(q.pid) && !found.some((p) => p.includes(`pid ${q.pid}`))) found.push(`QEMU pid ${q.pid} (VM id ${q.vmId}) is left running`);
        await killAndWait(q.pid, { graceMs: 0 });
      }
      found.push(...privacyProblems(home));
      rmSync(home, { recursive: true, force: true });
      rmSync(memoryDir, { recursive: true, force: true });
      if (found.length > 0) throw new Error(`the test left its home inconsistent:\n- ${found.join('\n- ')}`);
    },
  };
}

async function currentProblems(options: InvariantOptions, env: NodeJS.ProcessEnv): Promise<string[]> {
  const snapshot = await snapshotHome(clientFromEnvironment(env)).catch(() => undefined);
  return snapshot ? homeProblems(snapshot, options) : [];
}

/** Starts `offshoot serve --detach` for the home and waits until it answers. */
export async function startDetachedDaemon(t: TestHome): Promise<{ pid: number; url: string }> {
  const result = await t.cli(['serve', '--detach', '--json']);
  if (result.code !== 0) {
    const tail = (file: string) => (existsSync(join(t.home, file)) ? readFileSync(join(t.home, file), 'utf8').split('\n').slice(-15).join('\n') : '');
    throw new Error(`serve --detach failed: ${result.stderr}\n--- serve.out:\n${tail('serve.out')}\n--- daemon.log:\n${tail('daemon.log')}`);
  }
  return JSON.parse(result.stdout) as { pid: number; url: string };
}

/** Guest RAM files of the home: VMs' own files and memory templates. */
export function memoryFiles(t: TestHome): string[] {
  const list = (dir: string) => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.ram')) : []);
  return [...list(t.memoryDir), ...list(join(t.memoryDir, 'templates')).map((f) => `templates/${f}`)];
}

export function guestKernelRelease(): string {
  const manifest = JSON.parse(readFileSync(join(REPO, '.cache', 'guest', 'current', 'manifest.json'), 'utf8')) as { kernelRelease: string };
  return manifest.kernelRelease;
}

/** Polls until `check` returns true (or throws after `ms`). */
export async function eventually(check: () => Promise<boolean> | boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}


/** Waits until the process has ended (a zombie counts as ended). */
export async function waitForProcessExit(pid: number, ms = 15_000): Promise<void> {
  await eventually(() => !isProcessAlive(pid), ms, `process ${pid} to end`);
}

/**
 * Ends an in-process daemon of a test: kills every VM it still runs, checks the home's invariants, closes
 * the daemon, removes the home (cleanup checks again what it can without a daemon); throws on a problem.
 */
export async function closeTestDaemon(daemon: RunningDaemon, t: TestHome, options: Partial<InvariantOptions> = {}): Promise<void> {
  for (const vm of await daemon.engine.list()) {
    if (vm.state !== 'stopped' && vm.state !== 'created' && vm.state !== 'failed') await daemon.engine.kill(vm.id).catch(() => undefined);
  }
  await daemon.engine.collectGarbage().catch(() => undefined);
  const problems = await t.problems(options);
  await daemon.close();
  await t.cleanup().catch((err: Error) => problems.push(err.message));
  if (problems.length > 0) throw new Error(`the test left its home inconsistent:\n- ${problems.join('\n- ')}`);
}

/**
 * The host path of a file reference on a test home's own host (what the agent resolves it to): `home:`
 * under the home, `ds.<id>:` under the datastore folder the agent registered (its datastores.json),
 * `ext.<id>:` under the allowed folder of that id.
 */
export function hostPathOf(home: string, locator: string, allowedRoots: string[] = []): string {
  const colon = locator.indexOf(':');
  const scope = locator.slice(0, colon);
  const rel = locator.slice(colon + 1);
  if (scope === 'home') return join(home, rel);
  if (scope.startsWith('ds.')) {
    const registry = JSON.parse(readFileSync(join(home, 'datastores.json'), 'utf8')) as Array<{ id: string; path: string }>;
    const ds = registry.find((d) => d.id === scope.slice(3));
    if (!ds) throw new Error(`no datastore ${scope.slice(3)} in ${home}/datastores.json`);
    return join(ds.path, rel);
  }
  if (scope.startsWith('ext.')) {
    const root = allowedRoots.find((r) => allowedRootId(r) === scope.slice(4));
    if (root) return join(root, rel);
  }
  throw new Error(`cannot resolve ${locator} in a test`);
}

/** The RAM file a running VM's QEMU maps: its own file, or the template it derives from. */
export function ramFileOf(memoryDir: string, vm: { id: string; runtime: { memory: { mode: 'owned' | 'derived'; templateId: string | null } } | null }): string {
  const memory = vm.runtime?.memory;
  return memory?.mode === 'derived' ? join(memoryDir, 'templates', `${memory.templateId}.ram`) : join(memoryDir, `${vm.id}.ram`);
}
