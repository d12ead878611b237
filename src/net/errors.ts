// Errors of the network layer, each with a stable code: a failed `ip` command
// (with its argv and stderr), a per-operation path that collides with another
// (same VNI or link name on a host), and a path that cannot be made for another
// reason (no device holds the management address, bad plan).
import { OffshootError } from '../common/index.ts';
import type { ErrorDetails } from '../common/index.ts';

/** An iproute2 command failed; `stderr` is ip's own message. */
export class IpCommandError extends OffshootError {
  readonly argv: readonly string[];
  readonly stderr: string;
  constructor(argv: readonly string[], stderr: string, exitCode: number | null, cause?: unknown) {
    super('IP_COMMAND_FAILED', `ip ${argv.join(' ')} failed: ${stderr.trim() || `exit ${exitCode}`}`, { argv, stderr: stderr.trim(), exitCode }, 500, { cause });
    this.argv = argv;
    this.stderr = stderr;
  }
}

/**
 * A per-operation path collides with one already on the host: its VNI or link
 * name is taken ("A VXLAN device with the specified VNI already exists"). The
 * caller plans again with the taken slot in `inUse`.
 */
export class DataPathConflictError extends OffshootError {
  constructor(message: string, details: ErrorDetails) {
    super('DATA_PATH_CONFLICT', message, details, 409);
  }
}

/** A per-operation path could not be made or removed (no management device, bad plan). */
export class DataPathError extends OffshootError {
  constructor(message: string, details: ErrorDetails, cause?: unknown) {
    super('DATA_PATH_FAILED', message, details, 500, { cause });
  }
}
