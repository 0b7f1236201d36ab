/** The library: create ublk devices from code, and write targets for them. */
export {
  createDevice,
  recoverDevice,
  type Device,
  type DeviceOptions,
  type QueueInfo,
  type RecoverOptions,
} from './ublk/device/device.js';
/** For DeviceOptions.flags: the UBLK_F_ feature bits to ask ADD_DEV for. */
export { UBLK_F } from './ublk/ublk-cmd.js';
export {
  defineFilter,
  defineTarget,
  withFilters,
  type BoundFilter,
  type Filter,
  type FilterEntry,
  type FilterHandlers,
  type FilterSetup,
  type NextHandlers,
  parseSize,
  SECTOR,
  type Capabilities,
  type IoResult,
  type MaybePromise,
  type OptionValues,
  type QueueContext,
  type QueueHandlers,
  type QueueIo,
  type RequestData,
  HOOK_PASS,
  hookDelay,
  hookFail,
  ROUTE_BELOW,
  ROUTE_HANDLERS,
  routeToFile,
  type HookRoute,
  type HookVerdict,
  type RequestHook,
  type RequestKind,
  type RingForward,
  type SetupEnv,
  type Target,
  type TargetArgs,
  type TargetOptionSpec,
  type TargetOptionSpecs,
  type TargetSetup,
  type WriteFlags,
  type ZeroFlags,
} from './targets/define.js';
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
