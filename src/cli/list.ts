import { existsSync, statSync } from 'node:fs';
import { deviceStateName } from '../ublk/ublk-cmd.js';
import { isControlError, type Control } from '../ublk/control/control.js';
import { majorMinor } from '../sys.js';
import { explainControlError } from '../ublk/control/control-errors.js';
import { UserError } from '../errors.js';
import type { ListOptions } from './args.js';
import { knownDeviceIds } from './devices.js';
import { formatListing, listingJson, type DeviceListing } from './list-format.js';
import { isProcessAlive, readRecord, removeRecord } from './run-dir.js';

/** What `list` shows of one device, or undefined when the kernel has no such device. */
export async function describeDevice(
  control: Control,
  devId: number,
): Promise<DeviceListing | undefined> {
  let info;
  try {
    info = await control.getDevInfo(devId);
  } catch (err) {
    if (!isControlError(err, 'ENODEV')) throw err;
    // A record of a device the kernel no longer has is stale once its daemon is gone, and so is
    // one that cannot be read (a daemon writes its record whole, after the device exists).
    const record = readRecord(devId);
    if (!record || !isProcessAlive(record.pid)) removeRecord(devId);
    return undefined;
  }
  const params = await control.getParams(devId).catch(() => ({ basic: undefined }));
  const record = readRecord(devId);
  const live = record !== undefined && isProcessAlive(record.pid);
  const queues = [];
  for (let q = 0; q < info.nrHwQueues; q++) {
    const recorded = live ? record.queues[q] : undefined;
    queues.push(
      recorded ?? { tid: 0, affinity: await control.getQueueAffinity(devId, q).catch(() => []) },
    );
  }
  return {
    devId,
    nrHwQueues: info.nrHwQueues,
    queueDepth: info.queueDepth,
    logicalBlockSize: 2 ** (params.basic?.logicalBsShift ?? 9),
    devSectors: params.basic?.devSectors ?? 0,
    maxIoBufBytes: info.maxIoBufBytes,
    daemonPid: info.ublksrvPid,
    flags: info.flags,
    state: deviceStateName(info.state),
    ublkc: deviceNumbers(`/dev/ublkc${devId}`),
    ublkb: deviceNumbers(`/dev/ublkb${devId}`),
    ownerUid: info.ownerUid,
    ownerGid: info.ownerGid,
    queues,
    target: record?.target,
  };
}

/** "major:minor" of a device node, as `list` shows it: "0:0" when it does not exist. */
export function deviceNumbers(path: string): string {
  return existsSync(path) ? majorMinor(statSync(path).rdev) : '0:0';
}

export async function listCommand(control: Control, options: ListOptions): Promise<string> {
  const ids = options.devId === undefined ? knownDeviceIds() : [options.devId];
  const listings: DeviceListing[] = [];
  for (const id of ids) {
    let listing;
    try {
      listing = await describeDevice(control, id);
    } catch (err) {
      // Another user's device (or root's, to a user): the kernel shows it to its owner only.
      const hidden = isControlError(err, 'EPERM') || isControlError(err, 'EACCES');
      if (hidden && options.devId === undefined) continue;
      throw explainControlError(err, id);
    }
    if (listing) listings.push(listing);
    else if (options.devId !== undefined) throw new UserError(`there is no ublk device ${id}`);
  }
  if (options.json) return JSON.stringify(listings.map(listingJson), null, 2) + '\n';
  return listings.map((listing) => formatListing(listing, options.layout)).join('');
}
