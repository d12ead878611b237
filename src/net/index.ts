// Public surface of the net layer: iproute2 helpers, IPv4 subnets, and the
// per-operation isolated data path (a VXLAN link with its own VNI and
// addresses, plus one-time TLS-PSK credentials for QEMU) that migration and
// NBD streams between hosts run over.
export { IpCommandError, DataPathConflictError, DataPathError } from './errors.ts';
export { runIp, runIpBatch, failedBatchLine, ipJson, isNotFound, isAlreadyExists, listNamespaces, namespacePids } from './ip.ts';
export type { IpOptions } from './ip.ts';
export { parseIpv4, formatIpv4, parseSubnet, formatSubnet, addressAt, subnetContains, subnetsOverlap } from './ipv4.ts';
export type { Ipv4Subnet } from './ipv4.ts';
export { planDataPath, planForSlot, assertOperationId, isPathRole, slotOfLinkName, DEFAULT_PATH_POOL, VXLAN_PORT, PATH_LINK_PREFIX } from './path-plan.ts';
export type { DataPathPlan, PathEndPlan, PathPool, PathRole, PlanDataPathRequest } from './path-plan.ts';
export { listPathLinks, managementDevice, linkCounters, sourceAddressTo } from './path-link.ts';
export type { DataPathLink, LinkCounters } from './path-link.ts';
export { newPskKey, pskObjectProperties, pskCredentialId, PSK_USERNAME, PSK_FILE, TLS_PRIORITY } from './psk.ts';
export type { PskCredential, PskEndpoint } from './psk.ts';
export { openDataPath, closeDataPath, closeDataPathEnd, listDataPaths, reapDataPaths } from './data-path.ts';
export { abortConnectionsTo } from './sockets.ts';
export type { DataPathEnd, DataPathHostOptions, DataPathListing, OpenDataPathRequest, CloseDataPathResult, ReapDataPathsResult } from './data-path.ts';
