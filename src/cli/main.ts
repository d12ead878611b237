// Entry point of the `offshoot` command (bin/offshoot runs this file).
import { main } from './program.ts';

await main(process.argv);
