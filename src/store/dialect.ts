// Everything that differs between the inventory's two databases, in one
// place; the rest of the store is one Kysely code path for both:
// - column types: 64-bit integers (byte sizes, epoch milliseconds, versions)
//   are `integer` on SQLite (always 64-bit) and `bigint` on PostgreSQL, whose
//   `integer` is 32-bit; fractions are `real` on SQLite (8 bytes) and
//   `double precision` on PostgreSQL (its `real` is 4 bytes); auto-increment
//   keys are `integer primary key autoincrement` and `bigserial primary key`.
//   Booleans are integers 0/1 and JSON is text on both.
// - error classification: unique violations and "the database is gone".
// - row locks: `FOR UPDATE [SKIP LOCKED]` on PostgreSQL; on SQLite a write
//   excludes every other writer already, so the same statement needs none.
// - text order: PostgreSQL sorts by its collation, SQLite by bytes; ORDER BY
//   uses `COLLATE "C"` on PostgreSQL so both list in the same order.
// (Connections, the int8 parser and `BEGIN IMMEDIATE` live in connect.ts.)
import type { ColumnDefinitionBuilder, CreateTableBuilder, Expression, SelectQueryBuilder } from 'kysely';
import { sql } from 'kysely';

export type DialectName = 'sqlite' | 'postgres';

export interface StoreDialect {
  readonly name: DialectName;
  /** Column type of integers that may pass 2^31. */
  readonly int64: 'integer' | 'bigint';
  /** Column type of 8-byte fractions. */
  readonly float64: 'real' | 'double precision';
  /** Adds an auto-incrementing integer primary key column. */
  serialKey<T extends string, C extends string>(table: CreateTableBuilder<T, C>, column: string): CreateTableBuilder<T, C>;
  isUniqueViolation(err: unknown): boolean;
  /** Why the error means the database is unreachable, or undefined when it is some other error. */
  unavailableReason(err: unknown): string | undefined;
  /** Locks the selected rows for the rest of the transaction (skipping rows others hold when asked). */
  lockRows<DB, TB extends keyof DB, O>(query: SelectQueryBuilder<DB, TB, O>, mode: 'wait' | 'skip-locked'): SelectQueryBuilder<DB, TB, O>;
  /** A text column ordered by bytes. */
  byBytes(column: string): Expression<string>;
}

function errorCode(err: unknown): string {
  return err instanceof Error && 'code' in err ? String((err as { code: unknown }).code) : '';
}

const primaryKey = (c: ColumnDefinitionBuilder) => c.primaryKey();

export const sqliteDialect: StoreDialect = {
  name: 'sqlite',
  int64: 'integer',
  float64: 'real',
  serialKey: (table, column) => table.addColumn(column, 'integer', (c) => c.primaryKey().autoIncrement()),
  isUniqueViolation: (err) => errorCode(err).startsWith('SQLITE_CONSTRAINT'),
  unavailableReason(err) {
    const code = errorCode(err);
    // BUSY after busy_timeout, a disk or file that went away, a full disk.
    return /^SQLITE_(BUSY|LOCKED|IOERR|CANTOPEN|FULL|READONLY)/.test(code) ? `${code}: ${(err as Error).message}` : undefined;
  },
  lockRows: (query) => query,
  byBytes: (column) => sql.ref(column),
};

/** SQLSTATE classes and codes that mean the server or the connection is gone (or not there yet). */
const PG_UNAVAILABLE_STATES = /^(08|57P0[1-3]|53300)/;
const NODE_NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);

export const postgresDialect: StoreDialect = {
  name: 'postgres',
  int64: 'bigint',
  float64: 'double precision',
  serialKey: (table, column) => table.addColumn(column, 'bigserial', primaryKey),
  isUniqueViolation: (err) => errorCode(err) === '23505',
  unavailableReason(err) {
    if (!(err instanceof Error)) return undefined;
    const code = errorCode(err);
    if (NODE_NETWORK_CODES.has(code) || PG_UNAVAILABLE_STATES.test(code)) return `${code}: ${err.message}`;
    // node-postgres reports a lost or closed connection by message only.
    if (/Connection terminated|connection error|not queryable|timeout exceeded when trying to connect|Client was closed/i.test(err.message)) return err.message;
    if (err instanceof AggregateError && err.errors.some((e) => NODE_NETWORK_CODES.has(errorCode(e)))) return `${errorCode(err.errors[0])}: ${err.message || 'cannot connect'}`;
    return undefined;
  },
  lockRows: (query, mode) => (mode === 'skip-locked' ? query.forUpdate().skipLocked() : query.forUpdate()),
  byBytes: (column) => sql<string>`${sql.ref(column)} collate "C"`,
};
