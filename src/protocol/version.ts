// The agent protocol's version and capabilities, and the compatibility rule a
// controller applies to every agent it talks to.
//
// Compatibility rule (written down so both sides can be upgraded one at a time):
// - PROTOCOL_VERSION is one integer. A controller speaks exactly its own
//   version and the one before it (MIN_PROTOCOL_VERSION); an agent reports its
//   version in hostInfo and the controller refuses any other with
//   AGENT_PROTOCOL, naming both versions.
// - Within one version, calls and fields are only added, never changed or
//   removed. A feature an agent may lack is a capability: the controller checks
//   `capabilities` before it asks for it, and refuses with AGENT_PROTOCOL
//   naming the missing capability.
export const PROTOCOL_VERSION = 1;
export const MIN_PROTOCOL_VERSION = 1;

/** Capabilities of this build's agent; a controller asks hostInfo which an agent has. */
export const AGENT_CAPABILITIES = ['vm', 'fork', 'checkpoint', 'lazy-restore', 'storage', 'copy', 'events', 'fabric', 'migration', 'mobility'] as const;
export type AgentCapability = (typeof AGENT_CAPABILITIES)[number];

export function isCompatibleProtocol(version: number): boolean {
  return Number.isInteger(version) && version >= MIN_PROTOCOL_VERSION && version <= PROTOCOL_VERSION;
}
