// Per-host figures for the hosts page: VMs by state, memory the live VMs were
// given, what their QEMUs hold (RSS), what they really use (PSS: shared pages
// divided among their users), and what sharing saves (RSS minus PSS: forks
// and templates). A VM whose host is not in the list still counts, under a
// host of unknown state.
import type { HostView, VmMemoryView, VmRecord } from './api.ts';
import { hostOfVm } from './api.ts';
import { isLive } from './operations.ts';

export interface HostSummary {
  host: HostView;
  vms: VmRecord[];
  byState: Record<string, number>;
  live: number;
  owned: number;
  derived: number;
  templates: number;
  /** Memory given to the live VMs. */
  configuredBytes: number;
  /** Summed over the live VMs whose memory is known. */
  rssBytes: number;
  pssBytes: number;
  savedBytes: number;
  /** Live VMs whose memory is not known (yet). */
  memoryUnknown: number;
}

export function summarizeHosts(hosts: HostView[], vms: VmRecord[], memory: Record<string, VmMemoryView | undefined>): HostSummary[] {
  const fallback = hosts[0]?.id ?? 'local';
  const summaries = new Map<string, HostSummary>();
  const empty = (host: HostView): HostSummary => ({ host, vms: [], byState: {}, live: 0, owned: 0, derived: 0, templates: 0, configuredBytes: 0, rssBytes: 0, pssBytes: 0, savedBytes: 0, memoryUnknown: 0 });
  for (const host of hosts) summaries.set(host.id, empty(host));
  const templates = new Map<string, Set<string>>();
  for (const vm of vms) {
    const id = hostOfVm(vm, fallback);
    let s = summaries.get(id);
    if (!s) {
      s = empty({ id, name: id, state: 'unknown' });
      summaries.set(id, s);
    }
    s.vms.push(vm);
    s.byState[vm.state] = (s.byState[vm.state] ?? 0) + 1;
    if (!isLive(vm.state)) continue;
    s.live++;
    s.configuredBytes += vm.spec.memoryMiB * 1024 * 1024;
    const mode = vm.runtime?.memory.mode;
    if (mode === 'derived') s.derived++;
    else if (mode === 'owned') s.owned++;
    const t = vm.runtime?.memory.templateId;
    if (t) templates.set(id, (templates.get(id) ?? new Set()).add(t));
    const m = memory[vm.id];
    if (!m) {
      s.memoryUnknown++;
      continue;
    }
    s.rssBytes += m.rssKiB * 1024;
    s.pssBytes += m.pssKiB * 1024;
  }
  for (const s of summaries.values()) {
    s.savedBytes = Math.max(0, s.rssBytes - s.pssBytes);
    s.templates = templates.get(s.host.id)?.size ?? 0;
  }
  return [...summaries.values()];
}
