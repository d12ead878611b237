// The shell script a claim runs in the child (after the agent's own identity
// step: hostname, clock, entropy): the claim's environment kept in
// /etc/offshoot/claim.env, its SSH key added to root's authorized_keys, then
// the caller's customisation script, whose output the claim returns. The
// environment is also exported to the script by the agent. Values travel in
// the script (on the guest agent's standard input), never on a command line.
import { randomBytes } from 'node:crypto';

/** POSIX shell single quoting. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

export interface ClaimScriptInput {
  env?: string[];
  sshKey?: string;
  customize?: string;
}

/** The script to run, or undefined when the claim asks for nothing beyond the identity step. */
export function claimScript(input: ClaimScriptInput): string | undefined {
  const env = input.env ?? [];
  const lines: string[] = [];
  if (env.length > 0) {
    // A heredoc whose delimiter no value can contain.
    let end = `OFFSHOOT_ENV_${randomBytes(6).toString('hex')}`;
    while (env.some((e) => e.includes(end))) end = `OFFSHOOT_ENV_${randomBytes(6).toString('hex')}`;
    lines.push('(umask 077; mkdir -p /etc/offshoot)', `(umask 077; cat > /etc/offshoot/claim.env) <<'${end}'`, ...env, end);
  }
  if (input.sshKey !== undefined) {
    lines.push('(umask 077; mkdir -p /root/.ssh)', `printf '%s\\n' ${shellQuote(input.sshKey.trim())} >> /root/.ssh/authorized_keys`, 'chmod 600 /root/.ssh/authorized_keys');
  }
  if (input.customize === undefined && lines.length === 0) return undefined;
  return [...lines, input.customize ?? ''].join('\n');
}
