// Public surface of the CLI layer.
export { buildProgram, main } from './program.ts';
