import { DEBUG_EVERY_FAILURE } from '../ublk/queue/failure-log.js';
import {
  isDeviceOptionError,
  type OptionTerm,
  type OptionWords,
} from '../ublk/device/data-path.js';
import type { AnyDeviceOptions } from '../ublk/device/device.js';
import { UserError } from '../errors.js';
import { DATA_PATH_FLAGS, type AddOptions } from './args.js';

/** The device options `ublk add` asks for. */
export function deviceOptionsOf(o: AddOptions, targetSource: string): AnyDeviceOptions {
  return {
    target: targetSource,
    args: o.targetArgs,
    id: o.devId < 0 ? undefined : o.devId,
    queues: o.queues,
    depth: o.depth,
    maxIoBufBytes: o.maxIoBufBytes,
    dataPath: o.dataPath,
    batch: o.batchIo === true,
    // As in ublksrv, reissue and fail-io imply recovery.
    recovery:
      o.userRecoveryReissue || o.userRecoveryFailIo
        ? { reissue: o.userRecoveryReissue, failIo: o.userRecoveryFailIo }
        : o.userRecovery,
    unprivileged: o.unprivileged,
    needGetData: o.needGetData,
    completeInTask: o.uringComp,
    partitionScan: !o.noAutoPartScan,
    logEveryFailure: (o.debugMask & DEBUG_EVERY_FAILURE) !== 0,
  };
}

/** The data paths `ublk add` names by a flag of DATA_PATH_FLAGS. */
type FlagTerm = `dataPath '${(typeof DATA_PATH_FLAGS)[number][2]}'`;

/** The other options as `ublk add`'s flags. */
const FLAG_NAMES: Readonly<Record<Exclude<OptionTerm, FlagTerm>, string>> = {
  "dataPath 'auto'": 'the default data path',
  "dataPath 'copy'": '--no_auto_zc',
  batch: '-b',
  needGetData: '-g 1',
  unprivileged: '--unprivileged',
  recovery: '-r 1',
};

const CLI_WORDS: OptionWords = {
  name: (term) =>
    DATA_PATH_FLAGS.find(([, , path]) => term === `dataPath '${path}'`)?.[0] ??
    FLAG_NAMES[term as Exclude<OptionTerm, FlagTerm>],
  exclude: (a, b) => `${a} and ${b} exclude each other`,
};

/** A refused device option in the CLI's words; any other error unchanged. */
export function inCliWords(err: unknown): unknown {
  return isDeviceOptionError(err) ? new UserError(err.inWords(CLI_WORDS), { cause: err }) : err;
}
