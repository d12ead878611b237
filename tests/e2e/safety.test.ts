// No host file reachable by accident (defects 3, 4, 6, 8 and 9 of the
// hardening issue), through the REST API of an in-process daemon started with
// one --allow-images folder:
// - disks, boot disks and kernels outside the home, the datastores and the
//   allowed folders are refused (PATH_NOT_ALLOWED), symlinks resolved;
// - FIFOs, folders and devices given as checkpoints, kernels or import
//   sources are refused at once, and the API keeps answering;
// - datastores go nowhere unsafe; huge disks and a memory read racing a kill
//   are 4xx; nothing of a refused request is left;
// - `checkpoint --out` never replaces or deletes a file that is not its own,
//   and two checkpoints with one --out cannot delete each other's file.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import { createImage } from '../../src/qemu/index.ts';
import type { TaskRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, hostPathOf, makeTestHome } from '../harness.ts';

describe('no host file reachable by accident', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let allowed: string;
  let scratch: string;
  let gate: { reached: () => void; release: Promise<void> } | undefined;

  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${daemon.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${daemon.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text.startsWith('{') || text.startsWith('[') ? JSON.parse(text) : text };
  };
  const vmDirs = () => (existsSync(join(t.home, 'vms')) ? readdirSync(join(t.home, 'vms')) : []);
  const wait = async (task: TaskRecord | undefined) => daemon.engine.tasks.wait(task?.id as string);
  const holdNextCheckpointWrite = () => {
    let reached!: () => void;
    let release!: () => void;
    const held = { reached: new Promise<void>((r) => (reached = r)), release: () => release() };
    gate = { reached, release: new Promise<void>((r) => (release = r)) };
    return held;
  };

  beforeAll(async () => {
    t = makeTestHome();
    allowed = mkdtempSync('/tmp/osh-allow-');
    scratch = mkdtempSync('/tmp/osh-outside-');
    daemon = await startDaemon({
      home: t.home,
      memoryDir: t.memoryDir,
      allowImages: [allowed],
      // A gate at the fault point just before a checkpoint file is written; it holds the first checkpoint only.
      faults: async (point) => {
        if (point !== 'checkpoint.writing' || !gate) return;
        const g = gate;
        gate = undefined;
        g.reached();
        await g.release;
      },
    });
  });
  afterAll(async () => {
    await closeTestDaemon(daemon, t);
    rmSync(allowed, { recursive: true, force: true });
    rmSync(scratch, { recursive: true, force: true });
  });

  it('attaches only files inside the home, the datastores and the allowed folders', async () => {
    await createImage({ path: join(allowed, 'ok.raw'), format: 'raw', sizeBytes: 1 << 20 });
    await createImage({ path: join(scratch, 'outside.raw'), format: 'raw', sizeBytes: 1 << 20 });
    symlinkSync('/etc/passwd', join(allowed, 'sneaky.raw'));
    const refused: unknown[] = [
      { name: 'h1', disks: [{ path: '/etc/shadow' }] },
      { name: 'h2', disks: [{ path: '/etc/shadow', readOnly: true }] },
      { name: 'h3', bootDisk: '/etc/shadow' },
      { name: 'h4', kernel: { path: '/etc/shadow' } },
      { name: 'h5', kernel: { path: join(allowed, 'ok.raw'), initrd: '/etc/shadow' } },
      { name: 'h6', disks: [{ path: join(scratch, 'outside.raw') }] },
      { name: 'h7', disks: [{ path: join(allowed, 'sneaky.raw'), readOnly: true }] },
      { name: 'h8', disks: [{ path: `${allowed}/../${scratch.slice(5)}/outside.raw` }] },
    ];
    for (const body of refused) {
      const r = await call('POST', '/vms', body);
      expect(r, JSON.stringify(body)).toMatchObject({ status: 403, body: { code: 'PATH_NOT_ALLOWED' } });
      expect(r.body.details.allowedRoots).toContain(allowed);
    }
    expect(vmDirs()).toEqual([]);
    const ok = await call('POST', '/vms', { name: 'withdisk', disks: [{ path: join(allowed, 'ok.raw'), readOnly: true }] });
    expect(ok.status, JSON.stringify(ok.body)).toBe(201);
    expect((await call('DELETE', '/vms/withdisk')).status).toBe(200);
    expect(vmDirs()).toEqual([]);
  });

  it('refuses FIFOs, folders and devices at once, and keeps answering', async () => {
    const fifo = join(allowed, 'trap.ckpt');
    execFileSync('mkfifo', [fifo]);
    mkdirSync(join(allowed, 'folder.ckpt'));
    // Four at once used to stall every thread of the daemon's file I/O pool for good.
    const restores = await Promise.all([1, 2, 3, 4].map(() => call('POST', '/restore', { checkpoint: fifo })));
    for (const r of restores) expect(r).toMatchObject({ status: 400, body: { code: 'NOT_A_REGULAR_FILE' } });
    expect((await call('GET', `/checkpoints/${encodeURIComponent(fifo)}`)).body.code).toBe('NOT_A_REGULAR_FILE');
    expect((await call('POST', '/restore', { checkpoint: join(allowed, 'folder.ckpt') })).body.code).toBe('NOT_A_REGULAR_FILE');
    expect((await call('POST', '/vms', { name: 'fifokernel', kernel: { path: fifo } })).body.code).toBe('NOT_A_REGULAR_FILE');
    expect((await call('POST', '/datastores', { name: 'dsf', path: join(t.home, '..', `${t.home.split('/').pop()}-dsf`) })).status).toBe(201);
    for (const source of [fifo, '/dev/zero', join(allowed, 'folder.ckpt')]) {
      const r = await call('POST', '/disks/import', { datastore: 'dsf', name: 'x', source });
      expect(r, source).toMatchObject({ status: 422, body: { code: 'IMPORT_REFUSED' } });
    }
    expect((await call('GET', '/disks')).body).toEqual([]);
    expect((await call('DELETE', '/datastores/dsf')).status).toBe(200);
    rmSync(join(t.home, '..', `${t.home.split('/').pop()}-dsf`), { recursive: true, force: true });
    expect((await call('GET', '/health')).status).toBe(200);
    expect(vmDirs()).toEqual([]);
  });

  it('places datastores only in safe folders and leaves nothing of a refused one', async () => {
    const ds1 = join(scratch, 'ds1');
    expect((await call('POST', '/datastores', { name: 'ds1', path: ds1 })).status).toBe(201);
    writeFileSync(join(scratch, 'plain-file'), 'x');
    const refused = ['/', '/etc', '/etc/passwd', '/dev/zero', '/etc/passwd/sub', `${scratch}/a\u0000b`, t.home, join(t.home, 'vms'), join(t.home, 'bases', 'ds'), join(ds1, 'inner'), scratch, join(scratch, 'plain-file', 'sub'), t.memoryDir];
    for (const path of refused) {
      const r = await call('POST', '/datastores', { name: 'bad', path });
      expect(r.status, path).toBe(400);
      expect(['DATASTORE_PATH_INVALID', 'INVALID_INPUT'], path).toContain(r.body.code);
    }
    expect(existsSync(join(t.home, 'bases', 'ds'))).toBe(false);
    expect(existsSync(join(ds1, 'inner'))).toBe(false);
    // Besides the host's own default datastore (HOST-local), made when the daemon first saw its host.
    expect((await call('GET', '/datastores')).body.map((d: { name: string }) => d.name).filter((n: string) => !n.endsWith('-local'))).toEqual(['ds1']);
    expect((await call('POST', '/datastores', { name: 'ds1', path: join(scratch, 'again') })).body.code).toBe('ALREADY_EXISTS');
    expect(existsSync(join(scratch, 'again'))).toBe(false);
  });

  it('answers 4xx for impossible disks and leaves no file or record', async () => {
    const huge = await call('POST', '/disks', { datastore: 'ds1', name: 'huge', size: 9007199254740991 });
    expect(huge).toMatchObject({ status: 400, body: { code: 'INVALID_INPUT' } });
    // ext4 (this test's /tmp) holds files of at most 16 TiB: qemu-img fails, and its empty file must go.
    const big = await call('POST', '/disks', { datastore: 'ds1', name: 'big', size: '60T', format: 'raw' });
    expect(big.status, JSON.stringify(big.body)).toBeLessThan(500);
    if (big.status === 201) expect((await call('DELETE', '/disks/ds1/big')).status).toBe(200);
    else expect(big.body.code).toBe('DISK_CREATE_FAILED');
    expect(readdirSync(join(scratch, 'ds1', 'disks'))).toEqual([]);
    expect((await call('GET', '/disks')).body).toEqual([]);
  });

  describe('with a running VM', () => {
    beforeAll(async () => {
      const created = await call('POST', '/vms?wait=true', { name: 'src', start: true });
      expect(created.body.task?.state, JSON.stringify(created.body.task?.error)).toBe('succeeded');
    });

    it('never writes a checkpoint over an existing file, nor outside the allowed folders', async () => {
      const precious = join(allowed, 'precious.ckpt');
      writeFileSync(precious, 'precious');
      mkdirSync(join(allowed, 'sub'));
      const disk = await call('POST', '/disks', { datastore: 'ds1', name: 'd1', size: '1M' });
      expect(disk.status).toBe(201);
      const cases: Array<[string, number, string]> = [
        [precious, 409, 'ALREADY_EXISTS'],
        [hostPathOf(t.home, disk.body.file), 409, 'ALREADY_EXISTS'],
        [join(allowed, 'sub'), 409, 'ALREADY_EXISTS'],
        [join(scratch, 'x.ckpt'), 403, 'PATH_NOT_ALLOWED'],
        ['/etc/x.ckpt', 403, 'PATH_NOT_ALLOWED'],
        [join(allowed, 'no-such-folder', 'x.ckpt'), 400, 'INVALID_INPUT'],
      ];
      for (const [out, status, code] of cases) {
        const r = await call('POST', '/vms/src/checkpoint', { name: 'ck-bad', out });
        expect(r, out).toMatchObject({ status, body: { code } });
      }
      expect(readFileSync(precious, 'utf8')).toBe('precious');
      expect((await call('POST', `/disks/${disk.body.id}/verify`, {})).status).toBe(200);
      expect((await call('GET', '/vms/src')).body.state).toBe('running');
      expect((await call('GET', '/checkpoints')).body).toEqual([]);
    });

    it('lets only one of two checkpoints with one --out have the file', async () => {
      const out = join(allowed, 'shared.ckpt');
      const held = holdNextCheckpointWrite();
      const first = await call('POST', '/vms/src/checkpoint', { name: 'ck-a', out });
      expect(first.status).toBe(202);
      // The first has frozen the VM, which runs on, and waits to write: the second passes the same checks.
      await held.reached;
      const second = await call('POST', '/vms/src/checkpoint', { name: 'ck-b', out });
      expect(second.status, JSON.stringify(second.body)).toBe(202);
      const secondDone = await wait(second.body.task);
      held.release();
      const firstDone = await wait(first.body.task);
      expect(secondDone.state, JSON.stringify(secondDone.error)).toBe('succeeded');
      expect(firstDone.state).toBe('failed');
      expect(firstDone.error?.code).toBe('ALREADY_EXISTS');
      const winner = (await call('GET', '/checkpoints')).body as Array<{ name: string; path: string }>;
      expect(winner.map((c) => c.path)).toEqual([out]);
      const third = await call('POST', '/vms/src/checkpoint', { name: 'ck-c', out });
      expect(third).toMatchObject({ status: 409, body: { code: 'ALREADY_EXISTS' } });
      expect((await call('GET', `/checkpoints/${encodeURIComponent(out)}`)).body.name).toBe(winner[0]?.name);
      expect(readdirSync(allowed).filter((f) => f.startsWith('.offshoot-ckpt-'))).toEqual([]);
    });

    it('does not delete a file that appeared at --out while the checkpoint was written', async () => {
      const out = join(allowed, 'raced.ckpt');
      const held = holdNextCheckpointWrite();
      const started = await call('POST', '/vms/src/checkpoint', { name: 'ck-raced', out });
      expect(started.status).toBe(202);
      await held.reached;
      writeFileSync(out, 'someone else');
      held.release();
      const done = await wait(started.body.task);
      expect(done.state).toBe('failed');
      expect(done.error?.code).toBe('ALREADY_EXISTS');
      expect(readFileSync(out, 'utf8')).toBe('someone else');
      expect(readdirSync(allowed).filter((f) => f.startsWith('.offshoot-ckpt-'))).toEqual([]);
      expect((await call('GET', '/checkpoints/ck-raced')).status).toBe(404);
      expect((await call('GET', '/vms/src')).body.state).toBe('running');
    });

    it('deletes a checkpoint record without deleting a file that is no longer that checkpoint', async () => {
      const out = join(allowed, 'replaced.ckpt');
      const made = await call('POST', '/vms/src/checkpoint?wait=true', { name: 'ck-replaced', out });
      expect(made.body.task.state).toBe('succeeded');
      rmSync(out);
      writeFileSync(out, 'a new file by someone else');
      expect((await call('DELETE', '/checkpoints/ck-replaced')).status).toBe(200);
      expect(readFileSync(out, 'utf8')).toBe('a new file by someone else');
    });

    it('answers 4xx when reading the memory of a VM being killed', async () => {
      const reads = Array.from({ length: 20 }, (_, i) => new Promise((r) => setTimeout(r, i * 5)).then(() => call('GET', '/vms/src/memory')));
      const kill = call('POST', '/vms/src/kill');
      for (const r of await Promise.all(reads)) expect(r.status, JSON.stringify(r.body)).toBeLessThan(500);
      expect((await kill).status).toBe(200);
      expect((await call('GET', '/vms/src/memory')).status).toBe(409);
    });
  });
});
