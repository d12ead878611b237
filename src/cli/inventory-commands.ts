// `offshoot inventory status|export|import|migrate`: the inventory itself,
// read and written directly (no daemon needed). The database is --database,
// else OFFSHOOT_DATABASE_URL, else the home's SQLite file, as for `serve`.
// export + import move a home's inventory into a fleet's PostgreSQL (or back)
// with nothing lost; migrate brings a database's schema to this version.
import { readFile, writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { InvalidInputError, defaultHome } from '../common/index.ts';
import type { CommandContext } from './vm-commands.ts';
import { printJson } from './output.ts';

const DATABASE_HELP = 'postgres://… URL or SQLite file (default OFFSHOOT_DATABASE_URL, else the home\'s inventory.sqlite)';

/** Opens the inventory; one that is read from must exist, one that is written to is created (SQLite) if missing. */
async function openInventory(database: string | undefined, options: { migrate?: 'always' | 'unless-live'; mustExist: boolean }) {
  const { KyselyInventory, inventoryLocation } = await import('../store/index.ts');
  return KyselyInventory.open(inventoryLocation(defaultHome(), database), { mustExist: options.mustExist, ...(options.migrate ? { migrate: options.migrate } : {}) });
}

export function registerInventoryCommands(program: Command, ctx: CommandContext): void {
  const inventory = program.command('inventory').description('the inventory database (SQLite or PostgreSQL)');

  inventory
    .command('status')
    .description('where the inventory is, its schema version, and the controllers on it')
    .option('--database <location>', DATABASE_HELP)
    .option('--json', 'print JSON')
    .action((o: { database?: string; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const { connect, inventoryLocation, readSchemaVersion } = await import('../store/index.ts');
        const handle = await connect(inventoryLocation(defaultHome(), o.database), { mustExist: true });
        try {
          const v = await readSchemaVersion(handle.db, handle.dialect);
          const status = { dialect: handle.dialect.name, location: handle.location.display, schema: { database: v.database, databaseMigration: v.databaseMigration, code: v.code, codeMigration: v.codeMigration } };
          if (o.json) printJson(status);
          else process.stdout.write(`${status.dialect} ${status.location}\nschema version ${v.database} (${v.databaseMigration ?? 'empty'}), this Offshoot ${v.code} (${v.codeMigration})\n`);
        } finally {
          await handle.close();
        }
      }),
    );

  inventory
    .command('export')
    .description('write the whole inventory to a JSON file')
    .argument('<file>')
    .option('--database <location>', DATABASE_HELP)
    .option('--json', 'print JSON')
    .action((file: string, o: { database?: string; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const { exportInventory } = await import('../store/index.ts');
        const inv = await openInventory(o.database, { mustExist: true });
        try {
          const data = await exportInventory(inv);
          await writeFile(file, `${JSON.stringify(data)}\n`, { mode: 0o600 });
          const rows = Object.fromEntries(Object.entries(data.tables).map(([t, r]) => [t, r.length]));
          if (o.json) printJson({ file, from: data.source, schema: data.schema, rows });
          else process.stdout.write(`exported ${data.source.dialect} ${data.source.location} (schema ${data.schema.version}) to ${file}: ${Object.entries(rows).map(([t, n]) => `${t} ${n}`).join(', ')}\n`);
        } finally {
          await inv.close();
        }
      }),
    );

  inventory
    .command('import')
    .description('load an export into an empty inventory (e.g. a new PostgreSQL database)')
    .argument('<file>')
    .option('--database <location>', DATABASE_HELP)
    .option('--json', 'print JSON')
    .action((file: string, o: { database?: string; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const { importInventory } = await import('../store/index.ts');
        const text = await readFile(file, 'utf8');
        let data: unknown;
        try {
          data = JSON.parse(text);
        } catch (err) {
          throw new InvalidInputError(`${file} is not JSON: ${(err as Error).message}`, { file });
        }
        const inv = await openInventory(o.database, { mustExist: false });
        try {
          const rows = await importInventory(inv, data);
          if (o.json) printJson({ file, into: { dialect: inv.dialectName, location: inv.location }, rows });
          else process.stdout.write(`imported ${file} into ${inv.dialectName} ${inv.location}: ${Object.entries(rows).map(([t, n]) => `${t} ${n}`).join(', ')}\n`);
        } finally {
          await inv.close();
        }
      }),
    );

  inventory
    .command('migrate')
    .description('bring the database schema to this version of Offshoot')
    .option('--database <location>', DATABASE_HELP)
    .option('--force', 'migrate even while other controllers are alive on it (they run older code)')
    .option('--json', 'print JSON')
    .action((o: { database?: string; force?: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const inv = await openInventory(o.database, { migrate: o.force ? 'always' : 'unless-live', mustExist: true });
        try {
          if (o.json) printJson({ dialect: inv.dialectName, location: inv.location, schema: inv.schema });
          else process.stdout.write(`${inv.dialectName} ${inv.location}: schema version ${inv.schema.database} (${inv.schema.codeMigration})\n`);
        } finally {
          await inv.close();
        }
      }),
    );
}
