// How the CLI prints: tables for people, JSON for scripts, progress on stderr,
// and errors as "error: message [CODE]" (or JSON with --json) with exit code 1.
import Table from 'cli-table3';
import { toOffshootError } from '../common/index.ts';
import type { VmMemoryView } from '../client/index.ts';
import type { TaskRecord, VmRecord } from '../vm/index.ts';

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printTable(head: string[], rows: Array<Array<string | number>>): void {
  const table = new Table({ head, style: { head: [], border: [] }, chars: { top: '', 'top-mid': '', 'top-left': '', 'top-right': '', bottom: '', 'bottom-mid': '', 'bottom-left': '', 'bottom-right': '', left: '', 'left-mid': '', mid: '', 'mid-mid': '', right: '', 'right-mid': '', middle: '  ' } });
  table.push(...rows.map((r) => r.map(String)));
  process.stdout.write(`${table.toString()}\n`);
}

function mib(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}

export function formatMemory(mib: number): string {
  return mib % 1024 === 0 ? `${mib / 1024}G` : `${mib}M`;
}

export function vmRow(vm: VmRecord): string[] {
  return [vm.name, vm.state, (vm as VmRecord & { host?: string }).host ?? vm.hostId, String(vm.spec.vcpus), formatMemory(vm.spec.memoryMiB), vm.runtime ? String(vm.runtime.pid) : '-', vm.id, vm.stateReason ?? ''];
}

export const VM_TABLE_HEAD = ['NAME', 'STATE', 'HOST', 'VCPUS', 'MEMORY', 'PID', 'ID', 'REASON'];

export function printVm(vm: VmRecord, memory?: VmMemoryView): void {
  const lines: Array<[string, string]> = [
    ['name', vm.name],
    ['id', vm.id],
    ['state', vm.state + (vm.stateReason ? ` (${vm.stateReason})` : '')],
    ['host', (vm as VmRecord & { host?: string }).host ?? vm.hostId],
    ['vcpus', String(vm.spec.vcpus)],
    ['memory', formatMemory(vm.spec.memoryMiB)],
    ['boot', vm.spec.boot.kind === 'kernel' ? `kernel ${vm.spec.boot.kernel}` : 'disk'],
    ...vm.spec.disks.map((d): [string, string] => [`disk ${d.id}`, `${d.file} (${d.format}${d.readOnly ? ', read-only' : ''})`]),
    ...vm.spec.nics.map((n): [string, string] => [`nic ${n.id}`, `${n.mac} (${n.network})`]),
    ['pid', vm.runtime ? String(vm.runtime.pid) : '-'],
    ['accel', vm.runtime?.accel ?? '-'],
    ...(memory
      ? ([
          ['memory mode', `${memory.mode}${memory.templateId ? ` (template ${memory.templateId})` : ''}`],
          ['memory use', `rss ${mib(memory.rssKiB)}, pss ${mib(memory.pssKiB)}, shared ${mib(memory.sharedKiB)}, private ${mib(memory.privateKiB)}`],
        ] as Array<[string, string]>)
      : []),
    ['created', vm.createdAt],
  ];
  for (const [k, v] of lines) process.stdout.write(`${k.padEnd(12)} ${v}\n`);
}

/** A progress reporter for a task: a rewritten line on a terminal, one line per phase otherwise. */
export function taskProgress(label: string): (task: TaskRecord) => void {
  const tty = process.stderr.isTTY;
  let lastMessage = '';
  return (task) => {
    const pct = `${Math.round(task.progress * 100)}%`.padStart(4);
    if (tty) {
      process.stderr.write(`\r\x1b[K${label}: [${pct}] ${task.message}${task.state !== 'running' ? '\n' : ''}`);
    } else if (task.message !== lastMessage) {
      process.stderr.write(`${label}: [${pct}] ${task.message}\n`);
    }
    lastMessage = task.message;
  };
}

export function printError(err: unknown, json: boolean): void {
  const error = toOffshootError(err);
  if (json) {
    process.stderr.write(`${JSON.stringify({ error: error.toJSON() })}\n`);
    return;
  }
  process.stderr.write(`error: ${error.message} [${error.code}]\n`);
  const issues = error.details.issues as Array<{ path: string; message: string }> | undefined;
  if (Array.isArray(issues) && issues.length > 1) for (const i of issues) process.stderr.write(`  - ${i.path || '(root)'}: ${i.message}\n`);
}
