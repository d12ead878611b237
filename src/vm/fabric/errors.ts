// The fabric's errors, each with a stable code and what an operator needs to
// act on it.
import { OffshootError } from '../../common/index.ts';

/** A template (or its copy on a host) lost its memory, device state or files. HTTP 409. */
export class TemplateBrokenError extends OffshootError {
  constructor(name: string, reason: string) {
    super('TEMPLATE_BROKEN', `template "${name}" is broken: ${reason}; delete it and make it again from a running VM`, { template: name, reason }, 409);
  }
}

/** A template still has children (its pools, or claimed children running from it). HTTP 409. */
export class TemplateInUseError extends OffshootError {
  constructor(name: string, users: { ready: number; claimed: string[] }) {
    const parts = [...(users.ready ? [`${users.ready} ${users.ready === 1 ? 'child' : 'children'} in its pools`] : []), ...(users.claimed.length ? [`claimed children still running (${users.claimed.join(', ')})`] : [])];
    super('TEMPLATE_IN_USE', `template "${name}" still has ${parts.join(' and ')}; scale it to --ready 0 and delete those VMs, or delete it with --force (its pools go, claimed children run on with their memory)`, { template: name, ...users }, 409);
  }
}

/** The template is not usable on the host asked for. HTTP 409. */
export class TemplateNotPlacedError extends OffshootError {
  constructor(name: string, host: string, why: string) {
    super('TEMPLATE_NOT_PLACED', `template "${name}" cannot be used on host ${host}: ${why}`, { template: name, host, why }, 409);
  }
}

/** No child could be handed out (each one tried failed, and forking one on demand failed). HTTP 503. */
export class ClaimFailedError extends OffshootError {
  constructor(template: string, reason: string, details: Record<string, unknown> = {}) {
    super('CLAIM_FAILED', `no child of template "${template}" could be handed out: ${reason}`, { template, reason, ...details }, 503);
  }
}

/** The claim's customisation script failed in the child (the child is removed; its output is in details). HTTP 422. */
export class ClaimScriptFailedError extends OffshootError {
  constructor(template: string, exitCode: number | null, stdout: string, stderr: string) {
    super('CLAIM_SCRIPT_FAILED', `the customisation script failed in the child of template "${template}" (exit ${exitCode ?? 'by a signal'}); the child was removed: ${stderr.trim().slice(-500) || 'no error output'}`, { template, exitCode, stdout, stderr }, 422);
  }
}

/** A template cannot be carried to that host (not ready, another accelerator, already there, no room). HTTP 409. */
export class PlacementRefusedError extends OffshootError {
  constructor(name: string, host: string, why: string) {
    super('TEMPLATE_PLACEMENT_REFUSED', `template "${name}" cannot be placed on host ${host}: ${why}`, { template: name, host, why }, 409);
  }
}

/** Carrying a template to a host failed midway; nothing of it was left there (details: the phase and the cause's code). HTTP 502. */
export class PlacementFailedError extends OffshootError {
  constructor(name: string, host: string, phase: string, cause: OffshootError) {
    super('TEMPLATE_PLACEMENT_FAILED', `carrying template "${name}" to host ${host} failed while ${phase}: ${cause.message}; nothing of it was left there`, { template: name, host, phase, cause: cause.code }, 502, { cause });
  }
}
