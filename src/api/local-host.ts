// The agent stack of this machine, as both daemons start it: the local
// agents (QEMU, memory, disk files) behind the AgentService that serves the
// agent protocol. `offshoot serve` reaches it in process (its own host);
// `offshoot agent serve` serves it over HTTP to a control plane elsewhere.
import { mkdir } from 'node:fs/promises';
import type { Logger } from '../common/index.ts';
import { OffshootError } from '../common/index.ts';
import { AgentService, LocalHostAgent, LocalStorageAgent, MAX_VCPU_NICE, isVcpuNice } from '../agent/index.ts';

export interface LocalHostStack {
  host: LocalHostAgent;
  storage: LocalStorageAgent;
  service: AgentService;
  close(): Promise<void>;
}

/** The vCPU nice value asked for: the option, else OFFSHOOT_VCPU_NICE, else the host's default (undefined). */
function vcpuNiceOf(option: number | undefined): number | undefined {
  if (option !== undefined) return option;
  const env = process.env.OFFSHOOT_VCPU_NICE;
  if (env === undefined || env === '') return undefined;
  const nice = Number(env);
  if (!isVcpuNice(nice)) throw new OffshootError('INVALID_INPUT', `OFFSHOOT_VCPU_NICE must be an integer from 0 to ${MAX_VCPU_NICE}, not ${JSON.stringify(env)}`, { vcpuNice: env }, 400);
  return nice;
}

export async function startLocalHost(options: { home: string; memoryDir?: string; allowImages?: string[]; vcpuNice?: number; logger: Logger }): Promise<LocalHostStack> {
  const vcpuNice = vcpuNiceOf(options.vcpuNice);
  await mkdir(options.home, { recursive: true, mode: 0o700 });
  const host = new LocalHostAgent({ home: options.home, memoryDir: options.memoryDir ?? process.env.OFFSHOOT_MEMORY_DIR, allowImages: options.allowImages, logger: options.logger, ...(vcpuNice !== undefined ? { vcpuNice } : {}) });
  await host.prepareHost();
  const storage = new LocalStorageAgent(host.layout, host.policy, (vmId) => host.qmpOf(vmId), () => host.qemuAccess());
  const service = new AgentService({ host, storage, logger: options.logger });
  await service.start();
  // Start the accelerator probe now so the first boot does not pay for it.
  void host.accelerator().catch((err: unknown) => options.logger.warn({ err }, 'accelerator probe failed'));
  return {
    host,
    storage,
    service,
    close: async () => {
      await service.close();
      await host.close();
    },
  };
}

/** A name for this machine's host in a fleet: OFFSHOOT_HOST_NAME, else the short hostname made safe, else "local". */
export function localHostName(env: NodeJS.ProcessEnv, machine: string): string {
  const wanted = env.OFFSHOOT_HOST_NAME ?? machine.split('.')[0] ?? '';
  const safe = wanted.toLowerCase().replace(/[^a-z0-9_-]/g, '-').replace(/^[-_]+/, '').slice(0, 63);
  return safe || 'local';
}
