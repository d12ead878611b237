// Test harness for end-to-end tests: a throw-away OFFSHOOT_HOME and memory
// directory, the real CLI (bin/offshoot) run as a subprocess, the daemon run
// either in-process or as a detached subprocess, and a check that nothing of
// this home (QEMU processes, memory files) is left behind.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { RunningDaemon } from '../src/api/index.ts';
import { clientFromEnvironment } from '../src/client/index.ts';
import type { OffshootClient } from '../src/client/index.ts';
import { isProcessAlive } from '../src/common/index.ts';
import { findOffshootQemus, killAndWait } from '../src/qemu/index.ts';

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
  /** Kills anything left, stops the daemon, removes the folders. */
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
    cleanup: async () => {
      const daemonFile = join(home, 'daemon.json');
      if (existsSync(daemonFile)) {
        try {
          const { pid } = JSON.parse(readFileSync(daemonFile, 'utf8')) as { pid: number };
          if (pid !== process.pid) await killAndWait(pid, { graceMs: 5_000 });
        } catch {
          // already gone
        }
      }
      for (const q of qemus()) await killAndWait(q.pid, { graceMs: 0 });
      rmSync(home, { recursive: true, force: true });
      rmSync(memoryDir, { recursive: true, force: true });
    },
  };
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

/** Ends an in-process daemon of a test: kills every VM it still runs, closes it, removes the home. */
export async function closeTestDaemon(daemon: RunningDaemon, t: TestHome): Promise<void> {
  for (const vm of await daemon.engine.list()) {
    if (vm.state !== 'stopped' && vm.state !== 'created' && vm.state !== 'failed') await daemon.engine.kill(vm.id).catch(() => undefined);
  }
  await daemon.close();
  await t.cleanup();
}

/**
 * The host path of a file reference on a test home's own host (what the agent resolves it to): `home:`
 * under the home, `ds.<id>:` under the datastore folder the agent registered (its datastores.json).
 */
export function hostPathOf(home: string, locator: string): string {
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
  throw new Error(`cannot resolve ${locator} in a test`);
}

/** The RAM file a running VM's QEMU maps: its own file, or the template it derives from. */
export function ramFileOf(memoryDir: string, vm: { id: string; runtime: { memory: { mode: 'owned' | 'derived'; templateId: string | null } } | null }): string {
  const memory = vm.runtime?.memory;
  return memory?.mode === 'derived' ? join(memoryDir, 'templates', `${memory.templateId}.ram`) : join(memoryDir, `${vm.id}.ram`);
}
