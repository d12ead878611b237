// Validation of user-given names (VMs, checkpoints, datastores). A name ends up
// in file paths, so only a safe alphabet is accepted: no slashes, no dots at
// the start, no path tricks like "../x".
import { InvalidInputError } from './errors.ts';

/** No regex flags: the pattern goes verbatim into the OpenAPI document, where flags mean nothing. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

export function isValidName(name: string): boolean {
  return NAME_PATTERN.test(name);
}

export function assertValidName(kind: string, name: string): string {
  if (!isValidName(name)) {
    throw new InvalidInputError(
      `invalid ${kind} name "${name}": use 1-63 letters, digits, "-" or "_", starting with a letter or digit`,
      { kind, name, pattern: NAME_PATTERN.source },
    );
  }
  return name;
}
