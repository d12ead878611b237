// Test plumbing (not part of the inventory): a temporary PostgreSQL cluster for tests and the fleet bench: initdb in a
// fresh folder under /tmp (prefix offshoot-pg-), started with pg_ctl on a free
// loopback port with its socket in that folder and a random password, and
// removed by stop(). PostgreSQL refuses to run as root, so as root the server
// runs as the `postgres` system user (created by Debian's package). When no
// server binaries are found, scripts/setup-postgres.sh installs them (without
// creating or starting the system's default cluster). Never touches any
// other cluster.
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import pg from 'pg';

export interface PgCluster {
  /** postgres://offshoot:…@127.0.0.1:PORT/postgres */
  url: string;
  port: number;
  dir: string;
  /** Creates an empty database and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /** Stops the server, keeping its files (to test an outage). */
  pause(): Promise<void>;
  /** Starts a paused server again on the same port. */
  resume(): Promise<void>;
  /** Stops the server and removes its folder. */
  stop(): Promise<void>;
}

const ROOT = resolve(import.meta.dirname, '..', '..');

function findBinDir(): string | undefined {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base)
    .filter((v) => existsSync(join(base, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] && join(base, versions[0], 'bin');
}

/** The server binaries' folder, installing PostgreSQL from Debian first if needed. */
export function postgresBinDir(): string {
  let dir = findBinDir();
  if (!dir) {
    const r = spawnSync('bash', [join(ROOT, 'scripts', 'setup-postgres.sh')], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new Error(`scripts/setup-postgres.sh failed (exit ${r.status})`);
    dir = findBinDir();
  }
  if (!dir) throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin after setup');
  return dir;
}

function runAsUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  for (const name of ['postgres', 'nobody']) {
    const line = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${name}:`));
    if (line) {
      const [, , uid, gid] = line.split(':');
      return { uid: Number(uid), gid: Number(gid) };
    }
  }
  throw new Error('running as root and no postgres or nobody user to run PostgreSQL as');
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolvePort(port));
    });
  });
}

function exec(bin: string, args: string[], user: { uid: number; gid: number } | undefined): Promise<string> {
  return new Promise((resolveRun, reject) => {
    execFile(bin, args, { ...(user ?? {}), env: { ...process.env, LC_ALL: 'C.UTF-8' }, timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${bin} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolveRun(stdout);
    });
  });
}

export interface ClusterOptions {
  /** Extra server settings (-c name=value); tests turn fsync off, the bench keeps defaults. */
  settings?: Record<string, string>;
}

/** initdb + pg_ctl start of a new cluster; throws with the server log when it cannot start. */
export async function startPgCluster(options: ClusterOptions = {}): Promise<PgCluster> {
  const bin = postgresBinDir();
  const user = runAsUser();
  const dir = mkdtempSync('/tmp/offshoot-pg-');
  const data = join(dir, 'data');
  const log = join(dir, 'server.log');
  const password = randomBytes(18).toString('base64url');
  const pwfile = join(dir, 'pw');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (user) {
    chownSync(dir, user.uid, user.gid);
    chownSync(pwfile, user.uid, user.gid);
  }
  chmodSync(dir, 0o700);
  const port = await freePort();
  const settings: Record<string, string> = { listen_addresses: '127.0.0.1', port: String(port), unix_socket_directories: dir, max_connections: '60', shared_buffers: '32MB', ...options.settings };
  const serverArgs = Object.entries(settings)
    .map(([k, v]) => `-c ${k}=${v}`)
    .join(' ');
  const ctl = (action: 'start' | 'stop') => (action === 'start' ? exec(join(bin, 'pg_ctl'), ['-D', data, '-l', log, '-w', '-t', '60', '-o', serverArgs, 'start'], user) : exec(join(bin, 'pg_ctl'), ['-D', data, '-m', 'fast', '-w', '-t', '60', 'stop'], user));
  try {
    await exec(join(bin, 'initdb'), ['-D', data, '-U', 'offshoot', '-A', 'scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync'], user);
    rmSync(pwfile);
    await ctl('start');
  } catch (err) {
    const serverLog = existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '';
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`cannot start a temporary PostgreSQL cluster: ${(err as Error).message}\n${serverLog}`, { cause: err });
  }
  const url = `postgres://offshoot:${password}@127.0.0.1:${port}/postgres`;
  let running = true;
  return {
    url,
    port,
    dir,
    createDatabase: (name) => createDatabaseOn(url, name),
    async pause() {
      if (running) await ctl('stop');
      running = false;
    },
    async resume() {
      if (!running) await ctl('start');
      running = true;
    },
    async stop() {
      try {
        if (running && existsSync(data)) await ctl('stop');
      } finally {
        running = false;
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** A unique database name for one test suite. */
export function databaseName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

/** The run's PostgreSQL server (tests/postgres-global-setup.ts); throws, failing the test, if it did not start. */
export function testServerUrl(): string {
  const url = process.env.OFFSHOOT_TEST_DATABASE_URL;
  if (url) return url;
  throw new Error(`no PostgreSQL for the tests: ${process.env.OFFSHOOT_TEST_DATABASE_ERROR ?? 'OFFSHOOT_TEST_DATABASE_URL is not set (is tests/postgres-global-setup.ts in vitest.config.ts?)'}`);
}

/** Creates a fresh database on the run's server and returns its URL. */
export function freshTestDatabase(prefix: string): Promise<string> {
  return createDatabaseOn(testServerUrl(), databaseName(prefix));
}

/** Creates an empty database on a server (given by the URL of any database there) and returns its URL. */
export async function createDatabaseOn(server: string, name: string): Promise<string> {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad database name ${name}`);
  const client = new pg.Client({ connectionString: server });
  await client.connect();
  try {
    await client.query(`create database ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(server);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Drops a database made by createDatabaseOn. */
export async function dropDatabaseOn(server: string, name: string): Promise<void> {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad database name ${name}`);
  const client = new pg.Client({ connectionString: server });
  await client.connect();
  try {
    await client.query(`drop database if exists ${name}`);
  } finally {
    await client.end();
  }
}
