// The first phases of a template placement (place.ts): probe and plan. Probe
// refuses before anything moves (the destination not ready, another
// accelerator, no room for the memory) and asks both hosts for the
// template's files (the destination installs the default guest first when
// the template runs it). Plan decides where each file of the template will be
// on the destination: each disk's chain by content id (storage/content-plan.ts):
// the bottom layers the destination holds (same id, under any name) are used
// where they are, the layers above them are copied; a boot file is used where
// it is when the destination has it under the same name with the same content
// id, else copied. The plan is plain data (it goes into the placement task's
// journal): the copies, where every file lands, the links to make once they
// are there, and the spec as the destination will run it.
import type { AgentClient, Locator, VmSpec } from '../../protocol/index.ts';
import { guestMemoryBytes, locatorName } from '../../protocol/index.ts';
import { planByContent } from '../storage/index.ts';
import { specFiles } from './create-template.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { PlacementRefusedError } from './errors.ts';
import type { TemplatePlacement, TemplateRecord } from './records.ts';

/** Where a placement puts the template's files on its destination, and what it copies there. */
export interface CarryPlan {
  /** Files to copy (source reference on the source host, copy on the destination, allocated bytes at the source). */
  copies: Array<{ from: Locator; to: Locator; bytes: number }>;
  /** Files the destination holds already (by content id), and the file used there. */
  held: Array<{ file: string; as: string }>;
  /** Each copied qcow2 layer over the destination's copy of the layer below it (relinkDisk), once copied. */
  links: Array<{ file: Locator; backing: { file: Locator; format: 'qcow2' | 'raw' } }>;
  /** The template as the destination will run it (its files there). */
  spec: VmSpec;
  /** The template's guest memory (the size of what the checkpoint file carries, roughly). */
  memoryBytes: number;
}

type Probe = Awaited<ReturnType<AgentClient['migrationProbe']>>;

/** Refusals before anything moves: the destination ready, the same accelerator, room for the memory. */
async function probe(deps: FabricDeps, template: TemplateRecord, from: TemplatePlacement, hostId: string, spec: VmSpec): Promise<{ here: Probe; there: Probe }> {
  const name = deps.engine.hostName(hostId);
  const host = deps.engine.fleet.hosts().find((h) => h.id === hostId);
  if (!host || host.state !== 'ready') throw new PlacementRefusedError(template.name, name, `the host is ${host?.state ?? 'unknown'}`);
  if (!deps.jobs) throw new PlacementRefusedError(template.name, name, 'this controller has no copy jobs to carry its files');
  const files = specFiles(spec).map((file) => ({ file, contentId: true }));
  const [here, there] = await Promise.all([agentOn(deps, from.hostId).migrationProbe({ peer: null, files, installDefaultGuest: false }), agentOn(deps, hostId).migrationProbe({ peer: null, files, installDefaultGuest: spec.defaultGuest })]);
  if (here.accel !== there.accel) throw new PlacementRefusedError(template.name, name, `it runs QEMU with ${there.accel} and the template was frozen under ${here.accel}`);
  if (there.memoryFreeBytes < guestMemoryBytes(spec)) throw new PlacementRefusedError(template.name, name, `it has ${Math.floor(there.memoryFreeBytes / 2 ** 20)} MiB free for guest memory; the template needs ${spec.memoryMiB} MiB`);
  return { here, there };
}

/** Probes both hosts and plans the placement of the template's copy `from` (spec `spec`) on `hostId`. */
export async function planCarry(deps: FabricDeps, template: TemplateRecord, from: TemplatePlacement, spec: VmSpec, hostId: string): Promise<CarryPlan> {
  const { here, there } = await probe(deps, template, from, hostId, spec);
  const at = new Map<string, Locator>();
  const sizes = new Map(here.files.map((f) => [f.file, f.allocatedBytes ?? 0]));
  const result: CarryPlan = { copies: [], held: [], links: [], spec, memoryBytes: guestMemoryBytes(spec) };
  const copy = (file: Locator) => {
    if (at.has(file)) return;
    const to = `home:bases/${template.id.slice(0, 8)}-${result.copies.length}-${locatorName(file)}` as Locator;
    result.copies.push({ from: file, to, bytes: sizes.get(file) ?? 0 });
    at.set(file, to);
  };
  const hold = (file: string, as: Locator) => {
    at.set(file, as);
    result.held.push({ file, as });
  };
  const plans = await planByContent(agentOn(deps, from.hostId), agentOn(deps, hostId), { disks: spec.disks.map((d) => ({ id: d.id, backing: [d.file, ...d.backing] })) });
  for (const plan of plans) {
    plan.layers.forEach((layer, i) => {
      const heldAt = i >= plan.layers.length - plan.heldLayers ? plan.destBacking[i - (plan.layers.length - plan.heldLayers)] : undefined;
      if (heldAt) hold(layer.file, heldAt.file);
      else copy(layer.file);
    });
  }
  const bootFiles = spec.boot.kind === 'kernel' ? [spec.boot.kernel, ...(spec.boot.initrd ? [spec.boot.initrd] : [])] : [];
  for (const file of bootFiles) {
    const mine = here.files.find((f) => f.file === file);
    const theirs = there.files.find((f) => f.file === file);
    if (theirs?.exists && theirs.contentId !== null && theirs.contentId === mine?.contentId) hold(file, file as Locator);
    else copy(file as Locator);
  }
  for (const plan of plans) {
    for (const [i, layer] of plan.layers.entries()) {
      const below = plan.layers[i + 1];
      const copied = result.copies.find((c) => c.from === layer.file);
      if (copied && layer.format === 'qcow2' && below) result.links.push({ file: copied.to, backing: { file: at.get(below.file) as Locator, format: below.format } });
    }
  }
  const map = (file: string) => at.get(file) ?? file;
  result.spec = {
    ...spec,
    disks: spec.disks.map((d) => ({ ...d, file: map(d.file), backing: d.backing.map(map) })),
    boot: spec.boot.kind === 'kernel' ? { ...spec.boot, kernel: map(spec.boot.kernel), ...(spec.boot.initrd ? { initrd: map(spec.boot.initrd) } : {}) } : spec.boot,
  };
  return result;
}
