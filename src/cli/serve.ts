import { UBLK_F } from '../ublk/abi.js';
import { createDevice, type Device } from '../ublk/device.js';
import { TARGET_TYPE_NUMBERS, USER_TARGET_TYPE } from '../targets/load.js';
import type { AddOptions } from './args.js';
import { removeRecord, writeRecord } from './run-dir.js';

export function requestedFlags(o: AddOptions): number {
  return (
    (o.uringComp ? UBLK_F.URING_CMD_COMP_IN_TASK : 0) |
    (o.needGetData ? UBLK_F.NEED_GET_DATA : 0) |
    (o.userRecovery ? UBLK_F.USER_RECOVERY : 0) |
    (o.userRecoveryReissue ? UBLK_F.USER_RECOVERY_REISSUE : 0) |
    (o.userRecoveryFailIo ? UBLK_F.USER_RECOVERY_FAIL_IO : 0)
  );
}

/** The `target {...}` line of `list`, in ublksrv's shape. */
function targetDescription(device: Device): Record<string, unknown> {
  const { name, size, info } = device.target;
  return {
    ...info,
    name,
    type: TARGET_TYPE_NUMBERS[name] ?? USER_TARGET_TYPE,
    dev_size: size,
  };
}

/**
 * The daemon's life: create the device, publish it in the run dir, serve until SIGTERM, SIGINT
 * or a `ublk del` from elsewhere stops it, then exit having deleted the device and its record.
 */
export async function serve(options: AddOptions, targetSource: string): Promise<Device> {
  const device = await createDevice({
    target: targetSource,
    args: options.targetArgs,
    id: options.devId < 0 ? undefined : options.devId,
    queues: options.queues,
    depth: options.depth,
    maxIoBufBytes: options.maxIoBufBytes,
    flags: requestedFlags(options),
  });
  writeRecord({
    devId: device.id,
    pid: process.pid,
    queues: device.queues,
    target: targetDescription(device),
    targetSource,
    options: { ...options, devId: device.id },
  });
  const stop = () => {
    device.stop().catch((err: unknown) => {
      console.error(`ublk: stopping device ${device.id} failed: ${(err as Error).message}`);
      process.exit(1);
    });
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  device.closed.then(
    () => {
      removeRecord(device.id);
      process.exit(0);
    },
    (err: unknown) => {
      console.error(`ublk: device ${device.id} failed: ${(err as Error).message}`);
      process.exit(1);
    },
  );
  return device;
}
