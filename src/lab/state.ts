// The lab's state file, <dir>/lab.json: the options the lab was made with
// and, per host, its layout and the agent process it runs (pid and start
// time, so a reused pid is never taken for the agent). Written atomically
// (temporary file, then rename).
import { readFileSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OffshootError } from '../common/index.ts';
import type { HostLayout, LabOptions } from './config.ts';

export const STATE_FILE = 'lab.json';
const VERSION = 1;

export interface AgentProcess {
  pid: number;
  /** Field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot. */
  startTime: string;
}

export interface HostState extends HostLayout {
  agent: AgentProcess | null;
}

export interface LabState {
  version: number;
  prefix: string;
  subnet: string;
  port: number;
  hosts: HostState[];
}

export function statePath(dir: string): string {
  return join(dir, STATE_FILE);
}

export function readState(dir: string): LabState | undefined {
  let text: string;
  try {
    text = readFileSync(statePath(dir), 'utf8');
  } catch {
    return undefined;
  }
  const state = JSON.parse(text) as LabState;
  if (state.version !== VERSION) throw new OffshootError('LAB_STATE_UNSUPPORTED', `lab state ${statePath(dir)} has version ${state.version}; this lab understands ${VERSION}`, { path: statePath(dir), version: state.version }, 500);
  return state;
}

export function emptyState(options: LabOptions): LabState {
  return { version: VERSION, prefix: options.prefix, subnet: options.subnet, port: options.port, hosts: [] };
}

export async function writeState(dir: string, state: LabState): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = `${statePath(dir)}.${process.pid}.tmp`;
  const hosts = [...state.hosts].sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
  await writeFile(tmp, `${JSON.stringify({ ...state, hosts }, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, statePath(dir));
}

export async function removeState(dir: string): Promise<void> {
  await rm(statePath(dir), { force: true });
}
