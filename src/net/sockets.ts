// The TCP connections of a per-operation path, ended by force (`ss -K`, the
// kernel's sock_destroy): a stream whose peer went silent (the path cut, the
// far end gone) otherwise waits for TCP's retransmissions to give up, about
// a quarter of an hour, and a QEMU block job with a request on it cannot be
// cancelled until then. Only connections to the path's own peer address are
// touched (each path has its own /31), in this process's network namespace.
import { execFile } from 'node:child_process';
import { parseIpv4 } from './ipv4.ts';

/** Ends every TCP connection to `peer` here; resolves with ss's listing of what it ended (never throws). */
export function abortConnectionsTo(peer: string): Promise<string> {
  parseIpv4(peer);
  return new Promise((resolve) => {
    execFile('ss', ['-K', '-Htn', 'dst', peer], { maxBuffer: 1024 * 1024 }, (error, stdout, stderr) => resolve(error ? `ss failed: ${String(stderr).trim() || error.message}` : String(stdout)));
  });
}
