// Public surface of the guest layer: the embedded default guest (kernel,
// initramfs, data disk) that scripts/build-guest.sh builds, and its markers.
export {
  GUEST_PROBE_MARKER,
  GUEST_READY_MARKER,
  GuestNotBuiltError,
  HOSTNAME_CMDLINE_PARAM,
  PROBE_CMDLINE_FLAG,
  defaultGuestDir,
  loadDefaultGuest,
} from './default-guest.ts';
export type { GuestImage } from './default-guest.ts';
