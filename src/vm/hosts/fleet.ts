// The fleet: every host this control plane drives, and a protocol client for
// each (the controller's own host in process, the others over HTTP). It adds
// and removes hosts (checking that their agent speaks a protocol this
// controller understands), keeps each host's lease with a heartbeat (a host
// that misses it becomes `unreachable`; when it answers again it gets a new
// epoch and its VMs are re-adopted), follows each host's event log (VM exits),
// and places new VMs on a ready host with room.
// Several controllers over one inventory share the hosts without fighting:
// each host has one monitor at a time (a claim `host:<id>` with the host's
// lease, renewed every heartbeat), and only the monitor heartbeats its agent,
// changes its state and epoch, follows its events and re-adopts its VMs; a
// monitor that dies loses the claim and another controller takes it. Every
// controller reloads the host records from the inventory at each heartbeat
// (hosts added or removed elsewhere, new epochs), and a call its agent refuses
// as STALE_EPOCH (the monitor moved the epoch on) is retried once with the
// record reloaded. A controller's own in-process host is monitored by that
// controller only; the others mark it unreachable once its lease ran out (the
// controller died) and cannot reach its VMs until it is back.
import { randomUUID } from 'node:crypto';
import { AlreadyExistsError, InvalidInputError, NAME_PATTERN, NotFoundError, OffshootError, silentLogger, sleep } from '../../common/index.ts';
import type { Logger } from '../../common/index.ts';
import type { AgentClient, AgentEndpoint, AgentEvent, CallName, HostInfo } from '../../protocol/index.ts';
import { PROTOCOL_VERSION, clientFromSend, httpAgentClient, inProcessClient, isCompatibleProtocol } from '../../protocol/index.ts';
import type { VmClaim, VmClaims } from '../coordination.ts';
import type { HostFacts, HostInventory, HostRecord, HostState } from './host-record.ts';
import { LOCAL_HOST_URL, PLACEABLE, assertHostState } from './host-record.ts';

export interface FleetListener {
  /** A host joined the fleet (or is this controller's own, at start). */
  hostAdded?(host: HostRecord): void;
  /** A VM's QEMU ended on a host (the engine checks the instance against its record). */
  vmExited?(host: HostRecord, event: Extract<AgentEvent, { type: 'vm.exit' }>): void;
  /** A host missed its lease: its VMs are unknown until it returns. */
  hostLost?(host: HostRecord): void;
  /** A host answers again (after being unreachable, or its agent restarted): re-adopt its VMs. */
  hostBack?(host: HostRecord, why: 'returned' | 'agent-restarted'): void;
  /** The host's event log dropped events this controller had not read: reconcile from hostInfo's VM list. */
  resync?(host: HostRecord, info: HostInfo): void;
  /** An operator took the host out of placement (draining, maintenance) or back (ready). */
  hostAdminState?(host: HostRecord, previous: HostState): void;
}

export interface FleetOptions {
  inventory: HostInventory;
  logger?: Logger;
  /** How many VMs the inventory places on a host (remove refuses while any). */
  vmsOn(hostId: string): Promise<number>;
  /** The controller's own host, served in process (none with --no-local-host). */
  local?: { name: string; endpoint: AgentEndpoint };
  heartbeatMs?: number;
  leaseMs?: number;
  /** Several controllers over one inventory: host monitors are claims of this controller (without: it monitors every host). */
  monitor?: { owner: string; claims: VmClaims };
}

export interface HostView extends Omit<HostRecord, 'token'> {
  vms: number;
}

/** The agent of a host speaks a protocol this controller cannot. */
export class AgentProtocolError extends OffshootError {
  constructor(host: string, reason: string, details: Record<string, unknown> = {}) {
    super('AGENT_PROTOCOL', `cannot use host ${host}: ${reason}`, { host, ...details }, 502);
  }
}

