/**
 * What the running kernel's ublk driver can do, asked of the kernel itself (GET_FEATURES, the flags
 * ADD_DEV grants, a device's own flags), never guessed from its version; and the one-line refusal
 * for what it lacks, naming the first kernel that has it.
 */
import { UserError } from '../../errors.js';
import { featureNames, UBLK_F } from '../ublk-cmd.js';
import type { Control } from './control.js';

/** The first kernel that has each feature a command or option of ours may need. */
const FIRST_KERNEL: ReadonlyMap<number, string> = new Map([
  [UBLK_F.UNPRIVILEGED_DEV, '6.3'],
  [UBLK_F.USER_COPY, '6.5'],
  [UBLK_F.ZONED, '6.6'],
  [UBLK_F.USER_RECOVERY_FAIL_IO, '6.13'],
  [UBLK_F.SUPPORT_ZERO_COPY, '6.15'],
  [UBLK_F.UPDATE_SIZE, '6.16'],
  [UBLK_F.QUIESCE, '6.16'],
  [UBLK_F.AUTO_BUF_REG, '6.16'],
  [UBLK_F.BATCH_IO, '7.0'],
  [UBLK_F.SAFE_STOP_DEV, '7.0'],
  [UBLK_F.NO_AUTO_PART_SCAN, '7.0'],
]);

/** `QUIESCE (Linux 6.16+)` for a known single flag, else what featureNames calls it. */
export function describeFeature(flag: number): string {
  const since = FIRST_KERNEL.get(flag);
  const names = featureNames(flag).join(', ');
  return since ? `${names} (Linux ${since}+)` : names;
}

/** The refusal of something this kernel's driver cannot do: one line, naming the kernel that can. */
export function missingFeature(what: string, flag: number): UserError {
  return new UserError(
    `${what} needs UBLK_F_${describeFeature(flag)}, which this kernel's ublk driver lacks`,
  );
}

/** Each flag set in the mask, lowest first. */
export function flagsOf(mask: number): number[] {
  const flags: number[] = [];
  for (let flag = 1; flag <= mask; flag *= 2) if (hasFlag(mask, flag)) flags.push(flag);
  return flags;
}

/**
 * Flags that change nothing about how a probe device behaves and that a kernel without
 * GET_FEATURES (before 6.5) may know: ADD_DEV keeps the ones it supports.
 */
const PROBE_FLAGS =
  UBLK_F.URING_CMD_COMP_IN_TASK |
  UBLK_F.NEED_GET_DATA |
  UBLK_F.USER_RECOVERY |
  UBLK_F.USER_RECOVERY_REISSUE |
  UBLK_F.CMD_IOCTL_ENCODE;

/** GET_FEATURES where the kernel has it; before 6.5, what ADD_DEV grants a throwaway device. */
export async function kernelFeatures(control: Control): Promise<number> {
  const features = await control.getFeatures();
  if (features !== undefined) return features;
  const probe = await control.addDev({
    nrHwQueues: 1,
    queueDepth: 1,
    maxIoBufBytes: 4096,
    flags: PROBE_FLAGS,
  });
  await control.delDev(probe.devId);
  return probe.flags;
}

/** Whether the u64 mask has the flag (bit operators would cut it to 32 bits). */
export function hasFlag(mask: number, flag: number): boolean {
  return Math.floor(mask / flag) % 2 === 1;
}
