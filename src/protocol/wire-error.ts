// Errors on the wire: what an agent answers when a call fails, and how the
// caller turns it back into an OffshootError with the same code, details and
// cause. Codes come from the closed registry (common/error-codes.ts); anything
// else travels as INTERNAL with its original code in details.
import { z } from 'zod';
import { OffshootError, isErrorCode, statusOf } from '../common/index.ts';

export interface WireError {
  code: string;
  message: string;
  details: Record<string, unknown>;
  cause?: { code?: string; message: string } | undefined;
}

export const wireErrorSchema = z.object({
  code: z.string().regex(/^[A-Z][A-Z0-9_]{1,63}$/),
  message: z.string().max(64 * 1024),
  details: z.record(z.string(), z.unknown()),
  cause: z.object({ code: z.string().optional(), message: z.string() }).optional(),
});

function causeOf(err: unknown): WireError['cause'] {
  const cause = (err as { cause?: unknown })?.cause;
  if (cause === undefined || cause === null) return undefined;
  if (cause instanceof OffshootError) return { code: cause.code, message: cause.message };
  const code = (cause as { code?: unknown }).code;
  return { ...(typeof code === 'string' ? { code } : {}), message: cause instanceof Error ? cause.message : String(cause) };
}

/** Anything thrown, as the protocol carries it. */
export function toWireError(err: unknown): WireError {
  if (err instanceof OffshootError) {
    if (isErrorCode(err.code)) return { code: err.code, message: err.message, details: err.details, cause: causeOf(err) };
    return { code: 'INTERNAL', message: err.message, details: { ...err.details, originalCode: err.code }, cause: causeOf(err) };
  }
  const code = (err as { code?: unknown })?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (code === 'ENOSPC') return { code: 'NO_SPACE', message, details: {} };
  return { code: 'INTERNAL', message, details: typeof code === 'string' ? { originalCode: code } : {}, cause: causeOf(err) };
}

/** A wire error back as an OffshootError; `host` names where it came from. */
export function fromWireError(wire: WireError, host?: string): OffshootError {
  const cause = wire.cause ? new OffshootError(wire.cause.code && isErrorCode(wire.cause.code) ? wire.cause.code : 'INTERNAL', wire.cause.message) : undefined;
  const details = host !== undefined ? { ...wire.details, host } : wire.details;
  return new OffshootError(wire.code, wire.message, details, statusOf(wire.code), cause ? { cause } : undefined);
}