function factsOf(info: HostInfo): HostFacts {
  return { hostname: info.hostname, accel: info.accel, accelReason: info.accelReason, qemuVersion: info.qemuVersion, agentVersion: info.agentVersion, agentInstance: info.agentInstance, memory: info.memory, confinement: info.confinement };
}

function checkProtocol(name: string, info: HostInfo): void {
  if (!isCompatibleProtocol(info.protocolVersion)) throw new AgentProtocolError(name, `its agent speaks protocol ${info.protocolVersion} and this controller speaks ${PROTOCOL_VERSION}`, { agentProtocol: info.protocolVersion, controllerProtocol: PROTOCOL_VERSION });
}

export class Fleet {
  private readonly inventory: HostInventory;
  private readonly logger: Logger;
  private readonly heartbeatMs: number;
  private readonly leaseMs: number;
  /** Records as last written by this controller (epochs are read from here at every call). */
  private readonly records = new Map<string, HostRecord>();
  private readonly clients = new Map<string, AgentClient>();
  private readonly listeners: FleetListener[] = [];
  private readonly loops = new Map<string, Promise<void>>();
  private heartbeat: NodeJS.Timeout | undefined;
  private closed = false;
  /** Hosts this controller monitors, with the claim that says so (null: no claims, or its own in-process host). */
  private readonly monitored = new Map<string, VmClaim | null>();
  localHostId: string | null = null;

  constructor(private readonly options: FleetOptions) {
    this.inventory = options.inventory;
    this.logger = options.logger ?? silentLogger;
    this.heartbeatMs = options.heartbeatMs ?? 2_000;
    this.leaseMs = options.leaseMs ?? 10_000;
  }

  listen(listener: FleetListener): void {
    this.listeners.push(listener);
  }

  /** Loads the hosts, registers (or refreshes) the local one, takes the monitors it can, and starts heartbeats and event loops. */
  async start(): Promise<void> {
    for (const host of await this.inventory.listHosts()) this.records.set(host.id, host);
    if (this.options.local) await this.registerLocal(this.options.local);
    for (const host of this.records.values()) await this.tryMonitor(host);
    this.heartbeat = setInterval(() => void this.beat().catch((err: unknown) => this.logger.error({ err }, 'heartbeat failed')), this.heartbeatMs);
    this.heartbeat.unref();
  }

  /** Whether this controller monitors the host (heartbeats it, follows its events, re-adopts its VMs). */
  monitors(hostId: string): boolean {
    return this.monitored.has(hostId);
  }

  /** A host's in-process agent that lives in another controller (this one cannot reach it). */
  private isForeignLocal(host: HostRecord): boolean {
    return host.url === LOCAL_HOST_URL && host.id !== this.localHostId;
  }

  /** Becomes the host's monitor if nobody else is (its own in-process host always); starts following its events. */
  private async tryMonitor(host: HostRecord): Promise<boolean> {
    if (this.monitored.has(host.id)) return true;
    if (this.isForeignLocal(host)) return false;
    let claim: VmClaim | null = null;
    const monitor = this.options.monitor;
    if (monitor && host.id !== this.localHostId) {
      try {
        claim = await monitor.claims.acquire(`host:${host.id}`, monitor.owner, 'monitor', this.leaseMs);
      } catch (err) {
        if (err instanceof OffshootError && err.code === 'BUSY') return false;
        throw err;
      }
    }
    this.monitored.set(host.id, claim);
    if (claim) this.logger.info({ host: host.name }, 'this controller monitors the host');
    this.follow(host);
    return true;
  }

  private stopMonitoring(hostId: string): void {
    const claim = this.monitored.get(hostId);
    this.monitored.delete(hostId);
    if (claim && this.options.monitor) void this.options.monitor.claims.release(claim).catch(() => undefined);
  }

