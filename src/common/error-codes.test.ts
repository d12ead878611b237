// Every code thrown in src/ is registered, with the status it is thrown with:
// an unregistered code would travel over the agent protocol as INTERNAL.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, isErrorCode, statusOf } from './error-codes.ts';

const SRC = join(import.meta.dirname, '..');
// `new OffshootError('CODE', message, details, status[, { cause }]);` and the same as a subclass's super(...).
const THROW_SITE = /(?:new OffshootError|super)\(\s*'([A-Z][A-Z0-9_]+)',[\s\S]*?,\s*(\d{3})\s*(?:,\s*\{[^;]*?\})?\)\s*;/g;

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : sources(path);
    return e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [path] : [];
  });
}

describe('error codes', () => {
  it('registers every code thrown in src/, with the status it is thrown with', () => {
    const unregistered: string[] = [];
    const mismatched: string[] = [];
    let sites = 0;
    for (const file of sources(SRC)) {
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(THROW_SITE)) {
        // A match that runs over into another statement is not one throw site.
        if (m[0].slice(0, -1).includes(';')) continue;
        sites++;
        const [, code, status] = m as unknown as [string, string, string];
        if (!isErrorCode(code)) unregistered.push(`${code} (${file.slice(SRC.length + 1)})`);
        else if (statusOf(code) !== Number(status)) mismatched.push(`${code}: thrown with ${status}, registered ${statusOf(code)} (${file.slice(SRC.length + 1)})`);
      }
    }
    expect(sites).toBeGreaterThan(100);
    expect(unregistered).toEqual([]);
    expect(mismatched).toEqual([]);
  });

  it('answers 500 for an unknown code', () => {
    expect(statusOf('NO_SUCH_CODE')).toBe(500);
    expect(isErrorCode('INTERNAL')).toBe(true);
    expect(Object.values(ERROR_CODES).every((s) => s >= 400 && s < 600)).toBe(true);
  });
});
