// The elastic fabric (vm/fabric): parent templates placed on hosts, pools of
// ready children forked from them, and the hand-out of a customised child on
// request. Its service, records, request schemas and errors, and the
// FabricInventory the store implements.
export * from './records.ts';
export { FabricService } from './service.ts';
export type { PlacementView, TemplateAndTask, TemplateView } from './service.ts';
export type { FabricDeps } from './deps.ts';
export type { ClaimResult } from './claim.ts';
export type { RefillResult } from './pool.ts';
export { poolKey } from './pool.ts';
export { claimRequestSchema, createTemplateRequestSchema, deleteTemplateRequestSchema, placeTemplateRequestSchema, scaleTemplateRequestSchema, templateNameSchema, MAX_POOL_READY } from './requests.ts';
export type { ClaimRequest, CreateTemplateRequest, PlaceTemplateRequest, ScaleTemplateRequest } from './requests.ts';
export { ClaimFailedError, ClaimScriptFailedError, PlacementFailedError, PlacementRefusedError, TemplateBrokenError, TemplateInUseError, TemplateNotPlacedError } from './errors.ts';
export type { CarryReport } from './place.ts';