  /**
   * Reloads the host records from the inventory (hosts added, removed or changed by other controllers); keeps
   * what this controller knows newer of the hosts it monitors (their last heartbeat).
   */
  private async refresh(): Promise<void> {
    const stored = await this.inventory.listHosts();
    const ids = new Set(stored.map((h) => h.id));
    for (const id of [...this.records.keys()]) {
      if (ids.has(id)) continue;
      this.records.delete(id);
      this.clients.delete(id);
      this.stopMonitoring(id);
    }
    for (const host of stored) {
      const mine = this.records.get(host.id);
      const newer = mine && this.monitored.has(host.id) && (mine.lastSeenAt ?? '') > (host.lastSeenAt ?? '');
      this.records.set(host.id, newer ? { ...host, lastSeenAt: mine.lastSeenAt, leaseExpiresAt: mine.leaseExpiresAt, facts: mine.facts } : host);
      if (!mine && !this.isForeignLocal(host)) this.logger.info({ host: host.name }, 'host added by another controller');
    }
  }

  private async registerLocal(local: { name: string; endpoint: AgentEndpoint }): Promise<void> {
    const existing = [...this.records.values()].find((h) => h.url === LOCAL_HOST_URL && h.name === local.name);
    const probe = inProcessClient(local.endpoint, { hostName: local.name, epoch: () => existing?.epoch ?? 0 });
    const info = await probe.hostInfo({});
    checkProtocol(local.name, info);
    const now = new Date().toISOString();
    let host: HostRecord;
    if (existing) {
      const epoch = Math.max(existing.epoch, info.epoch) + 1;
      host = await this.inventory.updateHost(existing.id, { epoch, state: 'ready', stateReason: null, facts: factsOf(info), protocolVersion: info.protocolVersion, capabilities: info.capabilities, lastSeenAt: now, leaseExpiresAt: new Date(Date.now() + this.leaseMs).toISOString(), updatedAt: now });
    } else {
      if (await this.inventory.findHostByName(local.name)) throw new AlreadyExistsError('host', local.name);
      host = { id: randomUUID(), name: local.name, url: LOCAL_HOST_URL, state: 'ready', stateReason: null, epoch: Math.max(1, info.epoch + 1), token: null, protocolVersion: info.protocolVersion, capabilities: info.capabilities, facts: factsOf(info), lastSeenAt: now, leaseExpiresAt: new Date(Date.now() + this.leaseMs).toISOString(), createdAt: now, updatedAt: now };
      await this.inventory.insertHost(host);
    }
    this.records.set(host.id, host);
    this.localHostId = host.id;
    await this.client(host).attach({ hostId: host.id, epoch: host.epoch });
  }

  /** The protocol client of a host (any state: a caller may still try an unreachable one). */
  agent(hostId: string): AgentClient {
    const host = this.records.get(hostId);
    if (!host) throw new NotFoundError('host', hostId);
    return this.client(host);
  }

  private client(host: HostRecord): AgentClient {
    let client = this.clients.get(host.id);
    if (!client) {
      const epoch = () => this.records.get(host.id)?.epoch ?? host.epoch;
      let inner: AgentClient;
      if (host.url === LOCAL_HOST_URL) {
        if (!this.options.local || this.isForeignLocal(host)) throw new OffshootError('HOST_UNREACHABLE', `host ${host.name} is the in-process host of another controller: only that controller reaches its VMs`, { host: host.name }, 502);
        inner = inProcessClient(this.options.local.endpoint, { hostName: host.name, epoch });
      } else {
        inner = httpAgentClient({ hostName: host.name, url: host.url, token: host.token ?? '', epoch });
      }
      client = this.retryingStaleEpoch(host.id, inner);
      this.clients.set(host.id, client);
    }
    return client;
  }

  /** A client that, refused as STALE_EPOCH (another controller moved the host's epoch on), reloads the host record and tries once more. */
  private retryingStaleEpoch(hostId: string, inner: AgentClient): AgentClient {
    return clientFromSend(inner.hostName, async (name: CallName, request: unknown) => {
      const call = (inner[name] as (r: unknown) => Promise<unknown>).bind(inner);
      try {
        return await call(request);
      } catch (err) {
        if (!(err instanceof OffshootError && err.code === 'STALE_EPOCH')) throw err;
        const fresh = await this.inventory.getHost(hostId);
        const known = this.records.get(hostId);
        if (!fresh || !known || fresh.epoch <= known.epoch) throw err;
        this.records.set(hostId, { ...known, epoch: fresh.epoch });
        return call(request);
      }
    });
  }

