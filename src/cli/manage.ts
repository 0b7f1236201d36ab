/**
 * `ublk quiesce`, `ublk update_size` and `ublk chown`: kublk's names for the first two (ublksrv
 * has neither); the third is what udev's rule runs for a new ublk node (udev/99-ublk-dev.rules).
 */
import { chownSync, existsSync } from 'node:fs';
import { UBLK_F } from '../ublk/ublk-cmd.js';
import { isControlError, type Control } from '../ublk/control/control.js';
import { hasFlag } from '../ublk/control/feature-flags.js';
import { quiesceDevice, resizeDevice } from '../ublk/control/device-commands.js';
import type { ChownOptions, QuiesceOptions, UpdateSizeOptions } from './args.js';

/** `ublk quiesce -n ID`: prints the state the device is left in (QUIESCED). */
export async function quiesceCommand(control: Control, options: QuiesceOptions): Promise<string> {
  const state = await quiesceDevice(control, options.devId);
  return `dev id ${options.devId}: state ${state}\n`;
}

/** `ublk update_size -n ID -s|--size SIZE` (bytes, or 512M, 2G...). */
export async function updateSizeCommand(
  control: Control,
  options: UpdateSizeOptions,
): Promise<void> {
  await resizeDevice(control, options.devId, options.size);
}

/**
 * `ublk chown NAME` (udev's %k: ublkcN, ublkbN, ublkbNpM): gives the node of an unprivileged
 * device to the user the kernel says owns it (GET_DEV_INFO2), as ublksrv's ublk_chown.sh does, so
 * that its daemon can open /dev/ublkcN and its user /dev/ublkbN. Nodes of ordinary devices stay
 * root's. Needs root, as udev's RUN does.
 */
export async function chownCommand(control: Control, options: ChownOptions): Promise<void> {
  const { name, devId } = options;
  let info;
  try {
    info = await control.getDevInfo(devId);
  } catch (err) {
    if (isControlError(err, 'ENODEV')) return; // gone already: udev may run late
    throw err;
  }
  const path = `/dev/${name}`;
  if (!hasFlag(info.flags, UBLK_F.UNPRIVILEGED_DEV) || !existsSync(path)) return;
  chownSync(path, info.ownerUid, info.ownerGid);
}
