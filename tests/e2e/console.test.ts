// The web console end to end: a real daemon (with --metrics-listen), the real
// guest under QEMU, and Debian's Chromium driven headless by playwright-core.
// A wrong token shows a sign-in error; then sign in, create a VM and watch its
// start task complete, fork it into 2 and see the children on the task, in
// the VM list and in the fork tree, run a checkpoint and see its progress bar
// move, see a failed fork's error code, clone a running VM (linked) and delete
// the clone, power a child off and delete it (each asked first); the layout holds
// in a narrow window with the dark theme. GET /metrics is parsed by a strict
// Prometheus text-format parser and checked for the series after the fork and
// the checkpoint. Screenshots of every page go to test-output/console/.
// One VM boots; its two children are forks (no boot).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import type { BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import type { TestHome } from '../harness.ts';
import { REPO, closeTestDaemon, eventually, makeTestHome } from '../harness.ts';

const CHROMIUM = '/usr/bin/chromium';
const OUT = join(REPO, 'test-output', 'console');
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const BOOT_MS = 120_000;

// ---- A strict parser of the Prometheus text format (version 0.0.4) ----------------------------------
type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  type: MetricType;
  help: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const SUFFIXES: Record<MetricType, string[]> = { counter: [''], gauge: [''], untyped: [''], histogram: ['_bucket', '_sum', '_count'], summary: ['', '_sum', '_count'] };

