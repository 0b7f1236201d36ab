import { UBLK_F } from '../ublk/ublk-cmd.js';
import type { Control } from '../ublk/control/control.js';
import { kernelFeatures } from '../ublk/control/feature-flags.js';

/**
 * ublksrv's names in `ublk features`, so its output reads the same; the bits ublksrv has no name
 * for (QUIESCE and after) by their UBLK_F name, which is what ublksrv's `list` prints for them.
 */
const UBLKSRV_NAMES: Record<number, string> = {
  [UBLK_F.SUPPORT_ZERO_COPY]: 'ZERO_COPY',
  [UBLK_F.URING_CMD_COMP_IN_TASK]: 'COMP_IN_TASK',
  [UBLK_F.NEED_GET_DATA]: 'GET_DATA',
  [UBLK_F.USER_RECOVERY]: 'USER_RECOVERY',
  [UBLK_F.USER_RECOVERY_REISSUE]: 'RECOVERY_REISSUE',
  [UBLK_F.UNPRIVILEGED_DEV]: 'UNPRIVILEGED_DEV',
  [UBLK_F.CMD_IOCTL_ENCODE]: 'CMD_IOCTL_ENCODE',
  [UBLK_F.USER_COPY]: 'USER_COPY',
  [UBLK_F.ZONED]: 'ZONED',
  [UBLK_F.USER_RECOVERY_FAIL_IO]: 'RECOVERY_FAIL_IO',
  [UBLK_F.UPDATE_SIZE]: 'UPDATE_SIZE',
  [UBLK_F.AUTO_BUF_REG]: 'AUTO_ZC',
};
const NAME_OF = new Map<number, string>(Object.entries(UBLK_F).map(([name, bit]) => [bit, name]));

export async function featuresCommand(control: Control): Promise<string> {
  return formatFeatures(await kernelFeatures(control));
}

/** ublksrv's `features` text: the mask, then one line per bit set; a bit unknown here is `unknown`. */
export function formatFeatures(features: number): string {
  const lines = [`ublk_drv features: 0x${features.toString(16)}`];
  for (let bit = 0; 2 ** bit <= features; bit++) {
    const value = 2 ** bit;
    if (Math.floor(features / value) % 2 === 0) continue;
    const name = UBLKSRV_NAMES[value] ?? NAME_OF.get(value) ?? 'unknown';
    lines.push(`\t${name.padEnd(20)}: 0x${value.toString(16)}`);
  }
  return lines.join('\n') + '\n';
}
