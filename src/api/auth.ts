// Bearer-token authentication: the token is created at first start in the
// daemon's home (mode 0600) and compared in constant time; a token that is
// not this home's is then checked against the inventory's API tokens (by
// hash), so every controller of a fleet accepts the same credentials.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, readFile } from 'node:fs/promises';
import type { MiddlewareHandler } from 'hono';
import { UnauthorizedError, writeFileAtomic } from '../common/index.ts';

/** Reads the token file, creating it with a fresh random token (mode 0600) if missing. */
export async function loadOrCreateToken(path: string): Promise<string> {
  try {
    const token = (await readFile(path, 'utf8')).trim();
    if (token.length >= 32) {
      await chmod(path, 0o600);
      return token;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const token = randomBytes(32).toString('base64url');
  await writeFileAtomic(path, `${token}\n`);
  await chmod(path, 0o600);
  return token;
}

export function bearerAuth(token: string, publicPaths: readonly string[], verifyOther?: (token: string) => Promise<boolean>): MiddlewareHandler {
  const expected = Buffer.from(token);
  return async (c, next) => {
    if (publicPaths.includes(c.req.path)) return next();
    const header = c.req.header('authorization') ?? '';
    const match = /^Bearer\s+(.+)$/i.exec(header);
    const text = match?.[1]?.trim() ?? '';
    const given = Buffer.from(text);
    const own = given.length === expected.length && timingSafeEqual(given, expected);
    if (!own && !(text && verifyOther && (await verifyOther(text)))) throw new UnauthorizedError();
    return next();
  };
}
