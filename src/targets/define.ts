/**
 * What a target module imports (or, from outside this package, `ublk-ts`): defineTarget, the
 * helpers targets share, and the contract's types, which live in src/ublk/target/contract.ts because the
 * device and its queues consume them.
 */
import type { Target, TargetOptionSpecs } from '../ublk/target/contract.js';

export type {
  Capabilities,
  IoResult,
  MaybePromise,
  OptionValues,
  QueueContext,
  QueueHandlers,
  QueueIo,
  RequestData,
  RingForward,
  SetupEnv,
  Target,
  TargetArgs,
  TargetOptionSpec,
  TargetOptionSpecs,
  TargetSetup,
  WriteFlags,
  ZeroFlags,
} from '../ublk/target/contract.js';
export { SECTOR } from '../ublk/target/contract.js';
export {
  defineFilter,
  withFilters,
  type BoundFilter,
  type Filter,
  type FilterEntry,
  type FilterHandlers,
  type FilterSetup,
  type NextHandlers,
} from '../ublk/target/filter.js';
export {
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
} from '../ublk/queue/request-hooks.js';
export { parseSize } from './size.js';
export { UserError } from '../errors.js';

/**
 * Identity helper that gives a target module full type checking: `setup(args)` gets its option
 * values typed from `options`, and `queue(shared)` the type of what setup shares.
 */
export function defineTarget<Shared, const Options extends TargetOptionSpecs = TargetOptionSpecs>(
  target: Target<Shared, Options>,
): Target<Shared, Options> {
  return target;
}
