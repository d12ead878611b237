// Builds the qemu-system-x86_64 command line of one VM from a QemuLaunchSpec.
// Pure and validated: a bad spec throws InvalidInputError before any process
// starts. Every option here is accepted by QEMU 7.2 (argv.test.ts starts one).
//
// Shape of a VM:
// - q35, RAM from `memory-backend-file` id=ram0 (never anonymous memory), no
//   prealloc: owned VMs map their own file share=on, derived VMs map a
//   template share=off (private copy-on-write).
// - KVM with `-cpu host`, or TCG with `-cpu max` (boots the Debian kernel);
//   a TCG VM derived from a template gets a smaller translation buffer
//   (DERIVED_TCG_TB_MIB: per-child memory of a fork), unless its spec names
//   one (tcgTranslationMiB: a fabric pool child).
// - serial console appended to a file; QMP and the guest agent on unix
//   sockets (server, no wait), the agent on virtio-serial port
//   org.qemu.guest_agent.0.
// - guest RAM of memoryMiB plus memoryExtraKiB (`-m` and the backend's size
//   in KiB when there is extra). QEMU 7.2 under TCG loses guest writes during
//   a live migration when a RAM block's size is a multiple of 64 pages
//   (256 KiB): cpu_physical_memory_sync_dirty_bitmap's 64-page fast path
//   (include/exec/ram_addr.h) clears dirty bits without
//   tlb_reset_dirty_range_all, so the vCPUs' TLBs keep "already dirty"
//   entries and later writes to those pages are never marked again (fixed in
//   QEMU 9.0). A block 8 KiB longer takes the per-page path, which resets the
//   TLBs: TCG hosts prepare VMs with memoryExtraKiB 8 (costs: 8 KiB more RAM,
//   and a slower first dirty sync, 0.4-0.7 s for 1 GiB).
// - `-no-reboot`: a guest reboot ends the process, as a poweroff does. The
//   supervisor sees an exit; whoever owns the VM decides whether to restart
//   it (a restarted process would lose the fork/derived memory setup anyway).
import { InvalidInputError, isValidName } from '../common/index.ts';
import { GUEST_AGENT_PORT, PROCESS_NAME_PREFIX } from './launch-spec.ts';
import type { QemuLaunchSpec } from './launch-spec.ts';

/** QEMU ids (node-name, netdev and device ids): a letter, then up to 30 of [A-Za-z0-9_.-]. */
const QEMU_ID = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const MACHINE = /^[a-z0-9][a-z0-9._-]*$/i;
const SANDBOX = /^(on|off)(,[a-z]+=[a-z]+)*$/;
/** Ids argv.ts uses itself; disks and NICs may not take them. */
const RESERVED_IDS = new Set(['ram0', 'qmp', 'qga0', 'serial0', 'virtio-serial0', 'guest-agent0', 'rng0']);
/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
export const MIN_MEMORY_MIB = 16;
/**
 * Translation buffer (MiB) of a TCG VM derived from a template (fork children, and the source and a
 * checkpointed VM that continue from their template). QEMU 7.2 maps a 1 GiB buffer and asks for huge
 * pages on it, so each child held 20 MiB of it after its customization (1 GiB guest, 4 children,
 * smaps PSS); tb-size=16 holds 16 MiB with no slower customization measured, 12 held 12 MiB, 8 held
 * 8 MiB but doubled the customization time (translations flushed and redone).
 */
export const DERIVED_TCG_TB_MIB = 16;
export const MAX_VCPUS = 255;
export const MAX_MEMORY_EXTRA_KIB = 1024;

/** The `-m` and memory-backend size of a spec: whole MiB ("512M"), or KiB when there is extra RAM ("524296K"). */
export function guestMemorySize(spec: Pick<QemuLaunchSpec, 'memoryMiB' | 'memoryExtraKiB'>): string {
  const extra = spec.memoryExtraKiB ?? 0;
  return extra === 0 ? `${spec.memoryMiB}M` : `${spec.memoryMiB * 1024 + extra}K`;
}

/** Escapes a value for QEMU's "key=value,key=value" option syntax (a comma is written twice). */
export function qemuOptValue(value: string): string {
  return value.replaceAll(',', ',,');
}

function invalid(message: string, field: string, value: unknown): never {
  throw new InvalidInputError(message, { field, value });
}

