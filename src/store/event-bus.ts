// The shared event bus: an event one controller publishes reaches the
// subscribers of every controller on the same inventory, each once.
// - PostgreSQL: LISTEN/NOTIFY on channel `offshoot_events`, over one
//   dedicated connection per controller that reconnects by itself (backoff up
//   to 5 s) after an outage. A NOTIFY payload is limited to 8000 bytes, so an
//   event whose JSON passes NOTIFY_LIMIT goes into table event_payloads and
//   only its id is notified; receivers fetch it by id (rows older than ten
//   minutes are deleted as new ones come). Notifications carry the
//   publisher's id: a controller delivers its own events to its subscribers
//   at publish time and ignores their echo. Events published while a
//   controller's listening connection is down do not reach it (NOTIFY keeps
//   no backlog): subscribers that need every change re-read the inventory
//   after a reconnect (`onReconnect`).
// - SQLite: one controller, so an in-process bus; every bus opened on the same
//   database file in this process shares it.
// Delivery to a subscriber is synchronous and a throwing subscriber does not
// stop the others.
import { EventEmitter } from 'node:events';
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import pg from 'pg';
import type { Logger } from '../common/index.ts';
import type { SharedEventBus } from '../vm/index.ts';
import type { Clock } from './clock.ts';
import type { Database } from './schema.ts';

export const EVENT_CHANNEL = 'offshoot_events';
/** Bytes of JSON sent inline in a NOTIFY (PostgreSQL's limit is 8000 with the channel name). */
export const NOTIFY_LIMIT = 7000;
const PAYLOAD_RETENTION_MS = 10 * 60_000;

/** Local subscribers of one controller's bus. */
class Subscribers<E> {
  private readonly emitter = new EventEmitter();

  constructor(private readonly logger?: Logger) {
    this.emitter.setMaxListeners(0);
  }

  deliver(event: E): void {
    for (const listener of this.emitter.listeners('event') as ((e: E) => void)[]) {
      try {
        listener(event);
      } catch (err) {
        this.logger?.warn({ err }, 'event subscriber threw');
      }
    }
  }

  subscribe(listener: (event: E) => void): () => void {
    this.emitter.on('event', listener);
    return () => this.emitter.off('event', listener);
  }
}

const hubs = new Map<string, Set<InProcessEventBus<unknown>>>();

/** SQLite: every bus on the same database file in this process, as one. */
export class InProcessEventBus<E> implements SharedEventBus<E> {
  private readonly subscribers: Subscribers<E>;
  private readonly hub: Set<InProcessEventBus<unknown>>;

  constructor(
    private readonly database: string,
    logger?: Logger,
  ) {
    this.subscribers = new Subscribers<E>(logger);
    this.hub = hubs.get(database) ?? new Set();
    hubs.set(database, this.hub);
    this.hub.add(this as InProcessEventBus<unknown>);
  }

  async publish(event: E): Promise<void> {
    for (const bus of this.hub) (bus as InProcessEventBus<E>).subscribers.deliver(event);
  }

  subscribe(listener: (event: E) => void): () => void {
    return this.subscribers.subscribe(listener);
  }

  onReconnect(): () => void {
    return () => {};
  }

  get listening(): boolean {
    return this.hub.has(this as InProcessEventBus<unknown>);
  }

  async close(): Promise<void> {
    this.hub.delete(this as InProcessEventBus<unknown>);
    if (this.hub.size === 0) hubs.delete(this.database);
  }
}

interface Envelope<E> {
  /** Publisher's bus id. */
  o: string;
  /** The event inline, or … */
  e?: E;
  /** … the id of its row in event_payloads. */
  r?: number;
}

/** PostgreSQL: LISTEN/NOTIFY, large events by id. */
export class PgNotifyEventBus<E> implements SharedEventBus<E> {
  private readonly subscribers: Subscribers<E>;
  private readonly reconnected = new EventEmitter();
  private client: pg.Client | undefined;
  private closed = false;
  private retryMs = 200;
  private retryTimer: NodeJS.Timeout | undefined;
  /** Incoming events are handled one after another, so fetching a large one does not reorder them. */
  private incoming: Promise<void> = Promise.resolve();

