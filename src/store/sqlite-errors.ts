// SQLite error classification shared by the inventory's tables.

/** True for a UNIQUE (or other constraint) violation reported by better-sqlite3. */
export function isUniqueViolation(err: unknown): boolean {
  return err instanceof Error && 'code' in err && String((err as { code: unknown }).code).startsWith('SQLITE_CONSTRAINT');
}