function requirePath(field: string, value: string | undefined): string {
  if (typeof value !== 'string' || value.length === 0) invalid(`${field} must be a non-empty path`, field, value);
  if (value.includes('\0')) invalid(`${field} must not contain NUL`, field, value);
  return value;
}

function requireSocketPath(field: string, value: string): string {
  requirePath(field, value);
  const bytes = Buffer.byteLength(value);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    invalid(`${field} is ${bytes} bytes; a unix socket path may have at most ${MAX_SOCKET_PATH_BYTES}`, field, value);
  }
  return value;
}

/** Throws InvalidInputError for the first problem in the spec. */
export function validateLaunchSpec(spec: QemuLaunchSpec): void {
  if (!isValidName(spec.vmId)) invalid(`vmId "${spec.vmId}" must be 1-63 letters, digits, "-" or "_"`, 'vmId', spec.vmId);
  if (typeof spec.name !== 'string' || spec.name.length === 0) invalid('name must not be empty', 'name', spec.name);
  if (spec.accel !== 'kvm' && spec.accel !== 'tcg') invalid(`accel must be "kvm" or "tcg", not "${String(spec.accel)}"`, 'accel', spec.accel);
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > MAX_VCPUS) {
    invalid(`vcpus must be an integer from 1 to ${MAX_VCPUS}, not ${spec.vcpus}`, 'vcpus', spec.vcpus);
  }
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < MIN_MEMORY_MIB) {
    invalid(`memoryMiB must be an integer of at least ${MIN_MEMORY_MIB}, not ${spec.memoryMiB}`, 'memoryMiB', spec.memoryMiB);
  }
  const extra = spec.memoryExtraKiB ?? 0;
  if (!Number.isInteger(extra) || extra < 0 || extra > MAX_MEMORY_EXTRA_KIB) invalid(`memoryExtraKiB must be an integer from 0 to ${MAX_MEMORY_EXTRA_KIB}, not ${extra}`, 'memoryExtraKiB', extra);
  requirePath('memory.path', spec.memory.path);
  if (typeof spec.memory.share !== 'boolean') invalid('memory.share must be a boolean', 'memory.share', spec.memory.share);
  const tb = spec.tcgTranslationMiB;
  if (tb !== undefined && (!Number.isInteger(tb) || tb < 1 || tb > 4096)) invalid(`tcgTranslationMiB must be an integer from 1 to 4096, not ${tb}`, 'tcgTranslationMiB', tb);
  if (spec.machine !== undefined && !MACHINE.test(spec.machine)) invalid(`machine "${spec.machine}" is not a machine type name`, 'machine', spec.machine);

  const boot = spec.boot;
  if (boot.kind === 'kernel') {
    requirePath('boot.kernel', boot.kernel);
    if (boot.initrd !== undefined) requirePath('boot.initrd', boot.initrd);
  } else if (boot.kind === 'disk') {
    if (spec.disks.length === 0) invalid('boot.kind "disk" needs at least one disk', 'disks', spec.disks);
  } else {
    invalid('boot.kind must be "kernel" or "disk"', 'boot.kind', (boot as { kind: unknown }).kind);
  }

  const ids = new Set<string>();
  const claim = (field: string, id: string): void => {
    if (!QEMU_ID.test(id)) invalid(`${field} "${id}" must be a letter followed by up to 30 letters, digits, "_", "." or "-"`, field, id);
    if (RESERVED_IDS.has(id)) invalid(`${field} "${id}" is reserved`, field, id);
    if (ids.has(id)) invalid(`duplicate id "${id}" among disks and nics`, field, id);
    ids.add(id);
  };
  spec.disks.forEach((disk, i) => {
    claim(`disks[${i}].id`, disk.id);
    requirePath(`disks[${i}].path`, disk.path);
    if (disk.format !== 'qcow2' && disk.format !== 'raw') invalid(`disks[${i}].format must be "qcow2" or "raw"`, `disks[${i}].format`, disk.format);
  });
  spec.nics.forEach((nic, i) => {
    claim(`nics[${i}].id`, nic.id);
    if (!MAC.test(nic.mac)) invalid(`nics[${i}].mac "${nic.mac}" is not a MAC address like 52:54:00:12:34:56`, `nics[${i}].mac`, nic.mac);
    // The least significant bit of the first octet marks a multicast address.
    if ((parseInt(nic.mac.slice(0, 2), 16) & 1) === 1) invalid(`nics[${i}].mac "${nic.mac}" is a multicast address`, `nics[${i}].mac`, nic.mac);
    if (nic.network !== 'user') invalid(`nics[${i}].network must be "user"`, `nics[${i}].network`, nic.network);
  });

  requireSocketPath('qmpSocket', spec.qmpSocket);
  requireSocketPath('qgaSocket', spec.qgaSocket);
  if (spec.qmpSocket === spec.qgaSocket) invalid('qmpSocket and qgaSocket must differ', 'qgaSocket', spec.qgaSocket);
  requirePath('consoleLog', spec.consoleLog);
  requirePath('pidFile', spec.pidFile);
  if (spec.incoming !== undefined && spec.incoming !== 'defer') invalid('incoming must be "defer"', 'incoming', spec.incoming);
  if (spec.sandbox !== undefined && !SANDBOX.test(spec.sandbox)) invalid(`sandbox "${spec.sandbox}" is not a -sandbox value like "on,spawn=deny"`, 'sandbox', spec.sandbox);
}

