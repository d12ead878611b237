// `offshoot agent serve`: this machine as a host of a fleet. The agent
// protocol (src/protocol) over HTTP on the address it is given and no other,
// every call but /v1/health behind this host's own credential (a token made
// at first start in <home>/agent-token, mode 0600: give it to the control
// plane with `offshoot host add NAME URL --token-file F`). One agent per home.
// On SIGTERM it stops answering and leaves every VM running: the next agent
// (or the control plane's re-adoption) takes them back.
import { mkdir, readFile, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { serve } from '@hono/node-server';
import pino from 'pino';
import { writeFileAtomic } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import { agentHttpApp } from '../protocol/index.ts';
import { loadOrCreateToken } from './auth.ts';
import { guardProcess, parseListen } from './daemon.ts';
import { acquireHomeLock } from './home-lock.ts';
import { startLocalHost } from './local-host.ts';

export interface AgentDaemonOptions {
  home: string;
  /** HOST:PORT to answer on (required: an agent is reached from other hosts, so its address is chosen on purpose). */
  listen: string;
  memoryDir?: string;
  allowImages?: string[];
  /** The nice value of its guests' vCPU threads (default OFFSHOOT_VCPU_NICE, else 5; 0: unchanged; qemu/vcpu-priority.ts). */
  vcpuNice?: number;
  logger?: Logger;
  guardProcess?: boolean;
}

export interface RunningAgent {
  url: string;
  tokenFile: string;
  token: string;
  close(): Promise<void>;
}

export async function startAgentDaemon(options: AgentDaemonOptions): Promise<RunningAgent> {
  process.umask(0o077);
  await mkdir(options.home, { recursive: true, mode: 0o700 });
  const { host, port } = parseListen(options.listen);
  const releaseLock = await acquireHomeLock(options.home);
  const logger = options.logger ?? pino({ level: process.env.OFFSHOOT_LOG_LEVEL ?? 'info' }, pino.destination({ dest: join(options.home, 'agent.log'), sync: false, mkdir: true }));
  const unguard = options.guardProcess ? guardProcess(logger) : () => undefined;
  const tokenFile = join(options.home, 'agent-token');
  let stack: Awaited<ReturnType<typeof startLocalHost>> | undefined;
  let server: ReturnType<typeof serve> | undefined;
  try {
    const token = await loadOrCreateToken(tokenFile);
    stack = await startLocalHost({ home: options.home, memoryDir: options.memoryDir, allowImages: options.allowImages, vcpuNice: options.vcpuNice, logger });
    const app = agentHttpApp(stack.service.endpoint, { token, logger });
    server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
      const s = serve({ fetch: app.fetch, hostname: host, port }, () => resolve(s));
      s.once('error', reject);
    });
    const address = server.address() as AddressInfo;
    const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
    const pidFile = join(options.home, 'agent-daemon.json');
    await writeFileAtomic(pidFile, `${JSON.stringify({ url, pid: process.pid, startedAt: new Date().toISOString() }, null, 2)}\n`);
    logger.info({ url, home: options.home }, 'offshoot agent listening');
    const running = server;
    const local = stack;
    let closing: Promise<void> | undefined;
    return {
      url,
      tokenFile,
      token,
      close: () => {
        closing ??= (async () => {
          const closed = new Promise<void>((resolve) => running.close(() => resolve()));
          (running as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
          await closed;
          await local.close();
          const current = await readFile(pidFile, 'utf8').catch(() => '');
          if (current.includes(`"pid": ${process.pid}`)) await rm(pidFile, { force: true });
          await releaseLock();
          logger.info('offshoot agent stopped; VMs keep running');
          unguard();
        })();
        return closing;
      },
    };
  } catch (err) {
    server?.close();
    await stack?.close();
    await releaseLock();
    unguard();
    throw err;
  }
}
