// One-time TLS-PSK credentials for QEMU's migration and NBD streams: a random
// key written as `keys.psk` ("user:hexkey", GnuTLS's PSK file format) in a
// private folder per operation, for a `tls-creds-psk` object. Facts measured
// with QEMU 7.2: the server endpoint has no username and reads the file at
// each TLS handshake (so remove it only once the streams are connected, or at
// teardown); the client endpoint names the user and reads the file at
// `object-add`. Both ends get the same key (the caller makes it with
// newPskKey and hands it to both agents); the key never goes into a plan, a
// link or a log. Both ends name the same GnuTLS `priority` (TLS_PRIORITY):
// AES-128-GCM, not ChaCha20-Poly1305, carries the stream.
//
//   <credentialsRoot>/            0700
//     <operationId>/              0700
//       keys.psk                  0600   offshoot:<64 hex digits>
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidInputError } from '../common/index.ts';
import { assertOperationId } from './path-plan.ts';

export type PskEndpoint = 'server' | 'client';

/** What QEMU needs to load the credential (see pskObjectProperties). */
export interface PskCredential {
  /** The QEMU object id, `psk-<operationId>`: pass it as `tls-creds`. */
  id: string;
  /** The folder holding keys.psk (QEMU's `dir`). */
  dir: string;
  endpoint: PskEndpoint;
  username: string;
}

export const PSK_USERNAME = 'offshoot';
export const PSK_FILE = 'keys.psk';
const KEY_PATTERN = /^(?:[0-9a-f]{2}){16,64}$/;

/**
 * The `priority` of both ends' tls-creds-psk (QEMU 7.2 appends its PSK key exchanges to it): GnuTLS's NORMAL with
 * ChaCha20-Poly1305 moved to the end, so TLS 1.3 picks TLS_AES_128_GCM_SHA256. With QEMU's default (NORMAL), GnuTLS
 * 3.7 picked TLS_CHACHA20_POLY1305_SHA256 (GNUTLS_DEBUG_LEVEL=4): NORMAL's first suite, AES-256-GCM-SHA384, does not
 * fit an external PSK (its binder hash is SHA-256), and NORMAL lists ChaCha20 before AES-128-GCM. ChaCha20 runs in
 * software (~470 MB/s here against 3.6 GB/s for AES-128-GCM with AES-NI, `gnutls-cli --benchmark-ciphers`).
 * Measured (load 9-20): a plain QEMU pair migrating a paused 1 GiB guest (~80 MiB sent) over loopback used ~1.0 s of
 * CPU (both ends) with ChaCha20 and ~0.6 s with AES-128-GCM (0.2-0.6 s without TLS); `bench netpath` (256 MiB of
 * random RAM over a lab path): 24-32 -> 57-84 MB/s with TLS, against 117-219 MB/s plain. What is left of TLS's cost
 * is per record: see src/agent/live-migration/outgoing.ts's header. ChaCha20 stays offered, last.
 */
export const TLS_PRIORITY = 'NORMAL:-CHACHA20-POLY1305:+CHACHA20-POLY1305';

/** A fresh random key: 32 bytes, as lower-case hex. */
export function newPskKey(): string {
  return randomBytes(32).toString('hex');
}

export function pskCredentialId(operationId: string): string {
  return `psk-${assertOperationId(operationId)}`;
}

export function pskFolder(credentialsRoot: string, operationId: string): string {
  return join(credentialsRoot, assertOperationId(operationId));
}

/** Writes the operation's key file (again, if it exists: an idempotent retry) and returns the credential. */
export async function writePskCredential(request: { credentialsRoot: string; operationId: string; endpoint: PskEndpoint; key: string }): Promise<PskCredential> {
  const { credentialsRoot, operationId, endpoint, key } = request;
  if (!KEY_PATTERN.test(key)) throw new InvalidInputError('invalid PSK key: use 16 to 64 bytes as lower-case hex (see newPskKey)', { operationId });
  const dir = pskFolder(credentialsRoot, operationId);
  await mkdir(credentialsRoot, { recursive: true, mode: 0o700 });
  await chmod(credentialsRoot, 0o700);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  await writeFile(join(dir, PSK_FILE), `${PSK_USERNAME}:${key}\n`, { mode: 0o600 });
  return { id: pskCredentialId(operationId), dir, endpoint, username: PSK_USERNAME };
}

/** Removes the operation's key folder; true if there was one. Idempotent. */
export async function removePskCredential(credentialsRoot: string, operationId: string): Promise<boolean> {
  const dir = pskFolder(credentialsRoot, operationId);
  const existed = await readdir(dir).then(() => true, () => false);
  await rm(dir, { recursive: true, force: true });
  return existed;
}

/** Operation ids that have a key folder under the root. */
export async function listPskCredentials(credentialsRoot: string): Promise<string[]> {
  const entries = await readdir(credentialsRoot, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory()).map((e) => e.name).sort();
}

/** The QMP `object-add` arguments for the credential (QEMU 7.2's flat form). */
export function pskObjectProperties(credential: PskCredential): Record<string, string> {
  const base = { 'qom-type': 'tls-creds-psk', id: credential.id, dir: credential.dir, endpoint: credential.endpoint, priority: TLS_PRIORITY };
  return credential.endpoint === 'client' ? { ...base, username: credential.username } : base;
}
