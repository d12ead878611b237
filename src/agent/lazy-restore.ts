// Lazy restore of a checkpoint: the VM runs before its memory has been read
// from the file; a page the guest touches is loaded on demand with its whole
// 1 MiB storage block, and the rest streams in the background until the
// checkpoint is no longer needed.
//
// Mechanism. Stock QEMU 7.2 has exactly one way to let a guest run while
// another process supplies its memory on page faults: postcopy live
// migration. The destination QEMU registers its RAM with userfaultfd; a vCPU
// (or device code) touching a missing page blocks, QEMU's fault thread sends
// a page request over the migration return path, and its listen thread
// installs pages (UFFDIO_COPY) as they arrive on the migration stream.
// Offshoot plays the migration *source* itself, from the checkpoint file:
//
//   1. the new VM's QEMU starts with `-incoming defer`, its RAM a
//      memory-backend-file share=on on a new, empty file in the memory
//      directory (QEMU discards whatever a RAM file holds when postcopy is
//      advised), capability postcopy-ram on, x-ignore-shared off;
//   2. `migrate-incoming unix:<vm dir>/mig-<instance>.sock`; Offshoot connects
//      and writes the stream (memory/page-server.ts): header, configuration,
//      OPEN_RETURN_PATH, POSTCOPY_ADVISE, the RAM block list, the small RAM
//      blocks (BIOS, ROMs), a POSTCOPY_RAM_DISCARD (QEMU 7.2 misbehaves
//      without one, see migration-stream.ts) and a package of LISTEN, the
//      device state saved in the checkpoint and RUN. The return path comes
//      back on the same socket, so Node needs no native code;
//   3. QEMU loads the device state, faulting on guest pages that Offshoot
//      sends block by block on request; the VM runs (QEMU starts it at RUN);
//      then Offshoot answers page requests first and streams every other
//      stored block in the background;
//      then RAM END and EOF: QEMU unregisters userfaultfd and the migration is
//      `completed`. Zero pages are never sent (the file stays sparse).
//
// After that, the RAM file is the VM's own, exactly as after an eager restore.
// Until then the VM depends on this process: if the stream stops (a corrupt
// block, the daemon killed), its QEMU would wait for pages forever
// (postcopy-paused), so it is killed and the restore fails. What the caller
// gets back once the VM runs is a handle whose `done` settles when the
// checkpoint is no longer needed, or rejects with why the VM had to go.
//
// Checks before the VM starts: the file's header, table of contents,
// metadata and device state checksums (CheckpointReader.open) and the device
// state's structure. Memory blocks are verified (xxh64) as they are served; a
// corrupt one stops the stream (the VM is killed). Design, protocol bytes and
// measurements: docs/lazy-restore.md.
import { createConnection } from 'node:net';
import type { Socket } from 'node:net';
import { mkdir, rm } from 'node:fs/promises';
import { VmCrashedError, keepAlive, sleep } from '../common/index.ts';
import { CheckpointReader, PostcopyPageServer, parseSavedDeviceState } from '../memory/index.ts';
import type { PageServerStats } from '../memory/index.ts';
import { restoreDisks } from './checkpoint-files.ts';
import type { StagingHost } from './fork-stager.ts';
import { MigrationError, waitForMigration } from './migration.ts';
import type { RunningVm } from './running-vm.ts';
import type { VmRuntime, VmSpec } from './types.ts';

export interface LazyStreamResult extends PageServerStats {
  /** From the VM running to the checkpoint no longer being needed. */
  streamMs: number;
}

export interface LazyRestore {
  runtime: VmRuntime;
  spec: VmSpec;
  /** Settles once every stored page is in the VM's RAM file; rejects if the stream failed (the VM is then beyond saving). */
  done: Promise<LazyStreamResult>;
  /** Stops the stream (the caller then kills the VM). */
  abort(reason: Error): void;
  progress(): { blocksDone: number; blockCount: number };
  /** Milliseconds from the call to the end of each step until the VM ran. */
  timings: Record<'opened' | 'disks' | 'launched' | 'listening' | 'running', number>;
}

const RUNNING_TIMEOUT_MS = 120_000;
const COMPLETE_TIMEOUT_MS = 30_000;

