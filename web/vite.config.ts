// Builds the web console (web/src, Preact + TypeScript) into dist/console,
// which the daemon serves at /. Run through scripts/build-console.sh (cached
// on a hash of its inputs); OFFSHOOT_CONSOLE_OUT sets another output folder.
// No plugin: esbuild compiles the JSX for Preact. `npx vite --config
// web/vite.config.ts` serves it for development with the API proxied to
// OFFSHOOT_URL (sign in with the daemon's token).
import { resolve } from 'node:path';
import { defineConfig } from 'vite';

const API_PATHS = ['/health', '/host', '/hosts', '/vms', '/tasks', '/events', '/checkpoints', '/restore', '/datastores', '/disks', '/jobs', '/pools', '/metrics', '/openapi.json'];

export default defineConfig({
  root: import.meta.dirname,
  base: '/',
  logLevel: 'warn',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: process.env.OFFSHOOT_CONSOLE_OUT ?? resolve(import.meta.dirname, '../dist/console'),
    emptyOutDir: true,
    target: 'es2022',
    assetsDir: 'assets',
    reportCompressedSize: false,
  },
  server: process.env.OFFSHOOT_URL ? { proxy: Object.fromEntries(API_PATHS.map((p) => [p, { target: process.env.OFFSHOOT_URL, changeOrigin: true }])) } : {},
});
