// Public surface of the API layer: the daemon, the app builder, the home
// folder layout and the schemas clients may reuse.
export { startDaemon, parseListen } from './daemon.ts';
export type { DaemonOptions, RunningDaemon } from './daemon.ts';
export { buildApp, API_VERSION } from './app.ts';
export { startAgentDaemon } from './agent-daemon.ts';
export type { AgentDaemonOptions, RunningAgent } from './agent-daemon.ts';
