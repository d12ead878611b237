// The `offshoot` command line: the program and its runner. It talks to the daemon through the typed
// client; `serve` runs the daemon itself. Human tables by default, --json for
// scripts; errors print their stable code and exit 1.
import { Command, CommanderError } from 'commander';
import { clientFromEnvironment } from '../client/index.ts';
import { registerDaemonCommands } from './daemon-commands.ts';
import { registerFabricCommands } from './fabric-commands.ts';
import { registerHostCommands } from './host-commands.ts';
import { registerInventoryCommands } from './inventory-commands.ts';
import { registerMigrateCommands } from './migrate-commands.ts';
import { registerMigrationPolicyCommands } from './migration-policy-commands.ts';
import { registerMobilityCommands } from './mobility-commands.ts';
import { printError } from './output.ts';
import { registerStorageCommands } from './storage-commands.ts';
import type { CommandContext } from './vm-commands.ts';
import { registerVmCommands } from './vm-commands.ts';

export function buildProgram(): Command {
  const program = new Command('offshoot').description('Fork, clone, checkpoint and move QEMU virtual machines').version('0.1.0').showHelpAfterError();
  const ctx: CommandContext = {
    client: () => clientFromEnvironment(),
    run: async (json, action) => {
      try {
        const code = await action();
        if (typeof code === 'number') process.exitCode = code;
      } catch (err) {
        printError(err, json);
        process.exitCode = 1;
      }
    },
  };
  registerVmCommands(program, ctx);
  registerMigrateCommands(program, ctx);
  registerStorageCommands(program, ctx);
  registerFabricCommands(program, ctx);
  registerDaemonCommands(program, ctx);
  registerHostCommands(program, ctx);
  registerMigrationPolicyCommands(program, ctx);
  registerInventoryCommands(program, ctx);
  // Last: it adds to the job, disk, vm and host commands the others made.
  registerMobilityCommands(program, ctx);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram().exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? 0 : 2;
      return;
    }
    printError(err, false);
    process.exitCode = 1;
  }
}

