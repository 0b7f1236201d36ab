/**
 * What a target module imports (or, from outside this package, `ublk-ts`): defineTarget, the
 * helpers targets share, and the contract's types, which live in src/ublk/target/contract.ts because the
 * device and its queues consume them.
 */
import type {
  MaybePromise,
  NoExtraKeys,
  OptionValues,
  QueueContext,
  QueueHandlers,
  SetupEnv,
  Target,
  TargetOptionSpecs,
  TargetSetup,
} from '../ublk/target/contract.js';
import { recordModule } from '../ublk/target/module-source.js';

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
 * What defineTarget takes: a Target whose setup() and queue() results (keys `SetupKeys` and
 * `HandlerKeys`, inferred) hold no key the contract lacks, so that a misspelt one fails to compile.
 */
export interface TargetDefinition<
  Shared,
  Options extends TargetOptionSpecs,
  SetupKeys extends PropertyKey,
  HandlerKeys extends PropertyKey,
> extends Omit<Target<Shared, Options>, 'setup' | 'queue'> {
  setup(
    args: OptionValues<Options>,
    env: SetupEnv,
  ): MaybePromise<TargetSetup<Shared> & NoExtraKeys<TargetSetup, SetupKeys>>;
  queue(
    shared: Shared,
    ctx: QueueContext,
  ): MaybePromise<QueueHandlers & NoExtraKeys<QueueHandlers, HandlerKeys>>;
}

/**
 * Gives a target module full type checking: `setup(args)` gets its option values typed from
 * `options`, `queue(shared)` the type of what setup shares, and a key of what either returns that
 * the contract does not know (`flsuh`, `capabilites`) is an error. Returns `target` itself.
 *
 * `moduleUrl`, the module's own `import.meta.url`, lets the target be passed to createDevice as
 * an object (alone or in a withFilters stack), not only by its module's path: each queue thread
 * imports the target (functions cannot be sent to a thread), and this is where from. The object
 * must then be that module's default export; createDevice checks that, and refuses an object
 * that does not say where it comes from, in one line. The URL is given rather than found from
 * the call stack, which source maps, bundlers and loaders rewrite.
 *
 * @example export default defineTarget({ name: 'zero', setup, queue }, import.meta.url);
 */
export function defineTarget<
  Shared,
  const Options extends TargetOptionSpecs = TargetOptionSpecs,
  SetupKeys extends PropertyKey = never,
  HandlerKeys extends PropertyKey = never,
>(
  target: TargetDefinition<Shared, Options, SetupKeys, HandlerKeys>,
  moduleUrl?: string | URL,
): Target<Shared, Options> {
  return recordModule<Target<Shared, Options>>(target, moduleUrl);
}
