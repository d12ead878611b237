// The agent protocol's fabric calls (protocol/calls-fabric.ts) on this host:
// references become host paths here and back, long calls are operations.
// Spread into AgentService's handlers; the work is in fabric-templates.ts.
import type { AgentHandlers, CheckpointMetadata, FabricCallName, VmRuntime, VmSpec } from '../protocol/index.ts';
import type { HostTemplates } from './fabric-templates.ts';
import type { Locations } from './locations.ts';
import type * as Host from './types.ts';

export interface FabricHandlerDeps {
  templates: HostTemplates;
  locations: Locations;
  specIn(spec: VmSpec): Host.VmSpec;
  specOut(spec: Host.VmSpec): VmSpec;
  runtimeOut(runtime: Host.VmRuntime): VmRuntime;
}

export function fabricHandlers(d: FabricHandlerDeps): Pick<AgentHandlers, FabricCallName> {
  const L = d.locations;
  return {
    keepForkTemplate: (r) => d.templates.keep(r.forkId, r.templateId, d.specIn(r.spec)),
    spawnFromTemplate: async (r, ctx) => {
      ctx.progress(0.1, `starting ${r.name} from its template`);
      const spawned = await d.templates.spawn(r.templateId, r.vmId, r.name, d.specIn(r.spec), r.run);
      return { runtime: d.runtimeOut(spawned.runtime), spec: d.specOut(spawned.spec) };
    },
    handOutChild: async (r, ctx) => {
      ctx.progress(0.1, 'handing the child out');
      return d.templates.handOut(r.vmId, r.resume, { hostname: r.hostname, timeoutMs: r.timeoutMs, setClock: r.setClock ?? true, arm: r.arm ?? false, ...(r.script !== undefined ? { script: r.script } : {}), ...(r.env ? { env: r.env } : {}) });
    },
    exportTemplate: async (r, ctx) => {
      const metadata = r.metadata as CheckpointMetadata;
      return d.templates.export(r.templateId, L.path(r.file), metadata, (p) => ctx.progress(p.blockCount ? p.blocksDone / p.blockCount : 0, `written ${p.blocksDone} of ${p.blockCount} MiB`), ctx.signal);
    },
    importTemplate: async (r, ctx) => {
      ctx.progress(0.1, 'loading the template memory');
      return d.templates.import(r.templateId, L.path(r.checkpoint), d.specIn(r.spec));
    },
    templateStatus: async (r) => {
      const paths: string[] = [];
      const unresolvable: string[] = [];
      for (const f of r.files) {
        try {
          paths.push(L.path(f));
        } catch {
          unresolvable.push(f);
        }
      }
      const status = await d.templates.status(r.templateId, paths);
      return { present: status.present, missing: [...unresolvable, ...status.missing.map((m) => (m.startsWith('/') ? tryLocator(L, m) : m))], memoryBytes: status.memoryBytes };
    },
    removeTemplate: async (r) => {
      await d.templates.remove(r.templateId);
      return {};
    },
  };
}

function tryLocator(L: Locations, path: string): string {
  try {
    return L.locator(path);
  } catch {
    return path;
  }
}
