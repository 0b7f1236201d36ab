/** The library: create ublk devices from code, and write targets for them. */
export {
  createDevice,
  recoverDevice,
  type Device,
  type DeviceOptions,
  type QueueInfo,
  type RecoverOptions,
} from './ublk/device.js';
export {
  defineTarget,
  type Capabilities,
  type IoResult,
  type QueueContext,
  type QueueHandlers,
  type QueueIo,
  type SetupEnv,
  type Target,
  type TargetSetup,
  type WriteFlags,
  type ZeroFlags,
} from './targets/target.js';
export { UserError } from './errors.js';
export { parseSize } from './cli/numbers.js';
