// Runs one data-path call in the namespace this process is in, as a host's
// agent does: `node path-cli.ts open|close|list|reap JSON` prints the result
// as JSON. Tests start it inside a lab or test namespace with nsenter
// (runTsInNamespace), so the code under test is the agent's own code path:
// no `ip -n`, just the process's namespace.
import { closeDataPath, listDataPaths, openDataPath, reapDataPaths } from '../index.ts';

const [command, json] = process.argv.slice(2);
const request = JSON.parse(json ?? '{}');
const calls: Record<string, (r: never) => Promise<unknown>> = { open: openDataPath, close: closeDataPath, list: listDataPaths, reap: reapDataPaths };
const call = command ? calls[command] : undefined;
if (!call) {
  process.stderr.write('usage: path-cli.ts open|close|list|reap JSON\n');
  process.exit(2);
}
process.stdout.write(`${JSON.stringify(await call(request as never))}\n`);
