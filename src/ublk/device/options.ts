/**
 * The options of createDevice and recoverDevice: their types, where the combinations that exclude
 * each other are compile errors, and the run-time check a JavaScript caller gets instead (unknown
 * keys, values of the wrong kind), made before anything exists.
 */
import { UserError } from '../../errors.js';
import type { Target, TargetArgs } from '../target/contract.js';
import { DATA_PATHS, type DataPath } from './data-path.js';

/** What every device has, whatever its data path. */
interface CommonDeviceOptions {
  /**
   * The target: the path of a target module, its file: URL, or a Target object that says which
   * module it is the default export of (defineTarget(spec, import.meta.url), or a withFilters
   * stack of such), which each queue thread imports. Built-in names and exports ('loop',
   * loopTarget) are the package index's createDevice's to turn into their modules' URLs.
   */
  target: string | URL | Target;
  /** The target's arguments, as `ublk add` would pass its options. */
  args?: TargetArgs;
  /** Device id; the kernel picks one when omitted. */
  id?: number;
  queues?: number;
  depth?: number;
  maxIoBufBytes?: number;
  /**
   * How request data reaches the handlers (see DataPath); default 'auto'. CLI: --usercopy,
   * -z/--zerocopy, --auto_zc, --manual_zc, --no_auto_zc (copy).
   */
  dataPath?: DataPath;
  /** Batch IO (UBLK_F_BATCH_IO, 7.0+; CLI -b): batched fetch and commit commands. */
  batch?: boolean;
  /** UBLK_F_URING_CMD_COMP_IN_TASK (CLI -u 1). */
  completeInTask?: boolean;
  /** Scan the partition table at start; false is UBLK_F_NO_AUTO_PART_SCAN (7.0+). Default true. */
  partitionScan?: boolean;
  /** The block layer's I/O scheduler for the device (sysfs name); default 'none'. */
  ioScheduler?: string;
  /** Log every request a handler fails, not only the first of each cause. */
  logEveryFailure?: boolean;
}

/**
 * User recovery (UBLK_F_USER_RECOVERY, CLI -r 1): a device whose daemon dies waits for a new one
 * (recoverDevice). `reissue` (-i 1) sends the requests in flight again; `failIo` (-e 1, 6.13+)
 * fails new requests while no daemon serves it.
 */
export type RecoveryOption = boolean | { reissue?: boolean; failIo?: boolean };

/** NEED_GET_DATA (CLI -g 1) is a copy data path flag, and the kernel drops it from batch IO. */
type GetDataChoice =
  { needGetData: true; dataPath?: 'auto' | 'copy'; batch?: false } | { needGetData?: false };

/**
 * An unprivileged device (UBLK_F_UNPRIVILEGED_DEV, 6.3+, CLI --unprivileged): owned by the user
 * who adds it; the kernel allows it neither user copy, zero copy (of any kind) nor recovery, so its
 * data path is 'auto' (which is then copy) or 'copy'.
 */
type PrivilegeChoice =
  | {
      unprivileged: true;
      dataPath?: 'auto' | 'copy';
      recovery?: false;
    }
  | { unprivileged?: false; recovery?: RecoveryOption };

export type DeviceOptions = CommonDeviceOptions & GetDataChoice & PrivilegeChoice;

/** Every option with its own type, the exclusions left to the run-time check (the CLI's view). */
export type AnyDeviceOptions = CommonDeviceOptions & {
  needGetData?: boolean;
  unprivileged?: boolean;
  recovery?: RecoveryOption;
};

export interface RecoverOptions {
  /** The target the device was made with, as in DeviceOptions. */
  target: string | URL | Target;
  /** The target's arguments, as the device was added with. */
  args?: TargetArgs;
  /** Accept a target that cannot keep the data of the dead daemon (mem) starting empty. */
  startEmpty?: boolean;
  /**
   * How long to wait for the old daemon to be gone and the kernel to have quiesced the device
   * (START_USER_RECOVERY answers EBUSY until then). Default 30 s.
   */
  waitMs?: number;
  /** As in DeviceOptions. */
  logEveryFailure?: boolean;
}

type Kind = 'target' | 'string' | 'number' | 'boolean' | 'object' | 'dataPath' | 'recovery';

const DEVICE_KEYS: Readonly<Record<keyof AnyDeviceOptions, Kind>> = {
  target: 'target',
  args: 'object',
  id: 'number',
  queues: 'number',
  depth: 'number',
  maxIoBufBytes: 'number',
  dataPath: 'dataPath',
  batch: 'boolean',
  recovery: 'recovery',
  unprivileged: 'boolean',
  needGetData: 'boolean',
  completeInTask: 'boolean',
  partitionScan: 'boolean',
  ioScheduler: 'string',
  logEveryFailure: 'boolean',
};

const RECOVER_KEYS: Readonly<Record<keyof RecoverOptions, Kind>> = {
  target: 'target',
  args: 'object',
  startEmpty: 'boolean',
  waitMs: 'number',
  logEveryFailure: 'boolean',
};

function fits(kind: Kind, value: unknown): boolean {
  switch (kind) {
    case 'target':
      return true; // the loader says what it cannot load
    case 'dataPath':
      return (DATA_PATHS as readonly unknown[]).includes(value);
    case 'recovery':
      return (
        typeof value === 'boolean' ||
        (typeof value === 'object' &&
          value !== null &&
          Object.entries(value).every(
            ([k, v]) => (k === 'reissue' || k === 'failIo') && typeof v === 'boolean',
          ))
      );
    case 'object':
      return typeof value === 'object' && value !== null;
    default:
      return typeof value === kind;
  }
}

const EXPECTED: Readonly<Record<Kind, string>> = {
  target: 'a target',
  string: 'a string',
  number: 'a number',
  boolean: 'true or false',
  object: 'an object',
  dataPath: DATA_PATHS.map((p) => `'${p}'`).join(', '),
  recovery: 'true, false or { reissue?, failIo? }',
};

/**
 * Refuses, in one line, a key the options do not have (`flags`, a typo) and a value of the wrong
 * kind: what a JavaScript caller, unchecked by the types, may pass.
 */
function checkKeys(what: string, options: unknown, keys: Readonly<Record<string, Kind>>): void {
  if (typeof options !== 'object' || options === null) {
    throw new UserError(`${what}: the options must be an object`);
  }
  for (const [key, value] of Object.entries(options)) {
    const kind = Object.hasOwn(keys, key) ? keys[key] : undefined;
    if (kind === undefined) {
      throw new UserError(
        `${what}: unknown option '${key}' (known: ${Object.keys(keys).join(', ')})`,
      );
    }
    if (value !== undefined && !fits(kind, value)) {
      throw new UserError(`${what}: option ${key} must be ${EXPECTED[kind]}`);
    }
  }
  if ((options as { target?: unknown }).target === undefined) {
    throw new UserError(`${what}: option target is required`);
  }
}

export function checkDeviceOptions(options: unknown): asserts options is AnyDeviceOptions {
  checkKeys('createDevice', options, DEVICE_KEYS);
}

export function checkRecoverOptions(options: unknown): asserts options is RecoverOptions {
  checkKeys('recoverDevice', options, RECOVER_KEYS);
}
