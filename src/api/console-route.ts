// The web console's static files, served by the daemon at / (same origin as
// the API). They hold no data, so they are served without the token; every
// API call the console makes carries it. The files are built at set-up by
// scripts/build-console.sh (Vite) into dist/console: index.html at / and
// content-hashed files under /assets/ (cached for a year). The console routes
// by the URL's hash (#/vms/NAME), so no API path is ever shadowed. A daemon
// whose console was not built answers / with a page that says how to build it.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serveStatic } from '@hono/node-server/serve-static';
import type { Hono } from 'hono';
import { NotFoundError } from '../common/index.ts';

/** dist/console of this checkout. */
export const DEFAULT_CONSOLE_DIR = fileURLToPath(new URL('../../dist/console', import.meta.url));

/** The console only loads its own files and talks only to its own origin. */
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

const NOT_BUILT = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Offshoot console not built</title></head>
<body><h1>The Offshoot console is not built</h1>
<p>Run <code>npm run setup</code> (or <code>bash scripts/build-console.sh</code>) in the Offshoot checkout, then reload. The API works without it.</p>
</body></html>
`;

/** Mounts GET / and GET /assets/*; register it before the token check. */
export function mountConsole(app: Hono, dir: string = DEFAULT_CONSOLE_DIR): void {
  const index = join(dir, 'index.html');
  app.get('/', async (c) => {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) c.header(name, value);
    c.header('cache-control', 'no-cache');
    if (!existsSync(index)) return c.html(NOT_BUILT, 503);
    return c.html(await readFile(index, 'utf8'), 200);
  });
  const assets = serveStatic({
    // The request path (serveStatic refuses "..", "//", backslashes and %-escapes in it) is resolved under dir; root "/"
    // rather than dir so that a console built after the daemon started is served, and an unbuilt one logs nothing.
    root: '/',
    rewriteRequestPath: (path) => join(dir, path),
  });
  app.get('/assets/*', (c, next) => {
    // Set before the file is served: serveStatic builds its response before its onFound hook runs.
    c.header('cache-control', 'public, max-age=31536000, immutable');
    c.header('x-content-type-options', 'nosniff');
    return assets(c, next);
  });
  app.get('/assets/*', (c) => {
    c.header('cache-control', 'no-store');
    return c.json(new NotFoundError('console file', c.req.path).toJSON(), 404);
  });
}