  private constructor(
    private readonly origin: string,
    private readonly db: Kysely<Database>,
    private readonly config: pg.ClientConfig,
    private readonly clock: Clock,
    private readonly logger?: Logger,
  ) {
    this.subscribers = new Subscribers<E>(logger);
  }

  /** Opens the bus; fails (INVENTORY_UNAVAILABLE) if the first LISTEN cannot be made. */
  static async open<E>(origin: string, db: Kysely<Database>, config: pg.ClientConfig, clock: Clock, logger?: Logger, toError: (err: unknown) => unknown = (e) => e): Promise<PgNotifyEventBus<E>> {
    const bus = new PgNotifyEventBus<E>(origin, db, config, clock, logger);
    try {
      await bus.listen();
    } catch (err) {
      throw toError(err);
    }
    return bus;
  }

  async publish(event: E): Promise<void> {
    this.subscribers.deliver(event);
    const inline = JSON.stringify({ o: this.origin, e: event } satisfies Envelope<E>);
    if (Buffer.byteLength(inline) <= NOTIFY_LIMIT) {
      await sql`select pg_notify(${EVENT_CHANNEL}, ${inline})`.execute(this.db);
      return;
    }
    const now = this.clock();
    const { id } = await this.db.insertInto('event_payloads').values({ origin: this.origin, payload: JSON.stringify(event), created_at: now }).returning('id').executeTakeFirstOrThrow();
    await sql`select pg_notify(${EVENT_CHANNEL}, ${JSON.stringify({ o: this.origin, r: id } satisfies Envelope<E>)})`.execute(this.db);
    await this.db.deleteFrom('event_payloads').where('created_at', '<', now - PAYLOAD_RETENTION_MS).execute();
  }

  subscribe(listener: (event: E) => void): () => void {
    return this.subscribers.subscribe(listener);
  }

  /** Called after the listening connection came back from an outage (events in between were missed). */
  onReconnect(listener: () => void): () => void {
    this.reconnected.on('reconnect', listener);
    return () => this.reconnected.off('reconnect', listener);
  }

  /** Whether the listening connection is up. */
  get listening(): boolean {
    return this.client !== undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => {});
    await this.incoming;
  }

  private async listen(): Promise<void> {
    const client = new pg.Client(this.config);
    client.on('notification', (msg) => {
      if (msg.channel === EVENT_CHANNEL && msg.payload) this.incoming = this.incoming.then(() => this.receive(msg.payload as string));
    });
    const broken = (err?: Error) => this.lost(client, err);
    client.on('error', broken);
    client.on('end', () => broken());
    try {
      await client.connect();
      await client.query(`listen ${EVENT_CHANNEL}`);
    } catch (err) {
      client.removeAllListeners('end');
      await client.end().catch(() => {});
      throw err;
    }
    this.client = client;
    this.retryMs = 200;
  }

  private lost(client: pg.Client, err?: Error): void {
    if (this.client !== client) return;
    this.client = undefined;
    client.removeAllListeners('end');
    void client.end().catch(() => {});
    if (this.closed) return;
    this.logger?.warn({ err: err?.message }, 'event bus: lost the LISTEN connection; reconnecting');
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.listen().then(
        () => {
          if (this.closed) return void this.close();
          this.logger?.info('event bus: listening again');
          this.reconnected.emit('reconnect');
        },
        () => {
          this.retryMs = Math.min(this.retryMs * 2, 5_000);
          this.scheduleReconnect();
        },
      );
    }, this.retryMs);
    this.retryTimer.unref();
  }

  private async receive(payload: string): Promise<void> {
    try {
      const envelope = JSON.parse(payload) as Envelope<E>;
      if (envelope.o === this.origin) return;
      if (envelope.r === undefined) return this.subscribers.deliver(envelope.e as E);
      const row = await this.db.selectFrom('event_payloads').select('payload').where('id', '=', envelope.r).executeTakeFirst();
      if (row) this.subscribers.deliver(JSON.parse(row.payload) as E);
      else this.logger?.warn({ id: envelope.r }, 'event bus: a large event expired before it was read');
    } catch (err) {
      this.logger?.warn({ err }, 'event bus: cannot read a notification');
    }
  }
}
