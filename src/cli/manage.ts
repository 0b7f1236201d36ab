/**
 * `ublk quiesce`, `ublk update_size` and `ublk chown`: kublk's names for the first two (ublksrv
 * has neither); the third is what udev's rule runs for a new ublk node (udev/99-ublk-dev.rules).
 */
import { chownSync, existsSync } from 'node:fs';
import { UserError } from '../errors.js';
import { UBLK_F } from '../ublk/ublk-cmd.js';
import { isControlError, type Control } from '../ublk/control/control.js';
import { hasFlag } from '../ublk/control/feature-flags.js';
import { quiesceDevice, resizeDevice } from '../ublk/control/device-commands.js';
import { strictParse } from './args.js';
import { parseInteger, parseSize } from './numbers.js';

function deviceId(command: string, values: Record<string, string | boolean | undefined>): number {
  if (values.number === undefined) throw new UserError(`${command}: say which device: -n DEV_ID`);
  return parseInteger(values.number as string, 'device id', 0, 0xfffff);
}

/** `ublk quiesce -n ID`: prints the state the device is left in (QUIESCED). */
export async function quiesceCommand(control: Control, argv: readonly string[]): Promise<string> {
  const devId = deviceId(
    'quiesce',
    strictParse('quiesce', argv, { number: { type: 'string', short: 'n' } }),
  );
  const state = await quiesceDevice(control, devId);
  return `dev id ${devId}: state ${state}\n`;
}

/** `ublk update_size -n ID -s|--size SIZE` (bytes, or 512M, 2G...). */
export async function updateSizeCommand(control: Control, argv: readonly string[]): Promise<void> {
  const values = strictParse('update_size', argv, {
    number: { type: 'string', short: 'n' },
    size: { type: 'string', short: 's' },
  });
  const devId = deviceId('update_size', values);
  if (values.size === undefined) throw new UserError('update_size: say the new size: --size SIZE');
  await resizeDevice(control, devId, parseSize(values.size as string, 'size'));
}

/**
 * `ublk chown NAME` (udev's %k: ublkcN, ublkbN, ublkbNpM): gives the node of an unprivileged
 * device to the user the kernel says owns it (GET_DEV_INFO2), as ublksrv's ublk_chown.sh does, so
 * that its daemon can open /dev/ublkcN and its user /dev/ublkbN. Nodes of ordinary devices stay
 * root's. Needs root, as udev's RUN does.
 */
export async function chownCommand(control: Control, argv: readonly string[]): Promise<void> {
  const name = argv[0];
  const m = name === undefined ? null : /^ublk[bc](\d+)(p\d+)?$/.exec(name);
  if (!m || argv.length !== 1) {
    throw new UserError('chown: say which node: ublk chown ublkcN|ublkbN (what udev passes as %k)');
  }
  const devId = Number(m[1]);
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
