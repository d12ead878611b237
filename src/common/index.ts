// Public surface of the common layer: errors, name validation, timing helpers.
export * from './errors.ts';
export * from './names.ts';
export * from './time.ts';
export * from './logger.ts';
export * from './home.ts';
export * from './pids.ts';
export * from './error-codes.ts';
export * from './files.ts';
export * from './direct-io.ts';