function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    socket.once('connect', () => {
      socket.removeListener('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/**
 * Polls until the VM runs; fails at once if the stream fails or QEMU ends first. QEMU's main thread may be
 * blocked on a page fault while it loads the device state, so no QMP answer is awaited without that race.
 */
async function waitUntilRunning(vm: RunningVm, served: Promise<unknown>): Promise<void> {
  const failed = new Promise<never>((_, reject) => {
    served.catch(reject);
    void vm.exited.then((e) => reject(new VmCrashedError(vm.vmId, 'its lazy restore', e.reason)));
    setTimeout(() => reject(new MigrationError('lazy restore', `the VM did not start within ${RUNNING_TIMEOUT_MS} ms`)), RUNNING_TIMEOUT_MS).unref();
  });
  failed.catch(() => undefined);
  for (;;) {
    const status = await Promise.race([vm.qmp.execute<{ running: boolean; status: string }>('query-status', undefined, { timeoutMs: RUNNING_TIMEOUT_MS }), failed]);
    if (status.running) return;
    await Promise.race([sleep(2), failed]);
  }
}

export async function restoreLazy(host: StagingHost, vmId: string, name: string, checkpointPath: string, spec: VmSpec): Promise<LazyRestore> {
  const t0 = performance.now();
  const timings: LazyRestore['timings'] = { opened: 0, disks: 0, launched: 0, listening: 0, running: 0 };
  const mark = (step: keyof LazyRestore['timings']) => (timings[step] = performance.now() - t0);
  const reader = await CheckpointReader.open(checkpointPath);
  const files = host.layout.vmFiles(vmId);
  let vm: RunningVm | undefined;
  let server: PostcopyPageServer | undefined;
  let socketPath: string | undefined;
  try {
    const saved = parseSavedDeviceState(reader.deviceState, checkpointPath);
    mark('opened');
    await mkdir(files.dir, { recursive: true });
    await mkdir(host.layout.memoryDir, { recursive: true });
    const restored: VmSpec = { ...spec, disks: await restoreDisks(files.dir, spec) };
    await rm(files.memoryFile, { force: true });
    mark('disks');
    const launched = await host.launch(vmId, name, restored, { memory: { mode: 'owned', file: files.memoryFile, templateId: null }, incoming: true, userfaultfd: true });
    vm = launched.vm;
    mark('launched');
    socketPath = host.layout.vmFiles(vmId, vm.instance).migrationSocket;
    await rm(socketPath, { force: true });
    await vm.qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'x-ignore-shared', state: false },
        { capability: 'postcopy-ram', state: true },
      ],
    });
    await vm.qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` });
    const socket = await connect(socketPath);
    mark('listening');
    const pageServer = new PostcopyPageServer(socket, reader, saved);
    server = pageServer;
    const served = pageServer.serve();
    await waitUntilRunning(vm, served);
    mark('running');
    const tRunning = performance.now();
    pageServer.vmRunning();
    const running = vm;
    // The QEMU's end is watched, not timed out: a VM that dies mid-stream fails the restore at once (VM_CRASHED).
    let crash: VmCrashedError | undefined;
    const crashed = running.exited.then((e) => {
      crash = new VmCrashedError(vmId, 'its lazy restore (its memory was still streaming in)', e.reason);
      throw crash;
    });
    crashed.catch(() => undefined);
    const done = (async (): Promise<LazyStreamResult> => {
      try {
        const stats = await Promise.race([served, crashed]);
        await Promise.race([waitForMigration(running.qmp, 'lazy restore', COMPLETE_TIMEOUT_MS), crashed]);
        return { ...stats, streamMs: performance.now() - tRunning };
      } catch (err) {
        // A dead QEMU usually shows first as a broken stream (EPIPE): give its exit a moment to be seen.
        if (!crash) await Promise.race([crashed.catch(() => undefined), sleep(1_000)]);
        throw crash ?? err;
      } finally {
        socket.destroy();
        await reader.close().catch(() => undefined);
        await rm(socketPath as string, { force: true });
      }
    })();
    void done.catch(() => undefined);
    host.track(running);
    return {
      runtime: launched.runtime,
      spec: restored,
      done,
      abort: (reason) => pageServer.fail(reason),
      timings,
      progress: () => ({ blocksDone: pageServer.stats.faultBlocks + pageServer.stats.backgroundBlocks, blockCount: reader.blockCount }),
    };
  } catch (err) {
    server?.fail(err as Error);
    if (vm) {
      await host.discard(vm);
      await keepAlive(vm.exited);
    }
    await reader.close().catch(() => undefined);
    if (socketPath) await rm(socketPath, { force: true });
    await rm(files.dir, { recursive: true, force: true });
    await rm(files.memoryFile, { force: true });
    throw err;
  }
}
