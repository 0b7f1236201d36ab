/**
 * Operations on a running device by its id, from any process that may control it (root, or the
 * owner of an unprivileged device): the daemon serving it need not take part.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../errors.js';
import { deviceStateName, UBLK_F, UBLK_S_DEV } from '../ublk-cmd.js';
import { isControlError, type Control, type DevInfo } from './control.js';
import { hasFlag, kernelFeatures, missingFeature } from './feature-flags.js';

const SECTOR = 512;

async function deviceInfo(control: Control, devId: number): Promise<DevInfo> {
  return control.getDevInfo(devId).catch((err: unknown) => {
    if (isControlError(err, 'ENODEV')) throw new UserError(`there is no ublk device ${devId}`);
    throw err;
  });
}

/**
 * UPDATE_SIZE (Linux 6.16+): the started device's capacity becomes `bytes`, a multiple of its
 * logical block size; the kernel tells the block layer, so readers see the new size at once. The
 * target must be able to serve it (a loop target's file grown first, say; null serves any size).
 * The kernel needs no device flag for it: the feature is GET_FEATURES' UBLK_F_UPDATE_SIZE.
 */
export async function resizeDevice(control: Control, devId: number, bytes: number): Promise<void> {
  if (!hasFlag(await kernelFeatures(control), UBLK_F.UPDATE_SIZE)) {
    throw missingFeature('resizing a device (update_size)', UBLK_F.UPDATE_SIZE);
  }
  await deviceInfo(control, devId);
  const params = await control.getParams(devId);
  const blockSize = 2 ** (params.basic?.logicalBsShift ?? 9);
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % blockSize !== 0) {
    throw new UserError(
      `invalid size ${bytes} for device ${devId}: a positive multiple of its block size (${blockSize})`,
    );
  }
  await control.updateSize(devId, bytes / SECTOR).catch((err: unknown) => {
    if (isControlError(err, 'ENODEV')) {
      throw new UserError(`device ${devId} has no block device (not started): cannot resize it`);
    }
    throw err;
  });
}

/** How long QUIESCE_DEV may wait for each queue to have an idle tag (kublk waits 10 s). */
const QUIESCE_TIMEOUT_MS = 30_000;
/**
 * How long the serving daemon may take to let go of the device once its tags are aborted. Seen
 * taking over 30 s in the emulated test VM with the host's two cores shared by three VMs.
 */
const LET_GO_MS = 90_000;

/**
 * QUIESCE_DEV (Linux 6.16+, a device added with recovery, -r 1, which asks for UBLK_F_QUIESCE):
 * for a server upgrade without failing IO. The kernel holds new requests, the serving daemon
 * finishes those it has and lets go of the device without deleting it (see Device.closed), and
 * the device goes QUIESCED, its requests waiting for `ublk recover`. Resolves with the state once
 * the daemon let go.
 */
export async function quiesceDevice(control: Control, devId: number): Promise<string> {
  const info = await deviceInfo(control, devId);
  refuseUnquiescable(info, await kernelFeatures(control));
  if (info.state !== UBLK_S_DEV.LIVE) {
    throw new UserError(
      `device ${devId} is ${deviceStateName(info.state)}, not LIVE: nothing to quiesce`,
    );
  }
  await control.quiesceDev(devId, QUIESCE_TIMEOUT_MS).catch((err: unknown) => {
    if (isControlError(err, 'EBUSY')) {
      throw new UserError(
        `device ${devId}: every tag of a queue stayed busy for ${QUIESCE_TIMEOUT_MS / 1000} s, so the kernel did not quiesce it`,
      );
    }
    throw err;
  });
  let state: number = info.state;
  for (const deadline = Date.now() + LET_GO_MS; Date.now() < deadline; await sleep(100)) {
    state = (await control.getDevInfo(devId)).state;
    if (state !== UBLK_S_DEV.LIVE) break;
  }
  return deviceStateName(state);
}

function refuseUnquiescable(info: DevInfo, features: number): void {
  if (hasFlag(info.flags, UBLK_F.QUIESCE)) return;
  if (!hasFlag(features, UBLK_F.QUIESCE)) {
    throw missingFeature('quiesce', UBLK_F.QUIESCE);
  }
  if (hasFlag(info.flags, UBLK_F.USER_RECOVERY)) {
    throw new UserError(`device ${info.devId} was added without UBLK_F_QUIESCE: cannot quiesce it`);
  }
  throw new UserError(
    `device ${info.devId} was added without recovery (-r 1), so it cannot be quiesced: a quiesced device waits for 'ublk recover'`,
  );
}
