// Public surface of the QEMU layer: QMP and QGA clients, the launch spec and
// argv builder, the process supervisor, the accelerator probe and qemu-img.
export * from './qemu-errors.ts';
export { QmpClient, QmpEventSubscription } from './qmp-client.ts';
export type { QmpTimestamp, QmpEvent, QmpGreeting, QmpStatus, QmpVersion, QmpConnectOptions, QmpExecuteOptions, QmpWaitForEventOptions, QmpCloseInfo } from './qmp-client.ts';
export { QgaClient } from './qga-client.ts';
export type { QgaConnectOptions, QgaWaitOptions, QgaExecOptions, QgaExecResult, QgaInfo, QgaShutdownMode, QgaCloseInfo, QgaBatchCall, QgaBatchOutcome } from './qga-client.ts';
export type * from './launch-spec.ts';
export { GUEST_AGENT_PORT, PROCESS_NAME_PREFIX } from './launch-spec.ts';
export { buildQemuArgv, validateLaunchSpec, qemuOptValue, guestMemorySize, MIN_MEMORY_MIB, MAX_VCPUS, MAX_MEMORY_EXTRA_KIB } from './argv.ts';
export { spawnQemu, launchQemu, adoptQemu, findOffshootQemus, killAndWait, readProcessVmId, vmIdFromArgv, QemuStartError, DEFAULT_QEMU_BINARY } from './process.ts';
export type { QemuProcess, QemuExit, KillOutcome, SpawnQemuOptions, LaunchQemuOptions } from './process.ts';
export { bootCacheFile, probeAccelerator, qemuVersion, QemuVersionError, PROBE_MARKER, PROBE_CMDLINE_FLAG, ACCEL_ENV } from './accel.ts';
export type { AcceleratorChoice, ProbeAcceleratorOptions } from './accel.ts';
export { createImage, imageInfo, checkImage, convertImage, rebaseImage, mapImage, resizeImage, QemuImgError, DEFAULT_QEMU_IMG_BINARY } from './qemu-img.ts';
export type { ImageFormat, ImageInfo, ImageMapEntry, ImageCheck, CreateImageOptions, ConvertImageOptions, QemuImgCallOptions } from './qemu-img.ts';
export { setVcpuNice, setAutogroupNice, vcpuThreadIds, isVcpuNice, DEFAULT_VCPU_NICE, MAX_NICE } from './vcpu-priority.ts';