function tcgAccel(spec: QemuLaunchSpec): string {
  if (spec.accel !== 'tcg') return spec.accel;
  const tb = spec.tcgTranslationMiB ?? (spec.memory.share ? undefined : DERIVED_TCG_TB_MIB);
  return tb === undefined ? 'tcg' : `tcg,tb-size=${tb}`;
}

/** The argv (without the binary) of the QEMU process for `spec`. */
export function buildQemuArgv(spec: QemuLaunchSpec): string[] {
  validateLaunchSpec(spec);
  const o = qemuOptValue;
  const argv: string[] = [
    '-name', `guest=${o(spec.name)},process=${PROCESS_NAME_PREFIX}${spec.vmId}`,
    '-no-user-config', '-nodefaults', '-display', 'none', '-no-reboot',
    '-machine', `${spec.machine ?? 'q35'},memory-backend=ram0`,
    '-accel', tcgAccel(spec),
    '-cpu', spec.accel === 'kvm' ? 'host' : 'max',
    '-smp', String(spec.vcpus),
    '-m', guestMemorySize(spec),
    '-object', `memory-backend-file,id=ram0,size=${guestMemorySize(spec)},mem-path=${o(spec.memory.path)},share=${spec.memory.share ? 'on' : 'off'}`,
    '-chardev', `socket,id=qmp,path=${o(spec.qmpSocket)},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', `file,id=serial0,path=${o(spec.consoleLog)},append=on`,
    '-serial', 'chardev:serial0',
    '-chardev', `socket,id=qga0,path=${o(spec.qgaSocket)},server=on,wait=off`,
    '-device', 'virtio-serial-pci,id=virtio-serial0',
    '-device', `virtserialport,bus=virtio-serial0.0,chardev=qga0,name=${GUEST_AGENT_PORT},id=guest-agent0`,
    '-pidfile', spec.pidFile,
  ];

  if (spec.boot.kind === 'kernel') {
    argv.push('-kernel', spec.boot.kernel);
    if (spec.boot.initrd !== undefined) argv.push('-initrd', spec.boot.initrd);
    if (spec.boot.cmdline !== undefined && spec.boot.cmdline.length > 0) argv.push('-append', spec.boot.cmdline);
  }

  spec.disks.forEach((disk, i) => {
    const readOnly = disk.readOnly === true ? 'on' : 'off';
    argv.push(
      '-blockdev',
      `driver=${disk.format},node-name=${disk.id},read-only=${readOnly},discard=unmap,file.driver=file,file.filename=${o(disk.path)}`,
      '-device',
      `virtio-blk-pci,drive=${disk.id},id=${disk.id}${spec.boot.kind === 'disk' && i === 0 ? ',bootindex=0' : ''}`,
    );
  });

  for (const nic of spec.nics) {
    argv.push('-netdev', `user,id=${nic.id}`, '-device', `virtio-net-pci,netdev=${nic.id},mac=${nic.mac.toLowerCase()},id=${nic.id}`);
  }

  if (spec.rng !== false) argv.push('-device', 'virtio-rng-pci,id=rng0');
  if (spec.sandbox !== undefined) argv.push('-sandbox', spec.sandbox);
  if (spec.paused === true) argv.push('-S');
  if (spec.incoming === 'defer') argv.push('-incoming', 'defer');
  return argv;
}
