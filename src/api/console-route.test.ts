// The console's static files: served without the token from the folder the
// build wrote, with the security headers; nothing outside it; a clear page
// when the console was not built.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Hono } from 'hono';
import { afterAll, describe, expect, it } from 'vitest';
import { mountConsole } from './console-route.ts';

describe('console files', () => {
  const root = mkdtempSync('/tmp/osh-console-route-');
  const dir = join(root, 'console');
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const app = new Hono();
  mountConsole(app, dir);
  app.get('*', (c) => c.text('past the console routes', 418));

  it('says how to build the console when it is not built', async () => {
    const res = await app.request('/');
    expect(res.status).toBe(503);
    expect(await res.text()).toContain('npm run setup');
  });

  it('serves index.html and hashed assets with their headers, and nothing outside the folder', async () => {
    mkdirSync(join(dir, 'assets'), { recursive: true });
    writeFileSync(join(dir, 'index.html'), '<!doctype html><title>x</title>');
    writeFileSync(join(dir, 'assets', 'app-1234.js'), 'export {};');
    writeFileSync(join(root, 'secret.txt'), 'not for the web');
    const index = await app.request('/');
    expect(index.status).toBe(200);
    expect(index.headers.get('content-security-policy')).toMatch(/default-src 'self'.*frame-ancestors 'none'/);
    expect(index.headers.get('cache-control')).toBe('no-cache');
    const asset = await app.request('/assets/app-1234.js');
    expect(asset.status).toBe(200);
    expect(asset.headers.get('content-type')).toMatch(/javascript/);
    expect(asset.headers.get('cache-control')).toContain('immutable');
    for (const path of ['/assets/missing.js', '/assets/../../secret.txt', '/assets/..%2f..%2fsecret.txt', '/assets/%2e%2e/secret.txt']) {
      const res = await app.request(path);
      expect(res.status, path).not.toBe(200);
      expect(await res.text(), path).not.toContain('not for the web');
    }
    expect((await app.request('/assets/missing.js')).status).toBe(404);
    expect((await app.request('/assets/missing.js')).headers.get('cache-control')).toBe('no-store');
    expect((await app.request('/vms')).status).toBe(418);
  });
});
