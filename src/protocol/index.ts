// Public surface of the protocol layer: the whole seam between the control
// plane and the agent on each host. Schemas of every call and its data, file
// references (locators), errors on the wire, the version and capabilities,
// operations (long calls with ids), the endpoint an agent serves calls from,
// and the clients that reach it in process or over HTTP.
export * from './version.ts';
export * from './locator.ts';
export * from './schemas.ts';
export * from './calls.ts';
export * from './calls-fabric.ts';
export * from './calls-migration.ts';
export * from './calls-mobility.ts';
export * from './calls-group.ts';
export * from './wire-error.ts';
export * from './parse.ts';
export { OperationTable, OperationNotFoundError } from './operations.ts';
export type { OperationContext } from './operations.ts';
export { EventLog } from './event-log.ts';
export { AgentEndpoint, StaleEpochError } from './endpoint.ts';
export type { AgentHandlers, EpochKeeper, RequestMeta } from './endpoint.ts';
export { clientFromSend, inProcessClient, follow, runOperation, newOperationId, waitForOperationEnd, OperationCancelledError } from './client.ts';
export type { AgentClient, AgentMethods, FollowOptions } from './client.ts';
export { agentHttpApp, EPOCH_HEADER, IDEMPOTENCY_HEADER, PROTOCOL_HEADER } from './http-server.ts';
export { httpAgentClient, HostUnreachableError, DROPPED_RETRIES } from './http-client.ts';
export type { HttpAgentOptions } from './http-client.ts';
// The fake agent (no QEMU, no files) for fast tests of orchestration; it passes the same contract (contract.ts).
export { FakeAgent } from './testing/fake-agent.ts';
export type { FakeAgentOptions } from './testing/fake-agent.ts';
