// Templates on several hosts with the real guest (issue 14's test): a control
// plane and two lab hosts (network namespaces running `offshoot agent
// serve`). A VM on lab1 with a tmpfs file of random data and a service (a
// counter ticking in the background) becomes a template placed on lab1 and
// lab2 (`template create --host lab2`: its frozen base copied, its memory
// carried as a checkpoint file, both by copy jobs of purpose `place`, the
// default guest's files used where they are). Pools of 4 on each host; 12 concurrent claims: the 8 ready children
// (4 on each host) and 4 forked on demand once the pools are empty; each
// child has the data, a distinct hostname, MAC and machine-id, its service
// ticking and its customisation's output, none handed out twice. The pools refill. lab2's
// agent killed with SIGKILL during a refill: claims go to lab1 meanwhile;
// restarted, lab2's pool refills. The template deleted with claimed children
// (refused, then --force): they keep running with the data. Each lab host's
// invariants hold at the end (no orphan QEMU, no leaked file, no fabric
// folder or base left by the template, privacy).
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningDaemon } from '../../src/api/index.ts';
import { FabricClient, HostClient, StorageClient } from '../../src/client/index.ts';
import { labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { CarryReport, ClaimResult, TemplateView } from '../../src/vm/index.ts';
import { eventually } from '../harness.ts';
import type { TestHome } from '../harness.ts';
import { homeProblems } from '../invariants.ts';
import type { LabFleet } from '../lab-fleet.ts';
import { startLabFleet } from '../lab-fleet.ts';
import { READ_COUNTER, guestShell } from '../guest-data.ts';

const prefix = `ofh${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.215.${60 + ((randomBytes(1)[0] as number) % 40)}.0/24`;

const SETUP = [
  'set -e',
  'mkdir -p /mnt/ram && mount -t tmpfs -o size=24m tmpfs /mnt/ram',
  'dd if=/dev/urandom of=/mnt/ram/blob bs=1M count=16 2>/dev/null',
  '(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 &',
].join('\n');

/** What a child says of itself, in one exec: its data, names, MAC and whether its service ticks. */
const INSPECT = [
  'echo "md5=$(md5sum /mnt/ram/blob | cut -d" " -f1)"',
  'echo "host=$(hostname)"',
  'echo "mid=$(cat /etc/machine-id)"',
  'for d in /sys/class/net/*; do n=${d##*/}; [ "$n" = lo ] && continue; echo "mac=$(cat $d/address)"; break; done',
  // Ticking within 15 s. The counter is rewritten in place (truncated, then written), so a read can find it
  // empty: in a child just forked on a loaded 2-core TCG host, where each guest syscall translates its code
  // anew, the writer is often preempted between the two. A first read that came back empty used to make the
  // child look stuck (`[ N -gt "" ]` is an error): empty reads are read again, and a stuck child says what it saw.
  `a=$(${READ_COUNTER})`,
  's="stuck first=$a seen="; k=0; while [ $k -lt 30 ]; do k=$((k+1)); sleep 0.5; b=$(cat /tmp/counter); s="$s$b,"; [ -n "$b" ] && [ "$b" != "$a" ] && { s=ticking; break; }; done; echo "svc=$s"',
].join('\n');

describe('templates on two lab hosts: placement, pools per host, claims across hosts', () => {
  let fleet: LabFleet | undefined;
  let t: TestHome;
  let daemon: RunningDaemon;
  let lab: UpResult;
  let labDir: string;
  const { sh } = guestShell(() => daemon);
  let sums: string;
  let srcMachineId: string;
  let template: TemplateView;
  const claimed: ClaimResult[] = [];
  const fabric = () => new FabricClient(t.client());
  const readyOn = async (host: string) => (await fabric().getTemplate('web')).placements.find((p) => p.host === host)?.children.ready ?? -1;
  const inspect = async (vm: string) => Object.fromEntries((await sh(vm, INSPECT)).split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])) as Record<string, string>;

  /** The invariants of one lab host's home, from the records of what lives there (as tests/e2e/fleet-controllers.test.ts). */
  const hostProblems = async (name: string): Promise<string[]> => {
    const client = t.client();
    const host = (await new HostClient(client).list()).find((h) => h.name === name);
    const st = new StorageClient(client);
    const [vms, checkpoints, datastores, disks, pools, jobs, templates] = await Promise.all([client.listVms(), client.listCheckpoints(), st.listDatastores(), st.listDisks(), st.listPools(), st.listJobs(), fabric().listTemplates()]);
    const mine = datastores.filter((d) => d.hosts.some((h) => h.hostId === host?.id));
    const names = new Set(mine.map((d) => d.name));
    const labHost = lab.hosts.find((h) => h.name === name) as UpResult['hosts'][number];
    const onHost = {
      vms: vms.filter((v) => v.hostId === host?.id),
      checkpoints: checkpoints.filter((c) => c.hostId === host?.id),
      datastores: mine,
      disks: disks.filter((d) => names.has(d.datastore)),
      pools: pools.filter((p) => names.has(p.datastore)),
      jobs: jobs.filter((j) => j.hostId === host?.id),
      templates: templates.map((x) => ({ ...x, placements: x.placements.filter((p) => p.hostId === host?.id) })),
      allowedRoots: [],
    };
    return homeProblems(onHost, { home: labHost.home, memoryDir: labHost.memoryDir });
  };

  beforeAll(async () => {
    fleet = await startLabFleet(prefix, subnet, { hostHeartbeatMs: 300, hostLeaseMs: 2_000 });
    ({ t, daemon, lab, labDir } = fleet);
    const { task } = await daemon.engine.create({ name: 'src', memory: '192M', host: 'lab1', start: true });
    expect((await daemon.engine.tasks.wait(task?.id as string)).state).toBe('succeeded');
    await sh('src', SETUP);
    sums = await sh('src', 'md5sum /mnt/ram/blob | cut -d" " -f1');
    srcMachineId = await sh('src', 'cat /etc/machine-id 2>/dev/null || true');
  }, 240_000);

  afterAll(() => fleet?.close(), 180_000);

  it('makes a template on lab1 and carries it to lab2 (template create --host): the frozen base and the memory travel, the guest files do not', async () => {
    const t0 = performance.now();
    const out = await t.cli(['template', 'create', 'web', '--from', 'src', '--host', 'lab2', '--json']);
    expect(out.code, out.stderr).toBe(0);
    template = JSON.parse(out.stdout) as TemplateView;
    const made = (await daemon.engine.tasks.list()).find((x) => x.kind === 'template.create' && x.targetId === template.id);
    const carried = (made?.result as { carried?: CarryReport[] } | undefined)?.carried?.[0];
    process.stderr.write(`template made on lab1 and placed on lab2 in ${(performance.now() - t0).toFixed(0)} ms (placement phases ${JSON.stringify(carried?.phasesMs)}; copied ${JSON.stringify(carried?.copied.map((c) => c.bytes))} bytes, memory file ${carried?.memoryFileBytes} bytes)\n`);
    expect(carried?.copied.map((c) => c.from)).toEqual([template.placements[0]?.spec?.disks[0]?.file]);
    // The files and the memory travelled as copy jobs (purpose place) run by lab2, read from lab1's file server.
    const lab2 = (await new HostClient(t.client()).list()).find((h) => h.name === 'lab2');
    const jobs = (await new StorageClient(t.client()).listJobs()).filter((j) => carried?.copyJobs.includes(j.id));
    expect(jobs.map((j) => [j.purpose.kind, j.hostId, j.state, j.files.length])).toEqual([
      ['place', lab2?.id, 'succeeded', 1],
      ['place', lab2?.id, 'succeeded', 1],
    ]);
    expect(jobs.every((j) => j.files.every((f) => f.sourceHostId === template.placements[0]?.hostId))).toBe(true);
    expect(template.placements.map((p) => [p.host, p.state])).toEqual([
      ['lab1', 'ready'],
      ['lab2', 'ready'],
    ]);
    const [onLab1, onLab2] = template.placements;
    expect(onLab2?.spec?.disks[0]?.file).toMatch(new RegExp(`^home:bases/${template.id.slice(0, 8)}-`));
    expect(onLab2?.spec?.disks[0]?.backing).toEqual(onLab1?.spec?.disks[0]?.backing);
    expect(onLab2?.spec?.boot).toEqual(onLab1?.spec?.boot);
    expect(onLab2?.memoryTemplateId).not.toBe(onLab1?.memoryTemplateId);
    // The checkpoint files that carried the memory are gone from both hosts.
    for (const h of lab.hosts) {
      const folder = join(h.home, 'fabric', template.id);
      expect(existsSync(folder) ? readdirSync(folder).filter((f) => f.endsWith('.ckpt')) : []).toEqual([]);
    }
    expect((await daemon.engine.resolve('src')).state).toBe('running');
    const again = await t.cli(['template', 'place', 'web', '--host', 'lab2']);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('TEMPLATE_PLACEMENT_REFUSED');
  }, 300_000);

  it('keeps a pool of 4 paused children on each host (template scale --wait)', async () => {
    const t0 = performance.now();
    const out = await t.cli(['template', 'scale', 'web', '--ready', '4', '--wait', '--json']);
    expect(out.code, out.stderr).toBe(0);
    process.stderr.write(`pools of 4 on two hosts filled in ${(performance.now() - t0).toFixed(0)} ms\n`);
    const scaled = JSON.parse(out.stdout) as TemplateView;
    expect(scaled.placements.map((p) => [p.host, p.children.ready])).toEqual([
      ['lab1', 4],
      ['lab2', 4],
    ]);
    const pool = (await daemon.engine.list()).filter((v) => v.name.startsWith('web-'));
    expect(pool.map((v) => v.state)).toEqual(Array(8).fill('paused'));
    expect(new Set(pool.map((v) => v.hostId)).size).toBe(2);
  }, 300_000);

  it('hands 12 concurrent claims 12 different children (the 8 ready ones, then 4 forked on demand), each with the data, its own names and MAC, its service and its script output', async () => {
    const t0 = performance.now();
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => fabric().claim('web', { hostname: `claim-${i}`, env: [`SLOT=${i}`], customize: 'echo "custom $SLOT $(hostname)"' })));
    process.stderr.write(`12 concurrent claims in ${(performance.now() - t0).toFixed(0)} ms: ${results.map((r) => `${r.source}@${r.host} ${r.timings.claimMs}`).join(', ')}\n`);
    claimed.push(...results);
    expect(new Set(results.map((r) => r.vm.id)).size).toBe(12);
    const fromPool = results.filter((r) => r.source === 'pool');
    expect(fromPool.filter((r) => r.host === 'lab1')).toHaveLength(4);
    expect(fromPool.filter((r) => r.host === 'lab2')).toHaveLength(4);
    expect(results.filter((r) => r.source === 'on-demand')).toHaveLength(4);
    const seen = await Promise.all(results.map((r) => inspect(r.vm.name)));
    results.forEach((r, i) => {
      expect(r.vm.state).toBe('running');
      expect(r.script?.stdout.trim()).toBe(`custom ${i} claim-${i}`);
      expect(seen[i]?.md5, r.vm.name).toBe(sums);
      expect(seen[i]?.host).toBe(`claim-${i}`);
      expect(seen[i]?.svc, `${r.vm.name} (${r.source} on ${r.host})`).toBe('ticking');
      if (seen[i]?.mac !== undefined) expect(seen[i]?.mac).toBe(r.vm.spec.nics[0]?.mac);
    });
    expect(new Set([srcMachineId, ...seen.map((x) => x.mid)]).size).toBe(13);
    expect(new Set(results.map((r) => r.vm.spec.nics[0]?.mac)).size).toBe(12);
    const macs = seen.map((x) => x.mac).filter(Boolean);
    expect(new Set(macs).size).toBe(macs.length);
    // Each child maps its own host's copy of the template memory.
    for (const r of results) expect(r.vm.runtime?.memory.templateId).toBe(template.placements.find((p) => p.host === r.host)?.memoryTemplateId);
  }, 300_000);

  it('refills both pools', async () => {
    const t0 = performance.now();
    await eventually(async () => (await readyOn('lab1')) === 4 && (await readyOn('lab2')) === 4, 240_000, 'both pools refilled to 4');
    process.stderr.write(`pools refilled ${(performance.now() - t0).toFixed(0)} ms after the claims\n`);
  }, 300_000);

  it("keeps serving claims from lab1 while lab2's agent is dead during a refill, and refills lab2's pool once it is back", async () => {
    const hosts = new HostClient(t.client());
    const lab2 = lab.hosts[1] as UpResult['hosts'][number];
    const two = await Promise.all([fabric().claim('web', { host: 'lab2' }), fabric().claim('web', { host: 'lab2' })]);
    claimed.push(...two);
    expect(two.map((c) => c.source)).toEqual(['pool', 'pool']);
    // The refill of lab2's pool has started: its agent dies under it.
    await eventually(async () => (await daemon.engine.tasks.list()).some((x) => x.kind === 'template.refill' && x.state === 'running' && x.targetName === 'web@lab2'), 20_000, 'a refill of lab2 to run');
    process.kill(lab2.pid as number, 'SIGKILL');
    await eventually(async () => (await hosts.get('lab2')).state === 'unreachable', 30_000, 'lab2 to be unreachable');
    const meanwhile = await fabric().claim('web', { hostname: 'while-lab2-dead' });
    claimed.push(meanwhile);
    expect(meanwhile.host).toBe('lab1');
    expect(await sh(meanwhile.vm.name, 'hostname')).toBe('while-lab2-dead');
    const again = await labUp(2, { dir: labDir, prefix, subnet }, t.home);
    expect(again.hosts.map((h) => h.action)).toEqual(['running', 'restarted']);
    lab = again;
    await eventually(async () => (await hosts.get('lab2')).state === 'ready', 60_000, 'lab2 to be back');
    await eventually(async () => (await readyOn('lab2')) === 4, 240_000, "lab2's pool refilled after its agent came back");
    const after = await fabric().claim('web', { host: 'lab2', hostname: 'after-restart' });
    claimed.push(after);
    expect(after.source).toBe('pool');
    expect((await inspect(after.vm.name)).md5).toBe(sums);
    // The children claimed before the agent died were adopted by the new agent, and run on.
    for (const c of two) expect((await daemon.engine.resolve(c.vm.id)).state).toBe('running');
  }, 400_000);

  it('refuses to delete the template while it has children; --force removes its pools and copies on both hosts, the claimed children run on with the data', async () => {
    const refused = await t.cli(['template', 'delete', 'web']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('TEMPLATE_IN_USE');
    const deleted = await t.cli(['template', 'delete', 'web', '--force']);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(await fabric().listTemplates()).toEqual([]);
    const vms = await daemon.engine.list();
    expect(vms.map((v) => v.name).sort()).toEqual(['src', ...claimed.map((c) => c.vm.name)].sort());
    // Every claimed child runs on (a stopped one says where and why).
    expect(vms.filter((v) => v.state !== 'running').map((v) => `${v.name} on ${claimed.find((c) => c.vm.id === v.id)?.host}: ${v.state} (${v.stateReason})`)).toEqual([]);
    for (const c of [claimed[0], claimed.find((x) => x.host === 'lab2')] as ClaimResult[]) {
      expect((await daemon.engine.resolve(c.vm.id)).state).toBe('running');
      expect((await inspect(c.vm.name)).md5).toBe(sums);
    }
    for (const h of lab.hosts) expect(existsSync(join(h.home, 'fabric', template.id))).toBe(false);
  }, 300_000);

  it("leaves each lab host's home consistent (no orphan QEMU, no leaked file, privacy)", async () => {
    await daemon.engine.collectGarbage();
    for (const name of ['lab1', 'lab2']) {
      let problems = await hostProblems(name);
      for (let i = 0; i < 25 && problems.length > 0; i++) {
        await new Promise((r) => setTimeout(r, 200));
        problems = await hostProblems(name);
      }
      expect(problems, name).toEqual([]);
    }
    // Once the claimed children go, nothing of the template is left on either host.
    for (const c of claimed) {
      await daemon.engine.kill(c.vm.id);
      await daemon.engine.delete(c.vm.id);
    }
    await daemon.engine.collectGarbage();
    for (const h of lab.hosts) {
      const bases = existsSync(join(h.home, 'bases')) ? readdirSync(join(h.home, 'bases')) : [];
      expect(bases.filter((b) => b.startsWith(template.id.slice(0, 8))), h.name).toEqual([]);
      expect(await hostProblems(h.name), h.name).toEqual([]);
    }
  }, 180_000);
});
