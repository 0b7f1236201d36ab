/** The library: create ublk devices from code, and write targets for them. */
import {
  createDevice as createServedDevice,
  recoverDevice as recoverServedDevice,
  type Device,
  type DeviceOptions,
  type RecoverOptions,
} from './ublk/device/device.js';
import { withBuiltInTarget } from './targets/registry.js';

export type {
  DataPath,
  Device,
  DeviceOptions,
  QueueInfo,
  RecoverOptions,
  RecoveryOption,
} from './ublk/device/device.js';

/**
 * Creates and starts a ublk device served by this process. `options.target` is a built-in
 * target's name ('null', 'loop', 'mem', 'nbd'), a target module's path or file: URL, or a Target
 * object: a built-in export (loopTarget), a withFilters(...) stack, or a module's default export
 * made with defineTarget(spec, import.meta.url). An object that does not say which module it
 * comes from is refused (the queue threads import the target from there).
 */
export async function createDevice(options: DeviceOptions): Promise<Device> {
  return createServedDevice(await withBuiltIn(options));
}

/** Serves a device whose daemon died, added with recovery; `options.target` as in createDevice. */
export async function recoverDevice(devId: number, options: RecoverOptions): Promise<Device> {
  return recoverServedDevice(devId, await withBuiltIn(options));
}

async function withBuiltIn<T extends { target: DeviceOptions['target'] }>(options: T): Promise<T> {
  // A JavaScript caller's bad options are src/ublk's to refuse.
  if (typeof options !== 'object' || options === null) return options;
  return { ...options, target: await withBuiltInTarget(options.target) };
}

/** What target and filter modules use: defineTarget, defineFilter, withFilters, hooks, types. */
export * from './targets/define.js';
/** The built-in targets and filters, for withFilters() and for wrapping in a module of one's own. */
export { default as loopTarget } from './targets/loop.js';
export { default as memTarget } from './targets/mem.js';
export { default as nullTarget } from './targets/null.js';
export { default as cowFilter } from './targets/filters/cow.js';
export { default as delayFilter } from './targets/filters/delay.js';
export { default as errorFilter } from './targets/filters/error.js';
export { default as readonlyFilter } from './targets/filters/readonly.js';
export { default as statsFilter } from './targets/filters/stats.js';
/** The fallocate(2) modes of QueueIo.fallocate. */
export { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } from './uring/abi.js';
export {
  checkResult,
  ERROR_CODES,
  errnoError,
  errnoName,
  isErrnoError,
  isUserError,
  UserError,
  type ErrnoContext,
  type ErrnoError,
  type UserErrorCode,
} from './errors.js';
/** What a ublk control command the kernel refused throws (ADD_DEV's EEXIST...). */
export { ControlError, isControlError } from './ublk/control/control.js';
