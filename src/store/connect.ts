// Opens the inventory's database from a location: a PostgreSQL URL
// (postgres://… or postgresql://…) or a SQLite file path (optionally
// `sqlite:PATH`). Both get one Kysely instance whose driver is wrapped so that
// every error meaning "the database is gone" becomes INVENTORY_UNAVAILABLE
// (HTTP 503) instead of an internal error. PostgreSQL runs over a pg.Pool:
// connections that break are dropped by the pool and new ones made on the
// next query, so the inventory recovers by itself when the server is back.
// int8 columns come back as JS numbers (refused past 2^53). SQLite
// transactions begin IMMEDIATE, so a read-then-write transaction never fails
// half-way on a lock upgrade.
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { CompiledQuery, Kysely, PostgresDialect, SqliteDialect } from 'kysely';
import type { DatabaseConnection, Dialect, Driver, QueryCompiler, QueryResult, TransactionSettings } from 'kysely';
import pg from 'pg';
import { NotFoundError, homePaths } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import { InventoryUnavailableError } from './errors.ts';
import type { Database } from './schema.ts';
import { postgresDialect, sqliteDialect } from './dialect.ts';
import type { StoreDialect } from './dialect.ts';

export interface DatabaseLocation {
  dialect: StoreDialect;
  /** The URL or the absolute file path. */
  target: string;
  /** For messages and logs: the target with any password hidden. */
  display: string;
}

/** Where a home's inventory is: the given location (--database), else OFFSHOOT_DATABASE_URL, else the home's SQLite file. */
export function inventoryLocation(home: string, database?: string, env: NodeJS.ProcessEnv = process.env): string {
  return database || env.OFFSHOOT_DATABASE_URL || homePaths(home).inventory;
}

export function parseDatabaseLocation(location: string): DatabaseLocation {
  if (/^postgres(ql)?:\/\//i.test(location)) {
    let display = location;
    try {
      const url = new URL(location);
      if (url.password) url.password = '***';
      display = url.toString();
    } catch {
      display = 'postgres://(unparsable URL)';
    }
    return { dialect: postgresDialect, target: location, display };
  }
  const path = location === ':memory:' ? location : resolve(location.replace(/^sqlite:/i, ''));
  return { dialect: sqliteDialect, target: path, display: path };
}

export interface DatabaseHandle {
  db: Kysely<Database>;
  dialect: StoreDialect;
  location: DatabaseLocation;
  /** PostgreSQL only: settings for a dedicated connection (LISTEN). */
  pgClientConfig?: pg.ClientConfig;
  close(): Promise<void>;
}

export interface ConnectOptions {
  logger?: Logger;
  /** PostgreSQL connections per controller (default 10). */
  poolSize?: number;
  /** SQLite: refuse (NOT_FOUND) instead of creating a missing file. */
  mustExist?: boolean;
}

function parseInt8(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new RangeError(`int8 value ${value} is past what a JS number holds exactly`);
  return n;
}

/** pg type parsers: int8 (bigint, bigserial, count(*)) as numbers; everything else as pg does. */
const PG_TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => (oid === pg.types.builtins.INT8 && format !== 'binary' ? parseInt8 : pg.types.getTypeParser(oid, format as 'text'))) as pg.CustomTypesConfig['getTypeParser'],
};

export async function connect(location: string, options: ConnectOptions = {}): Promise<DatabaseHandle> {
  const where = parseDatabaseLocation(location);
  const { dialect } = where;
  const toError = (err: unknown): unknown => {
    const reason = dialect.unavailableReason(err);
    return reason === undefined ? err : new InventoryUnavailableError(dialect.name, reason, { cause: err });
  };
  if (dialect.name === 'postgres') {
    const pgClientConfig: pg.ClientConfig = { connectionString: where.target, types: PG_TYPES, keepAlive: true, connectionTimeoutMillis: 5_000, application_name: 'offshoot' };
    const pool = new pg.Pool({ ...pgClientConfig, max: options.poolSize ?? 10, idleTimeoutMillis: 30_000 });
    // An idle connection the server closed (restart, outage): the pool drops it and makes a new one on demand.
    pool.on('error', (err) => options.logger?.warn({ err: err.message }, 'inventory: idle PostgreSQL connection lost'));
    const db = new Kysely<Database>({ dialect: guarded(new PostgresDialect({ pool }), toError) });
    return { db, dialect, location: where, pgClientConfig, close: () => db.destroy() };
  }
  if (where.target !== ':memory:') {
    if (options.mustExist && !existsSync(where.target)) throw new NotFoundError('inventory', where.target);
    mkdirSync(dirname(where.target), { recursive: true, mode: 0o700 });
  }
  const sqlite = new BetterSqlite3(where.target);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('busy_timeout = 5000');
  sqlite.pragma('foreign_keys = ON');
  const db = new Kysely<Database>({ dialect: guarded(new SqliteDialect({ database: sqlite }), toError, 'begin immediate') });
  return { db, dialect, location: where, close: () => db.destroy() };
}

/** A dialect whose driver maps errors (and optionally begins transactions its own way). */
function guarded(inner: Dialect, toError: (err: unknown) => unknown, begin?: string): Dialect {
  return {
    createAdapter: () => inner.createAdapter(),
    createQueryCompiler: () => inner.createQueryCompiler(),
    createIntrospector: (db) => inner.createIntrospector(db),
    createDriver: () => new GuardedDriver(inner.createDriver(), toError, begin),
  };
}

class GuardedConnection implements DatabaseConnection {
  constructor(
    readonly inner: DatabaseConnection,
    private readonly toError: (err: unknown) => unknown,
  ) {}

  async executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    try {
      return await this.inner.executeQuery<R>(query);
    } catch (err) {
      throw this.toError(err);
    }
  }

  async *streamQuery<R>(query: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> {
    try {
      yield* this.inner.streamQuery<R>(query, chunkSize);
    } catch (err) {
      throw this.toError(err);
    }
  }
}

class GuardedDriver implements Driver {
  constructor(
    private readonly inner: Driver,
    private readonly toError: (err: unknown) => unknown,
    private readonly begin: string | undefined,
  ) {}

  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.toError(err);
    }
  }

  init(): Promise<void> {
    return this.guard(() => this.inner.init());
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    return new GuardedConnection(await this.guard(() => this.inner.acquireConnection()), this.toError);
  }

  beginTransaction(c: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    const conn = (c as GuardedConnection).inner;
    if (this.begin) return this.guard(async () => void (await conn.executeQuery(CompiledQuery.raw(this.begin as string))));
    return this.guard(() => this.inner.beginTransaction(conn, settings));
  }

  commitTransaction(c: DatabaseConnection): Promise<void> {
    return this.guard(() => this.inner.commitTransaction((c as GuardedConnection).inner));
  }

  rollbackTransaction(c: DatabaseConnection): Promise<void> {
    return this.guard(() => this.inner.rollbackTransaction((c as GuardedConnection).inner));
  }

  savepoint(c: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    return this.guard(async () => this.inner.savepoint?.((c as GuardedConnection).inner, name, compile));
  }

  rollbackToSavepoint(c: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    return this.guard(async () => this.inner.rollbackToSavepoint?.((c as GuardedConnection).inner, name, compile));
  }

  releaseSavepoint(c: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    return this.guard(async () => this.inner.releaseSavepoint?.((c as GuardedConnection).inner, name, compile));
  }

  releaseConnection(c: DatabaseConnection): Promise<void> {
    return this.inner.releaseConnection((c as GuardedConnection).inner);
  }

  destroy(): Promise<void> {
    return this.inner.destroy();
  }
}
