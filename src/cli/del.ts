import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../errors.js';
import { UBLK_F } from '../ublk/ublk-cmd.js';
import { isControlError, type Control, type DevInfo } from '../ublk/control/control.js';
import { explainControlError } from '../ublk/control/control-errors.js';
import { hasFlag, missingFeature } from '../ublk/control/feature-flags.js';
import type { DelOptions } from './args.js';
import { knownDeviceIds } from './devices.js';
import { isProcessAlive, readRecord, removeRecord } from './run-dir.js';

/** How long a daemon may take to notice STOP_DEV and release the device before it is killed. */
const DAEMON_EXIT_MS = 30_000;

async function waitForExit(pid: number, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline;) {
    if (!isProcessAlive(pid)) return true;
    await sleep(50);
  }
  return !isProcessAlive(pid);
}

/**
 * ublksrv's order: STOP_DEV (the daemon sees every tag aborted and exits), wait for the daemon,
 * DEL_DEV. A daemon that does not let go is killed, since DEL_DEV would otherwise wait for it
 * forever while holding the driver's global lock.
 */
export async function deleteDevice(
  control: Control,
  devId: number,
  { async = false, safe = false } = {},
): Promise<void> {
  let info;
  try {
    info = await control.getDevInfo(devId);
  } catch (err) {
    if (!isControlError(err, 'ENODEV')) throw explainControlError(err, devId);
    removeRecord(devId);
    throw new UserError(`there is no ublk device ${devId}`);
  }
  const pid = readRecord(devId)?.pid ?? info.ublksrvPid;
  await (safe ? safeStop(control, info) : control.stopDev(devId)).catch((err: unknown) => {
    // ENODEV: no disk any more (DEAD), so nobody has it open: on to DEL_DEV.
    if (!isControlError(err, 'ENODEV')) throw err;
  });
  if (pid > 0 && pid !== process.pid && !(await waitForExit(pid, DAEMON_EXIT_MS))) {
    console.error(`ublk: daemon ${pid} of device ${devId} did not exit; killing it`);
    process.kill(pid, 'SIGKILL');
    await waitForExit(pid, DAEMON_EXIT_MS);
  }
  await deleteCommand(control, info, async).catch((err: unknown) => {
    // The daemon deletes the device itself when it sees the stop.
    if (!isControlError(err, 'ENODEV')) throw err;
  });
  removeRecord(devId);
}

/** TRY_STOP_DEV: the device stays as it was, served, while anyone has the disk open. */
async function safeStop(control: Control, info: DevInfo): Promise<void> {
  if (!hasFlag(info.flags, UBLK_F.SAFE_STOP_DEV)) {
    throw missingFeature('del --safe', UBLK_F.SAFE_STOP_DEV);
  }
  await control.tryStopDev(info.devId).catch((err: unknown) => {
    if (isControlError(err, 'EBUSY')) {
      throw new UserError(
        `device ${info.devId} is open (EBUSY): not deleted; close /dev/ublkb${info.devId} or del without --safe`,
      );
    }
    throw err;
  });
}

async function deleteCommand(control: Control, info: DevInfo, async: boolean): Promise<void> {
  const { devId } = info;
  if (async && hasFlag(info.flags, UBLK_F.UNPRIVILEGED_DEV)) {
    // The driver's permission check for unprivileged devices has no case for DEL_DEV_ASYNC (7.3:
    // EINVAL), so it is never open to them.
    console.error(
      `ublk: device ${devId} is unprivileged, for which the kernel has no DEL_DEV_ASYNC; deleted with DEL_DEV`,
    );
  } else if (async) {
    if (await control.delDevAsync(devId)) return;
    console.error('ublk: this kernel has no DEL_DEV_ASYNC (Linux 6.9+); deleted with DEL_DEV');
  }
  await control.delDev(devId);
}

export async function delCommand(control: Control, options: DelOptions): Promise<void> {
  if (options.devId !== undefined) return deleteDevice(control, options.devId, options);
  for (const id of knownDeviceIds()) {
    await deleteDevice(control, id, options).catch((err: unknown) => {
      if (!(err instanceof UserError)) throw err;
    });
  }
}
