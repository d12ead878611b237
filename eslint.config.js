// Lint rules. Besides the recommended sets, this enforces the layering in
// DESIGN.md: a folder under src/ is imported only through its index.ts, and
// lower layers never import higher ones.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import importX, { createNodeResolver } from 'eslint-plugin-import-x';

/** Layers from the bottom up; a layer may import only layers before it. `lab` (the test-host lab, a dev tool) sits on top. */
const LAYERS = ['common', 'qemu', 'guest', 'storage', 'memory', 'net', 'protocol', 'agent', 'vm', 'store', 'api', 'client', 'cli', 'lab'];

function layerRules(layer) {
  const index = LAYERS.indexOf(layer);
  const higher = LAYERS.slice(index + 1);
  const patterns = [
    {
      regex: '^(\\.\\./)+[^./][^/]*/(?!(index|browser)\\.ts$).+$',
      message: 'Import another layer only through its index.ts (or browser.ts, its part a browser can load).',
    },
  ];
  if (higher.length > 0) {
    patterns.push({
      regex: `^(\\.\\./)+(${higher.join('|')})/`,
      message: `Layer "${layer}" must not import a higher layer (${higher.join(', ')}).`,
    });
  }
  return {
    files: [`src/${layer}/**/*.ts`],
    rules: { 'no-restricted-imports': ['error', { patterns }] },
  };
}

export default tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', '.cache/**', 'bench/results/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', console: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', Buffer: 'readonly', URL: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly', fetch: 'readonly', TextEncoder: 'readonly', TextDecoder: 'readonly', setImmediate: 'readonly', structuredClone: 'readonly', Response: 'readonly', Request: 'readonly', ReadableStream: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  ...LAYERS.map(layerRules),
  // No import cycles inside the code (a module that needs another's types and the other needs it back
  // wants a third module both import, as vm/fork/fork-journal.ts is).
  {
    files: ['src/**/*.ts'],
    plugins: { 'import-x': importX },
    settings: { 'import-x/extensions': ['.ts'], 'import-x/resolver-next': [createNodeResolver({ extensions: ['.ts'] })] },
    rules: { 'import-x/no-cycle': ['error', { ignoreExternal: true }] },
  },
  {
    // The web console runs in a browser: no Node modules or globals, and of Offshoot only the client's browser surface.
    files: ['web/src/**/*.ts', 'web/src/**/*.tsx'],
    ignores: ['web/src/**/*.test.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ regex: '^node:', message: 'The console runs in a browser.' }, { regex: '^(\\.\\./)+src/(?!client/browser\\.ts$)', message: 'The console imports Offshoot only through src/client/browser.ts.' }] }],
      'no-restricted-globals': ['error', 'Buffer', 'process', 'require'],
    },
  },
);