  async resolve(ref: string): Promise<HostRecord> {
    const host = this.records.get(ref) ?? (await this.inventory.getHost(ref)) ?? (await this.inventory.findHostByName(ref));
    if (!host) throw new NotFoundError('host', ref);
    return this.records.get(host.id) ?? host;
  }

  async list(): Promise<HostView[]> {
    const hosts = await this.inventory.listHosts();
    return Promise.all(hosts.map((h) => this.view(this.records.get(h.id) ?? h)));
  }

  async view(host: HostRecord): Promise<HostView> {
    const { token: _token, ...rest } = host;
    return { ...rest, vms: await this.options.vmsOn(host.id) };
  }

  /** Adds a host whose agent answers at `url` with `token`; nothing is recorded unless its agent is one this controller can use. */
  async add(input: { name: string; url: string; token: string }): Promise<HostRecord> {
    if (!NAME_PATTERN.test(input.name)) throw new InvalidInputError(`invalid host name "${input.name}": use 1-63 letters, digits, "-" or "_"`, { name: input.name });
    let url: URL;
    try {
      url = new URL(input.url);
    } catch {
      throw new InvalidInputError(`invalid agent url "${input.url}": use http://HOST:PORT`, { url: input.url });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidInputError(`invalid agent url "${input.url}": use http://HOST:PORT`, { url: input.url });
    if (!/^[A-Za-z0-9_-]{32,256}$/.test(input.token)) throw new InvalidInputError('the host credential must be the 32-256 character token its agent wrote at first start', { field: 'token' });
    const base = url.origin;
    if (await this.inventory.findHostByName(input.name)) throw new AlreadyExistsError('host', input.name);
    if ((await this.inventory.listHosts()).some((h) => h.url === base)) throw new AlreadyExistsError('host url', base);
    const id = randomUUID();
    const probe = httpAgentClient({ hostName: input.name, url: base, token: input.token, epoch: () => 0, timeoutMs: 10_000 });
    const info = await probe.hostInfo({});
    checkProtocol(input.name, info);
    const epoch = info.epoch + 1;
    const attached = await httpAgentClient({ hostName: input.name, url: base, token: input.token, epoch: () => epoch, timeoutMs: 10_000 }).attach({ hostId: id, epoch });
    const now = new Date().toISOString();
    const host: HostRecord = { id, name: input.name, url: base, state: 'ready', stateReason: null, epoch, token: input.token, protocolVersion: attached.protocolVersion, capabilities: attached.capabilities, facts: factsOf(attached), lastSeenAt: now, leaseExpiresAt: new Date(Date.now() + this.leaseMs).toISOString(), createdAt: now, updatedAt: now };
    await this.inventory.insertHost(host);
    this.records.set(id, host);
    await this.tryMonitor(host);
    this.logger.info({ host: host.name, url: base, epoch }, 'host added');
    for (const l of this.listeners) l.hostAdded?.(host);
    return host;
  }

  /** Forgets a host; refused while VMs live there. */
  async remove(ref: string): Promise<HostRecord> {
    const host = await this.resolve(ref);
    const vms = await this.options.vmsOn(host.id);
    if (vms > 0) throw new OffshootError('ILLEGAL_STATE', `host ${host.name} still holds ${vms} VMs; delete or move them first`, { host: host.name, vms }, 409);
    if (host.id === this.localHostId) throw new OffshootError('ILLEGAL_STATE', `host ${host.name} is this controller's own host; start the controller with --no-local-host instead`, { host: host.name }, 409);
    await this.inventory.deleteHost(host.id);
    this.records.delete(host.id);
    this.clients.delete(host.id);
    this.stopMonitoring(host.id);
    this.logger.info({ host: host.name }, 'host removed');
    return host;
  }

  /** Takes a host out of placement (draining: its VMs are to be moved off; maintenance: an operator's hold) or back in. */
  async setAdminState(ref: string, state: Extract<HostState, 'ready' | 'draining' | 'maintenance'>): Promise<HostRecord> {
    const host = await this.resolve(ref);
    if (host.state === 'unreachable') throw new OffshootError('ILLEGAL_STATE', `host ${host.name} is unreachable`, { host: host.name }, 409);
    const updated = await this.write(host, { state, stateReason: state === 'ready' ? null : `${state} by request` });
    if (host.state !== state) for (const l of this.listeners) l.hostAdminState?.(updated, host.state);
    return updated;
  }

  /** A ready host with room for `memoryMiB` (the named one, or the one with the most free memory). */
  async place(memoryMiB: number, hostRef?: string): Promise<HostRecord> {
    const need = memoryMiB * 2 ** 20;
    if (hostRef) {
      const host = await this.resolve(hostRef);
      assertHostState(host, PLACEABLE, 'place a VM on');
      return host;
    }
    const candidates = [...this.records.values()].filter((h) => PLACEABLE.includes(h.state) && !this.isForeignLocal(h) && (h.url !== LOCAL_HOST_URL || this.options.local));
    const withRoom = candidates.filter((h) => (h.facts?.memory.freeBytes ?? 0) >= need);
    const pick = (withRoom.length ? withRoom : candidates).sort((a, b) => (b.facts?.memory.freeBytes ?? 0) - (a.facts?.memory.freeBytes ?? 0))[0];
    if (!pick) throw new OffshootError('ILLEGAL_STATE', 'no ready host to place a VM on', { hosts: this.records.size }, 409);
    return pick;
  }

  /** The controller's own host when it has one and it is ready, else a ready host with the most free memory. */
  async defaultHost(): Promise<HostRecord> {
    const local = this.localHostId ? this.records.get(this.localHostId) : undefined;
    if (local && PLACEABLE.includes(local.state)) return local;
    return this.place(0);
  }

  hosts(): HostRecord[] {
    return [...this.records.values()];
  }

  private async write(host: HostRecord, patch: Partial<HostRecord>): Promise<HostRecord> {
    const updated = await this.inventory.updateHost(host.id, { ...patch, updatedAt: new Date().toISOString() });
    this.records.set(host.id, updated);
    return updated;
  }

  /**
   * One heartbeat round: the records reloaded, the monitor claims renewed (or taken where nobody holds them), and
   * every monitored host's hostInfo, its lease renewed or lost; another controller's in-process host whose lease
   * ran out is marked unreachable.
   */
  private async beat(): Promise<void> {
    if (this.options.monitor) await this.refresh();
    for (const host of [...this.records.values()]) {
      if (this.isForeignLocal(host)) {
        await this.expireForeignLocal(host).catch((err: unknown) => this.logger.warn({ err, host: host.name }, 'cannot mark another controller\'s host unreachable'));
        continue;
      }
      const claim = this.monitored.get(host.id);
      if (claim && this.options.monitor) {
        try {
          this.monitored.set(host.id, await this.options.monitor.claims.renew(claim, this.leaseMs));
        } catch (err) {
          if (!(err instanceof OffshootError && err.code === 'LEASE_LOST')) throw err;
          this.logger.warn({ host: host.name }, 'another controller monitors the host now');
          this.monitored.delete(host.id);
        }
      } else if (!this.monitored.has(host.id)) await this.tryMonitor(host);
    }
    await Promise.allSettled([...this.records.values()].filter((h) => this.monitored.has(h.id)).map((host) => this.beatOne(host)));
  }

  /** Another controller's in-process host whose lease ran out (that controller died): unreachable, its VMs unknown. */
  private async expireForeignLocal(host: HostRecord): Promise<void> {
    if (host.state === 'unreachable' || !host.leaseExpiresAt || Date.parse(host.leaseExpiresAt) > Date.now()) return;
    const monitor = this.options.monitor;
    const claim = monitor ? await monitor.claims.acquire(`host:${host.id}`, monitor.owner, 'expire', this.leaseMs).catch(() => null) : null;
    if (monitor && !claim) return;
    try {
      const current = await this.inventory.getHost(host.id);
      if (!current || current.state === 'unreachable' || !current.leaseExpiresAt || Date.parse(current.leaseExpiresAt) > Date.now()) return;
      const lost = await this.write(current, { state: 'unreachable', stateReason: 'its controller stopped renewing its lease' });
      this.logger.warn({ host: host.name }, "another controller's own host is unreachable: its VMs are unknown until that controller is back");
      for (const l of this.listeners) l.hostLost?.(lost);
    } finally {
      if (claim && monitor) await monitor.claims.release(claim).catch(() => undefined);
    }
  }

  private async beatOne(host: HostRecord): Promise<void> {
    const now = Date.now();
    let info: HostInfo;
    try {
      info = await this.client(host).hostInfo({});
    } catch (err) {
      const expired = !host.leaseExpiresAt || Date.parse(host.leaseExpiresAt) <= now;
      if (expired && host.state !== 'unreachable') {
        const lost = await this.write(host, { state: 'unreachable', stateReason: `missed its lease: ${(err as Error).message}` });
        this.logger.warn({ host: host.name, err: (err as Error).message }, 'host unreachable: its VMs are unknown until it returns');
        for (const l of this.listeners) l.hostLost?.(lost);
      }
      return;
    }
    const lease = { lastSeenAt: new Date(now).toISOString(), leaseExpiresAt: new Date(now + this.leaseMs).toISOString(), facts: factsOf(info) };
    if (host.state === 'unreachable' || info.agentInstance !== host.facts?.agentInstance || info.epoch < host.epoch) {
      const why = host.state === 'unreachable' ? 'returned' : 'agent-restarted';
      const epoch = Math.max(host.epoch, info.epoch) + 1;
      const back = await this.write(host, { ...lease, epoch, state: host.state === 'unreachable' ? 'ready' : host.state, stateReason: null });
      await this.client(back).attach({ hostId: back.id, epoch });
      this.logger.info({ host: host.name, epoch, why }, 'host is back: re-adopting its VMs');
      for (const l of this.listeners) l.hostBack?.(back, why);
      return;
    }
    this.records.set(host.id, { ...host, ...lease });
    if (now - Date.parse(host.updatedAt) > this.leaseMs / 2) await this.write(host, lease);
  }

  /** Follows a host's event log for as long as the host is in the fleet and this controller monitors it. */
  private follow(host: HostRecord): void {
    if (this.loops.has(host.id)) return;
    const loop = (async () => {
      let afterSeq = 0;
      let first = true;
      while (!this.closed && this.records.has(host.id) && this.monitored.has(host.id)) {
        try {
          const page = await this.client(this.records.get(host.id) ?? host).events({ afterSeq, waitMs: first ? 0 : 10_000 });
          first = false;
          const current = this.records.get(host.id) ?? host;
          if (page.resync) {
            afterSeq = page.nextSeq;
            const info = await this.client(current).hostInfo({});
            for (const l of this.listeners) l.resync?.(current, info);
            continue;
          }
          for (const event of page.events) if (event.type === 'vm.exit') for (const l of this.listeners) l.vmExited?.(current, event);
          afterSeq = page.nextSeq;
        } catch {
          await sleep(1_000);
        }
      }
    })();
    this.loops.set(host.id, loop);
    void loop.finally(() => this.loops.delete(host.id));
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.heartbeat);
    // Hand the hosts over to the other controllers at once instead of after the lease.
    for (const id of [...this.monitored.keys()]) this.stopMonitoring(id);
  }
}
