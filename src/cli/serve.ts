import { DEBUG_EVERY_FAILURE } from '../ublk/queue/failure-log.js';
import { createDevice, recoverDevice, type Device } from '../ublk/device/device.js';
import { deviceOptionsOf, inCliWords } from './device-options.js';
import { TARGET_TYPE_NUMBERS, USER_TARGET_TYPE } from '../targets/registry.js';
import { UserError } from '../errors.js';
import type { AddOptions } from './args.js';
import { readRecord, removeRecord, runDir, writeRecord } from './run-dir.js';

/**
 * What a daemon is started for: a new device (`ublk add`), or a device whose daemon died, taken
 * over as its record in the run dir describes it (`ublk recover`).
 */
export type ServeJob =
  | { kind: 'add'; options: AddOptions; targetSource: string }
  | { kind: 'recover'; devId: number; startEmpty: boolean };

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

/** Brings the device up, as a new device or by recovery; returns how it was made. */
async function startDevice(
  job: ServeJob,
): Promise<{ device: Device; options: AddOptions; targetSource: string }> {
  if (job.kind === 'add') {
    const { options, targetSource } = job;
    // The CLI's combinations are checked when the device is made, refused in its own words.
    const device = await createDevice(deviceOptionsOf(options, targetSource)).catch(
      (err: unknown) => {
        throw inCliWords(err);
      },
    );
    return { device, options, targetSource };
  }
  const record = readRecord(job.devId);
  if (!record) {
    throw new UserError(
      `no record of device ${job.devId} in ${runDir()}: recover takes the target and its options from the record that 'ublk add' wrote`,
    );
  }
  const device = await recoverDevice(job.devId, {
    target: record.targetSource,
    args: record.options.targetArgs,
    startEmpty: job.startEmpty,
    logEveryFailure: (record.options.debugMask & DEBUG_EVERY_FAILURE) !== 0,
  });
  return { device, options: record.options, targetSource: record.targetSource };
}

/**
 * The daemon's life: create (or recover) the device, publish it in the run dir, serve until
 * SIGTERM, SIGINT or a `ublk del` from elsewhere stops it, then exit having deleted the device and
 * its record. A queue thread that fails ends the process at once, with the reason on stderr (the
 * daemon log): the kernel then sees the daemon die and recovers the device or marks it DEAD.
 */
export async function serve(job: ServeJob): Promise<Device> {
  const { device, options, targetSource } = await startDevice(job);
  writeRecord({
    devId: device.id,
    pid: process.pid,
    queues: device.queues,
    target: targetDescription(device),
    targetSource,
    options: { ...options, devId: device.id },
  });
  const fail = (what: string, err: unknown) => {
    const e = err as Error;
    console.error(
      `ublk daemon ${process.pid}: device ${device.id} ${what}: ${e.stack ?? e.message ?? String(err)}`,
    );
    process.exit(1);
  };
  const stop = () => {
    device.stop().catch((err: unknown) => fail('failed to stop', err));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  device.closed.then(
    (end) => {
      // A device handed over by `ublk quiesce` keeps its record: `ublk recover` reads it.
      if (end === 'handed-over') {
        console.error(`ublk daemon ${process.pid}: device ${device.id} quiesced, handed over`);
      } else {
        removeRecord(device.id);
      }
      process.exit(0);
    },
    (err: unknown) => fail('failed, daemon exiting', err),
  );
  return device;
}