function parseValue(text: string, line: string): number {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad value "${text}" in: ${line}`);
  return Number(text);
}

function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('=', i);
    const name = text.slice(i, eq);
    if (eq < 0 || !LABEL_NAME.test(name) || text[eq + 1] !== '"') throw new Error(`bad label at ${i} in: ${line}`);
    let value = '';
    let j = eq + 2;
    for (; j < text.length && text[j] !== '"'; j++) {
      if (text[j] === '\\') {
        const next = text[++j];
        if (next === 'n') value += '\n';
        else if (next === '\\' || next === '"') value += next;
        else throw new Error(`bad escape in: ${line}`);
      } else value += text[j];
    }
    if (text[j] !== '"') throw new Error(`unterminated label value in: ${line}`);
    if (name in labels) throw new Error(`label ${name} twice in: ${line}`);
    labels[name] = value;
    i = j + 1;
    if (i < text.length) {
      if (text[i] !== ',') throw new Error(`expected "," at ${i} in: ${line}`);
      i++;
    }
  }
  return labels;
}

function parsePrometheusText(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const familyOf = (sample: string): [string, Family] | undefined => {
    for (const [name, family] of families) if (SUFFIXES[family.type].some((s) => `${name}${s}` === sample)) return [name, family];
    return undefined;
  };
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta as unknown as [string, string, string, string];
      if (!METRIC_NAME.test(name)) throw new Error(`bad metric name in: ${line}`);
      const family = families.get(name) ?? { type: 'untyped', help: '', samples: [] };
      if (kind === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) throw new Error(`bad type in: ${line}`);
        if (family.samples.length) throw new Error(`TYPE after samples in: ${line}`);
        family.type = rest as MetricType;
      } else family.help = rest;
      families.set(name, family);
      continue;
    }
    if (line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    if (!sample) throw new Error(`bad sample line: ${line}`);
    const [, name, labelText, valueText] = sample as unknown as [string, string, string | undefined, string];
    const owner = familyOf(name);
    if (!owner) throw new Error(`sample ${name} of no declared family (TYPE missing): ${line}`);
    const labels = labelText ? parseLabels(labelText, line) : {};
    if (owner[1].type === 'histogram' && name.endsWith('_bucket') && !('le' in labels)) throw new Error(`bucket without le: ${line}`);
    owner[1].samples.push({ name, labels, value: parseValue(valueText, line) });
  }
  return families;
}

function samples(families: Map<string, Family>, name: string, match: Record<string, string> = {}): Sample[] {
  const base = name.replace(/_(bucket|sum|count)$/, '');
  const family = families.get(name) ?? families.get(base);
  return (family?.samples ?? []).filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

function one(families: Map<string, Family>, name: string, match: Record<string, string> = {}): number {
  const found = samples(families, name, match);
  if (found.length !== 1) throw new Error(`expected one sample ${name}${JSON.stringify(match)}, found ${found.length}`);
  return (found[0] as Sample).value;
}

/** Buckets never decrease, and +Inf equals _count. */
function checkHistogram(families: Map<string, Family>, name: string, match: Record<string, string> = {}): number {
  const buckets = samples(families, `${name}_bucket`, match);
  expect(buckets.length, name).toBeGreaterThan(1);
  for (let i = 1; i < buckets.length; i++) expect((buckets[i] as Sample).value).toBeGreaterThanOrEqual((buckets[i - 1] as Sample).value);
  const count = one(families, `${name}_count`, match);
  expect(buckets.at(-1)?.labels.le).toBe('+Inf');
  expect(buckets.at(-1)?.value).toBe(count);
  return count;
}

describe('parsePrometheusText', () => {
  it('reads families, labels with escapes and histograms, and refuses what is malformed', () => {
    const families = parsePrometheusText('# HELP a_total A thing\n# TYPE a_total counter\na_total{k="x\\"y",l="1"} 3\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1.5\nh_count 2\n');
    expect(one(families, 'a_total', { k: 'x"y' })).toBe(3);
    expect(checkHistogram(families, 'h')).toBe(2);
    expect(() => parsePrometheusText('x 1\n')).toThrow(/no declared family/);
    expect(() => parsePrometheusText('# TYPE x gauge\nx{a="1} 1\n')).toThrow();
    expect(() => parsePrometheusText('# TYPE x gauge\nx one\n')).toThrow(/bad value/);
    expect(() => parsePrometheusText('# TYPE x gauge\nx 1')).toThrow(/newline/);
  });
});

// ---- The console ---------------------------------------------------------------------------------------
describe('web console (real daemon, guest and Chromium)', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  const pageErrors: string[] = [];
  const shots: string[] = [];

  const shot = async (name: string) => {
    const path = join(OUT, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    shots.push(path);
  };
  const task = (kind: string, target: string, state?: string) => page.locator(`li[data-kind="${kind}"][data-target="${target}"]${state ? `[data-state="${state}"]` : ''}`);
  const dialog = () => page.locator('dialog[open]');
  /** Records what the page shows of a task of `kind` at every change of the page: state, progress, phase, children. */
  type Shown = { state: string; value: number; phase: string; children: string[] };
  const recordTask = (kind: string) =>
    page.evaluate((k) => {
      const seen: Shown[] = [];
      (window as unknown as Record<string, Shown[]>)[`shown:${k}`] = seen;
      new MutationObserver(() => {
        const item = document.querySelector(`li[data-kind="${k}"]`);
        const bar = item?.querySelector('progress');
        if (item && bar) seen.push({ state: item.getAttribute('data-state') ?? '', value: bar.value, phase: item.querySelector('[data-phase]')?.textContent ?? '', children: [...item.querySelectorAll('[data-child]')].map((c) => c.getAttribute('data-child') ?? '') });
      }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    }, kind);
  const shown = (kind: string) => page.evaluate((k) => (window as unknown as Record<string, Shown[]>)[`shown:${k}`] ?? [], kind);
  const metrics = async (url = daemon.url, token: string | null = daemon.token) => fetch(`${url}/metrics`, token ? { headers: { authorization: `Bearer ${token}` } } : {});

  beforeAll(async () => {
    execFileSync('bash', [join(REPO, 'scripts', 'build-console.sh')], { stdio: 'inherit' });
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run npm test (scripts/setup.sh --test installs Debian's chromium)`);
    rmSync(OUT, { recursive: true, force: true });
    mkdirSync(OUT, { recursive: true });
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir, metricsListen: '127.0.0.1:0' });
    profile = mkdtempSync('/tmp/osh-console-chrome-');
    // playwright passes a new empty --user-data-dir (the profile folder) itself.
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1280, height: 900 }, colorScheme: 'light', locale: 'en-GB' });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (err) => pageErrors.push(err.message));
    // Browser console errors too (a Content-Security-Policy violation is one). The browser also logs each API answer
    // of 4xx (the wrong token's 401, the duplicate name's 409), which the console handles and shows: those are expected.
    page.on('console', (message) => {
      if (message.type() === 'error' && !/^Failed to load resource: the server responded with a status of 4\d\d/.test(message.text())) pageErrors.push(message.text());
    });
    page.setDefaultTimeout(30_000);
  });

  afterAll(async () => {
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    if (daemon) await closeTestDaemon(daemon, t);
    if (shots.length) process.stdout.write(`console screenshots:\n${shots.map((s) => `  ${s}`).join('\n')}\n`);
  });

  it('serves its files without the token, with a content security policy, and nothing else without it', async () => {
    const index = await fetch(`${daemon.url}/`);
    expect(index.status).toBe(200);
    expect(index.headers.get('content-security-policy')).toContain("default-src 'self'");
    const html = await index.text();
    const script = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
    expect(script).toBeDefined();
    const asset = await fetch(`${daemon.url}${script}`);
    expect(asset.status).toBe(200);
    expect(asset.headers.get('content-type')).toMatch(/javascript/);
    expect((await fetch(`${daemon.url}/assets/nothing.js`)).status).toBe(404);
    expect((await fetch(`${daemon.url}/assets/..%2f..%2fpackage.json`)).status).toBe(404);
    expect((await fetch(`${daemon.url}/vms`)).status).toBe(401);
  });

  it('shows a clear sign-in error for a wrong token', async () => {
    await page.goto(`${daemon.url}/`);
    await page.getByLabel('API token').fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const error = page.locator('.sign-in-error');
    await expect.poll(() => error.textContent(), { timeout: 20_000 }).toContain('The daemon refused this token.');
    expect(await error.locator('.code').textContent()).toBe('UNAUTHORIZED');
    expect(await page.evaluate(() => sessionStorage.getItem('offshoot.token'))).toBeNull();
    await shot('01-sign-in-error');
  });

  it('signs in, creates a VM and watches its start task complete', async () => {
    await page.getByLabel('API token').fill(daemon.token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: /Virtual machines/ }).waitFor();
    // The token lives in this tab's session only.
    expect(await page.evaluate(() => [sessionStorage.getItem('offshoot.token'), localStorage.length, document.cookie])).toEqual([daemon.token, 0, '']);
    await page.locator('.stream-live').waitFor();

    await page.getByRole('button', { name: 'New VM' }).click();
    await dialog().getByLabel('Name', { exact: true }).fill('web');
    await dialog().getByRole('button', { name: 'Create' }).click();
    await page.locator('section.vm-detail[data-vm="web"]').waitFor();

    // Keyboard: t opens the tasks page.
    await page.locator('body').press('t');
    await page.getByRole('heading', { name: /Tasks/ }).waitFor();
    await task('vm.start', 'web').waitFor();
    await task('vm.start', 'web', 'succeeded').waitFor({ timeout: BOOT_MS });
    expect(await task('vm.start', 'web').locator('progress').evaluate((p) => (p as HTMLProgressElement).value)).toBe(1);
    expect(await task('vm.start', 'web').locator('.result').textContent()).toBe('running');
    await shot('02-tasks-start');

    // An API error shows its code and message: a second VM named web.
    await page.locator('body').press('v');
    await page.getByRole('button', { name: 'New VM' }).click();
    await dialog().getByLabel('Name', { exact: true }).fill('web');
    await dialog().getByRole('button', { name: 'Create' }).click();
    await expect.poll(() => dialog().locator('.notice .code').textContent(), { timeout: 20_000 }).toBe('ALREADY_EXISTS');
    expect(await dialog().locator('.notice .message').textContent()).toContain('"web" already exists');
    await shot('03-error-in-dialog');
    await page.keyboard.press('Escape');
    await dialog().waitFor({ state: 'detached' });
  }, 300_000);

  it('forks the VM into 2 and shows the children, on the task, in the list and in the fork tree', async () => {
    await page.goto(`${daemon.url}/#/vms/web`);
    await recordTask('vm.fork');
    await page.getByRole('button', { name: 'Fork…' }).click();
    await dialog().getByLabel('Children', { exact: true }).fill('2');
    await dialog().getByRole('button', { name: 'Fork' }).click();
    await page.getByRole('heading', { name: /Tasks/ }).waitFor();
    await task('vm.fork', 'web', 'succeeded').waitFor({ timeout: BOOT_MS });
    const fork = task('vm.fork', 'web');
    expect(await fork.locator('[data-child]').evaluateAll((els) => els.map((e) => e.getAttribute('data-child')))).toEqual(['web-c1', 'web-c2']);
    expect(await fork.locator('.result').textContent()).toMatch(/^2 children \(web-c1, web-c2\); stun \d/);
    // Each child showed on the task as it appeared, while the fork still ran.
    const duringFork = (await shown('vm.fork')).filter((s) => s.state === 'running');
    expect(duringFork.some((s) => s.children.length > 0), JSON.stringify(duringFork.slice(-5))).toBe(true);
    expect(duringFork.some((s) => s.value > 0 && s.value < 1)).toBe(true);

    await page.locator('body').press('v');
    for (const name of ['web', 'web-c1', 'web-c2']) await page.locator(`tr[data-vm="${name}"] .badge.state-running`).waitFor();
    expect(await page.locator('tr[data-vm="web-c1"] td[data-label="Memory mode"]').textContent()).toMatch(/^derived \(template [0-9a-f]{8}\)$/);
    // Arrow keys move along the rows.
    await page.locator('tr[data-vm="web"] a').focus();
    await page.keyboard.press('ArrowDown');
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('web-c1');
    await shot('04-vms');

    await page.locator('body').press('f');
    await page.getByRole('heading', { name: 'Fork tree' }).waitFor();
    // web -> its template -> web-c1, web-c2; the template's saving is shown once the memory of its VMs is read.
    const source = page.locator('li.node-vm', { has: page.locator(':scope > .label[data-tree-vm="web"]') });
    const template = source.locator(':scope > ul > li.node-template');
    await expect.poll(() => template.locator(':scope > ul > li.node-vm > .label').evaluateAll((els) => els.map((e) => e.getAttribute('data-tree-vm'))), { timeout: 20_000 }).toEqual(['web-c1', 'web-c2']);
    await expect.poll(() => template.locator(':scope > .label').textContent(), { timeout: 20_000 }).toMatch(/mapped by 3 VMs · saves \d+(\.\d+)? (KiB|MiB|GiB)/);
    await shot('05-fork-tree');

    await page.locator('body').press('h');
    await expect.poll(() => page.locator('[data-testid="host-saved"]').textContent(), { timeout: 20_000 }).toMatch(/^[1-9][\d.]* (KiB|MiB|GiB)$/);
    await shot('06-hosts');
  }, 300_000);

  it('runs a checkpoint and shows its progress', async () => {
    await page.goto(`${daemon.url}/#/vms/web`);
    await page.locator('section.vm-detail[data-vm="web"]').waitFor();
    await recordTask('vm.checkpoint');
    await page.getByRole('button', { name: 'Checkpoint…' }).click();
    await dialog().getByLabel('Name', { exact: true }).fill('web-ck1');
    await dialog().getByRole('button', { name: 'Checkpoint' }).click();
    await task('vm.checkpoint', 'web').waitFor();
    if ((await task('vm.checkpoint', 'web').getAttribute('data-state')) === 'running') await shot('07-checkpoint-running');
    await task('vm.checkpoint', 'web', 'succeeded').waitFor({ timeout: BOOT_MS });
    const seen = await shown('vm.checkpoint');
    const between = seen.filter((s) => s.value > 0 && s.value < 1);
    expect(between.length, JSON.stringify(seen.slice(0, 20))).toBeGreaterThan(0);
    expect(new Set(between.map((s) => s.value)).size).toBeGreaterThan(1);
    expect(seen.some((s) => /stun|written|preparing/.test(s.phase))).toBe(true);
    expect(seen.at(-1)?.value).toBe(1);
    expect(await task('vm.checkpoint', 'web').locator('.result').textContent()).toMatch(/^web-ck1: stun \d/);
    await shot('08-tasks');

    await page.goto(`${daemon.url}/#/vms/web`);
    await page.locator('tr[data-checkpoint="web-ck1"] .badge.state-complete').waitFor();
    await expect.poll(() => page.locator('[data-console]').textContent(), { timeout: 20_000 }).not.toBe('Reading…');
    expect(await page.locator('ul.disks > li').count()).toBeGreaterThan(0);
    expect(await page.locator('ol.chain li').count()).toBeGreaterThan(1);
    await shot('09-vm-detail');
  }, 300_000);

  it('serves Prometheus metrics with the fleet, task and timing series', async () => {
    expect((await metrics(daemon.url, null)).status).toBe(401);
    const response = await metrics();
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const families = parsePrometheusText(await response.text());
    const web = await daemon.engine.resolve('web');
    // Series are labelled with the host's name.
    const host = daemon.engine.hostName(web.hostId);
    const templateId = web.runtime?.memory.templateId as string;

    expect(families.get('offshoot_vms')?.type).toBe('gauge');
    expect(one(families, 'offshoot_vms', { state: 'running', host })).toBe(3);
    expect(one(families, 'offshoot_vms', { state: 'stopped', host })).toBe(0);
    expect(families.get('offshoot_tasks_total')?.type).toBe('counter');
    expect(one(families, 'offshoot_tasks_total', { kind: 'vm.start', outcome: 'succeeded' })).toBe(1);
    expect(one(families, 'offshoot_tasks_total', { kind: 'vm.fork', outcome: 'succeeded' })).toBe(1);
    expect(one(families, 'offshoot_tasks_total', { kind: 'vm.checkpoint', outcome: 'succeeded' })).toBe(1);
    expect(checkHistogram(families, 'offshoot_task_duration_seconds', { kind: 'vm.fork', outcome: 'succeeded' })).toBe(1);
    expect(checkHistogram(families, 'offshoot_fork_stun_seconds')).toBe(1);
    expect(one(families, 'offshoot_fork_stun_seconds_sum')).toBeGreaterThan(0);
    expect(one(families, 'offshoot_fork_children_total')).toBe(2);
    expect(checkHistogram(families, 'offshoot_checkpoint_stun_seconds')).toBe(1);
    expect(checkHistogram(families, 'offshoot_migration_downtime_seconds')).toBe(0);
    expect(checkHistogram(families, 'offshoot_migration_seconds')).toBe(0);
    for (const name of ['offshoot_restore_seconds', 'offshoot_restore_running_seconds', 'offshoot_copy_throughput_bytes_per_second']) expect(families.get(name)?.type, name).toBe('histogram');
    for (const name of ['offshoot_copy_bytes_total', 'offshoot_copy_jobs_total', 'offshoot_task_errors_total']) expect(families.get(name)?.type, name).toBe('counter');
    // The three VMs map the template made by the fork (the checkpoint made web a template of its own).
    const templates = samples(families, 'offshoot_template_vms');
    expect(templates.reduce((n, s) => n + s.value, 0)).toBe(3);
    expect(one(families, 'offshoot_template_vms', { template: templateId, host })).toBeGreaterThanOrEqual(1);
    expect(samples(families, 'offshoot_template_saved_bytes').some((s) => s.value > 0)).toBe(true);
    expect(one(families, 'offshoot_vms_memory_bytes', { host, kind: 'saved' })).toBeGreaterThan(0);
    expect(one(families, 'offshoot_vms_memory_bytes', { host, kind: 'rss' })).toBeGreaterThan(one(families, 'offshoot_vms_memory_bytes', { host, kind: 'pss' }));
    // The daemon's own process metrics.
    expect(one(families, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(families.get('process_cpu_user_seconds_total')?.type).toBe('counter');
    expect(families.get('nodejs_eventloop_lag_seconds')?.type).toBe('gauge');

    // --metrics-listen: the same metrics on a listener of their own, behind the same token, and nothing else there.
    expect(daemon.metricsUrl).toBeDefined();
    const separate = parsePrometheusText(await (await metrics(daemon.metricsUrl)).text());
    expect(one(separate, 'offshoot_vms', { state: 'running', host })).toBe(3);
    expect((await metrics(daemon.metricsUrl, null)).status).toBe(401);
    expect((await fetch(`${daemon.metricsUrl}/vms`, { headers: { authorization: `Bearer ${daemon.token}` } })).status).toBe(404);
  });

  it('shows a failed task with its error code, and the VMs as they were', async () => {
    // Children named web-c1 exist: a fork with that prefix fails at its plan, before anything starts.
    await page.goto(`${daemon.url}/#/vms/web`);
    await page.getByRole('button', { name: 'Fork…' }).click();
    await dialog().getByLabel('Children', { exact: true }).fill('1');
    await dialog().getByLabel('Name prefix').fill('web-c');
    await dialog().getByRole('button', { name: 'Fork' }).click();
    const failed = task('vm.fork', 'web', 'failed');
    await failed.waitFor();
    expect(await failed.locator('.notice .code').textContent()).toBe('FORK_FAILED');
    expect(await failed.locator('.notice .message').textContent()).toMatch(/failed at step "plan": VM "web-c1" already exists/);
    await page.getByRole('radio', { name: 'failed' }).check();
    expect(await page.locator('li[data-task]').count()).toBe(1);
    await shot('10-task-failed');
    expect((await daemon.engine.list()).map((v) => [v.name, v.state]).sort()).toEqual([['web', 'running'], ['web-c1', 'running'], ['web-c2', 'running']]);
  });

  it('clones a running VM (linked: no copy, no boot) and deletes the clone', async () => {
    await page.goto(`${daemon.url}/#/vms/web-c1`);
    await page.getByRole('button', { name: 'Clone…' }).click();
    await dialog().getByLabel('Name', { exact: true }).fill('web-copy');
    await dialog().getByRole('button', { name: 'Clone' }).click();
    await page.locator('section.vm-detail[data-vm="web-copy"] h1 .badge.state-created').waitFor();
    // Its disk is a delta over the frozen base of web-c1's disk.
    const chain = await page.locator('ol.chain li code').allTextContents();
    expect(chain.length).toBeGreaterThan(1);
    const source = (await daemon.engine.resolve('web-c1')).spec.disks[0]?.backing ?? [];
    expect(source).toContain(chain[1]);
    await page.getByRole('button', { name: 'Delete…' }).click();
    await dialog().getByRole('button', { name: 'Delete' }).click();
    await page.locator('tr[data-vm="web"]').waitFor();
    await eventually(async () => !(await daemon.engine.list()).some((v) => v.name === 'web-copy'), 10_000, 'web-copy to be deleted');
  });

  it('powers a child off and deletes it, asking first each time', async () => {
    await page.goto(`${daemon.url}/#/vms/web-c2`);
    await page.locator('section.vm-detail[data-vm="web-c2"]').waitFor();
    await page.getByRole('button', { name: 'Power off…' }).click();
    expect(await dialog().getByRole('heading').textContent()).toBe('Power off web-c2 now?');
    await dialog().getByRole('button', { name: 'Cancel' }).click();
    expect((await daemon.engine.resolve('web-c2')).state).toBe('running');

    await page.getByRole('button', { name: 'Power off…' }).click();
    await dialog().getByRole('button', { name: 'Power off' }).click();
    await page.locator('h1 .badge.state-stopped').waitFor();
    await page.getByRole('button', { name: 'Delete…' }).click();
    expect(await dialog().getByRole('heading').textContent()).toBe('Delete web-c2?');
    await shot('11-delete-confirm');
    await dialog().getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('heading', { name: /Virtual machines/ }).waitFor();
    await page.locator('tr[data-vm="web-c2"]').waitFor({ state: 'detached' });
    await eventually(async () => !(await daemon.engine.list()).some((v) => v.name === 'web-c2'), 10_000, 'web-c2 to be deleted');
    expect(await page.locator('tr[data-vm]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-vm')))).toEqual(['web', 'web-c1']);
  });

  it('fits a narrow window, follows a dark system theme, and never showed a script or console error', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.goto(`${daemon.url}/#/vms`);
    await page.locator('tr[data-vm="web"]').waitFor();
    const layout = await page.evaluate(() => ({
      overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
      background: getComputedStyle(document.body).backgroundColor,
      header: getComputedStyle(document.querySelector('table.list thead') as Element).position,
    }));
    expect(layout.overflow).toBeLessThanOrEqual(0);
    expect(layout.header).toBe('absolute');
    const [r, g, b] = (layout.background.match(/\d+/g) ?? []).map(Number) as [number, number, number];
    expect(r + g + b).toBeLessThan(120);
    await shot('12-vms-narrow-dark');
    await page.goto(`${daemon.url}/#/tasks`);
    await task('vm.fork', 'web', 'succeeded').waitFor();
    await shot('13-tasks-narrow-dark');
    expect(pageErrors).toEqual([]);
  });
});
