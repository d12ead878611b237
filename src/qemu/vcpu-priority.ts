// The CPU priority of a QEMU's vCPU threads. A host runs its guests' vCPUs
// beside what keeps them manageable: each QEMU's main loop (its monitor, the
// device emulation), its migration thread and the host's agent. When the CPUs
// are short (many guests, or TCG) a busy vCPU takes a full share from them, and
// the control path slows with the load: under `bench group` (8 guests on 2
// cores, load 9-14) QMP answers took 0.3-3 s and a group's destinations, all
// told to run at once, resumed up to 150 ms apart as the first guests to run
// took the CPU from the monitors of the others. With their vCPU threads at a
// higher nice value, the guests still share the CPUs among themselves as
// before (all at the same value) and use whatever the host leaves idle, but
// yield to QEMU's own threads and the agent when both want a CPU.
// The threads are QEMU's own (query-cpus-fast's thread ids); Linux applies
// setpriority to one thread when given its id. 0 leaves them alone.
// Where the kernel groups each session for the scheduler (autogroups,
// /proc/sys/kernel/sched_autogroup_enabled, on by default in Debian) groups
// share the CPUs equally whatever their threads' nice values, and QEMU runs
// in a session of its own (it outlives the agent): a thread's nice value acts
// within its QEMU only, and each busy QEMU weighs as much as the agent. So the
// QEMU's group gets the same nice value (setAutogroupNice). Measured (`bench
// group`, 16 QEMUs, 2 cores, load 7-14): the agents' event loop ran late by
// at most 50-131 ms (median over migrations) with it, 200-212 ms without.
import { readFile, writeFile } from 'node:fs/promises';
import { setPriority } from 'node:os';
import type { QmpClient } from './qmp-client.ts';

/** The nice value a host gives its guests' vCPU threads unless told otherwise (0: same as QEMU's other threads). */
export const DEFAULT_VCPU_NICE = 5;

/** The highest nice value Linux knows. */
export const MAX_NICE = 19;

/** A nice value Linux knows and a host may give vCPU threads: an integer from 0 to MAX_NICE. */
export function isVcpuNice(nice: number): boolean {
  return Number.isInteger(nice) && nice >= 0 && nice <= MAX_NICE;
}

/**
 * Gives the scheduler group (autogroup) of QEMU process `pid`'s session the nice value `nice` (0-19). Answers false,
 * changing nothing, where the kernel has no autogroups, or when that session is the caller's own (its group would be
 * the caller's too).
 */
export async function setAutogroupNice(pid: number, nice: number): Promise<boolean> {
  if (!isVcpuNice(nice)) throw new RangeError(`an autogroup nice value is an integer from 0 to ${MAX_NICE}, not ${nice}`);
  const groupOf = (who: string) => readFile(`/proc/${who}/autogroup`, 'utf8').then((text) => text.split(' ')[0] ?? '', () => null);
  const [theirs, ours] = await Promise.all([groupOf(String(pid)), groupOf('self')]);
  if (theirs === null || theirs === ours) return false;
  await writeFile(`/proc/${pid}/autogroup`, String(nice));
  return true;
}

/** The thread ids of a QEMU's vCPUs. */
export async function vcpuThreadIds(qmp: QmpClient): Promise<number[]> {
  const cpus = await qmp.execute<Array<{ 'thread-id'?: number }>>('query-cpus-fast');
  return cpus.map((c) => c['thread-id']).filter((id): id is number => typeof id === 'number' && id > 0);
}

/**
 * Gives a QEMU's vCPU threads the nice value `nice` (0-19); answers the thread ids changed. A thread that ended
 * meanwhile is skipped; any other refusal of the kernel (no permission) is thrown.
 */
export async function setVcpuNice(qmp: QmpClient, nice: number): Promise<number[]> {
  if (!isVcpuNice(nice)) throw new RangeError(`a vCPU nice value is an integer from 0 to ${MAX_NICE}, not ${nice}`);
  const changed: number[] = [];
  for (const tid of await vcpuThreadIds(qmp)) {
    try {
      setPriority(tid, nice);
      changed.push(tid);
    } catch (err) {
      if ((err as { info?: { code?: string } }).info?.code === 'ESRCH') continue;
      throw err;
    }
  }
  return changed;
}
