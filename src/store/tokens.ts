// API tokens (table api_tokens), so every controller of a fleet accepts the
// same credentials. Only a token's sha256 is stored: tokens are 256 random
// bits, so a plain hash is as good as a slow one here and costs nothing per
// request; a stolen table yields no token. A controller imports the token of
// its home's token file at start (ensure), so a home upgraded to the inventory
// keeps working with the token its CLI already has.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import { AlreadyExistsError } from '../common/index.ts';
import type { StoreDialect } from './dialect.ts';
import type { Database } from './schema.ts';

export interface ApiTokenRecord {
  id: string;
  name: string;
  createdAt: string;
}

export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export class KyselyApiTokens {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  /** Creates a named token; the token itself is returned once and never stored. */
  async create(name: string): Promise<ApiTokenRecord & { token: string }> {
    const token = randomBytes(32).toString('base64url');
    return { ...(await this.insert(name, token)), token };
  }

  /** Stores a token that exists elsewhere (the home's token file) under a name, unless that token is already known. */
  async ensure(name: string, token: string): Promise<ApiTokenRecord> {
    const known = await this.db.selectFrom('api_tokens').select(['id', 'name', 'created_at']).where('hash', '=', tokenHash(token)).executeTakeFirst();
    if (known) return { id: known.id, name: known.name, createdAt: known.created_at };
    return this.insert(name, token);
  }

  /** The token's record if it is valid. */
  async verify(token: string): Promise<ApiTokenRecord | undefined> {
    if (token.length < 16) return undefined;
    const row = await this.db.selectFrom('api_tokens').select(['id', 'name', 'created_at']).where('hash', '=', tokenHash(token)).executeTakeFirst();
    return row && { id: row.id, name: row.name, createdAt: row.created_at };
  }

  async list(): Promise<ApiTokenRecord[]> {
    return (await this.db.selectFrom('api_tokens').select(['id', 'name', 'created_at']).orderBy(this.dialect.byBytes('name')).execute()).map((r) => ({ id: r.id, name: r.name, createdAt: r.created_at }));
  }

  /** Removes a token by name; returns whether it existed. */
  async revoke(name: string): Promise<boolean> {
    const result = await this.db.deleteFrom('api_tokens').where('name', '=', name).executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }

  private async insert(name: string, token: string): Promise<ApiTokenRecord> {
    const record = { id: randomUUID(), name, createdAt: new Date().toISOString() };
    try {
      await this.db.insertInto('api_tokens').values({ id: record.id, name, hash: tokenHash(token), created_at: record.createdAt }).execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('API token', name);
      throw err;
    }
    return record;
  }
}
