/**
 * Filters, nbdkit's idea in this target API: a filter wraps the layer below it (a target, or a
 * filter over one) and may change its setup (size, capabilities, options) and its requests and
 * results. `withFilters(target, [A, B])` is A over B over the target, as `nbdkit --filter=A
 * --filter=B plugin` and `ublk add --filter A --filter B` are.
 */
import { constants as osConstants } from 'node:os';
import { errnoError, UserError } from '../../errors.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../../uring/abi.js';
import type { RequestHook, RequestHooks, RequestKind } from '../queue/request-hooks.js';
import type {
  Capabilities,
  MaybePromise,
  NoExtraKeys,
  OptionValues,
  QueueContext,
  QueueHandlers,
  RingForward,
  SetupEnv,
  Target,
  TargetArgs,
  TargetOptionSpecs,
  TargetSetup,
} from './contract.js';
import { recordModule, recordStack } from './module-source.js';

const { EOPNOTSUPP } = osConstants.errno;

/**
 * The layer below a filter in a queue thread: every request kind is callable, whether the layer
 * serves it with a handler or with its `forward` (then as ring IO with a promise, the way the
 * queue would have forwarded it); one the layer cannot serve fails with EOPNOTSUPP.
 */
export type NextHandlers = Required<Omit<QueueHandlers, 'forward' | 'hooks' | 'close'>> & {
  /** The layer's own forward, for a filter that wants to know; the filter cannot change it. */
  readonly forward?: RingForward;
};

/**
 * What a filter's queue() returns: the request kinds it serves itself, each usually calling the
 * same kind of `next`. The kinds it leaves out go to the layer below unchanged, and the layer's
 * `forward` stays (promise-free, zero copy) unless the filter serves read or write without a hook.
 */
export type FilterHandlers = Omit<QueueHandlers, 'forward' | 'hooks'> & {
  /**
   * The filter's synchronous view of each request (see RequestHook): with it the queue keeps the
   * layer below's forward and zero copy, and the handlers above serve only filters stacked over
   * this one that serve requests themselves (they call `next`).
   */
  hook?: RequestHook;
};

/** What a filter's setup returns: each field left out is the layer below's. */
export interface FilterSetup<Shared = unknown> {
  size?: number;
  capabilities?: Capabilities;
  /** For this filter's queue(), structured-cloned to each queue thread as a target's is. */
  shared?: Shared;
  /** Added to the layer below's `ublk list` fields. */
  info?: Record<string, unknown>;
  /** Main thread, after the device is gone, before the layer below closes. */
  close?(): MaybePromise<void>;
  /** The filter's keepsForward for this device, when its options decide (delay on flush only). */
  keepsForward?: boolean;
}

export interface Filter<Shared = unknown, Options extends TargetOptionSpecs = TargetOptionSpecs> {
  /** Shown in `ublk list`'s `filters`. */
  name: string;
  /** Options this filter adds to `ublk add`; they share one namespace with the target's. */
  options?: Options;
  /**
   * Main thread, once per device. `next()` sets up the layer below (once, however often it is
   * called; the composition calls it after setup if the filter did not); a filter that fails
   * after it does not close it, the composition does.
   */
  setup?(
    next: () => Promise<TargetSetup>,
    args: OptionValues<Options>,
    env: SetupEnv,
  ): MaybePromise<FilterSetup<Shared>>;
  /** Each queue thread: the request kinds this filter serves, over the layer below's. */
  queue?(next: NextHandlers, shared: Shared, ctx: QueueContext): MaybePromise<FilterHandlers>;
  /**
   * queue() never serves read or write itself, so the layer below keeps its `forward` and zero
   * copy. Without it, a filter with a queue() turns zero copy off: its handlers would be given
   * the request's data, which zero copy never brings to JavaScript.
   */
  keepsForward?: boolean;
}

/**
 * What defineFilter takes: a Filter whose setup() and queue() results hold no key a filter's
 * results lack (the keys, of the capabilities too, are inferred), so that a misspelt one, or a
 * `forward` (the layer below's to keep), fails to compile. A filter's capabilities get this check
 * because, setup() being optional, TypeScript does not otherwise check them for unknown keys.
 */
export interface FilterDefinition<
  Shared,
  Options extends TargetOptionSpecs,
  SetupKeys extends PropertyKey,
  HandlerKeys extends PropertyKey,
  CapabilityKeys extends PropertyKey,
> extends Omit<Filter<Shared, Options>, 'setup' | 'queue'> {
  setup?(
    next: () => Promise<TargetSetup>,
    args: OptionValues<Options>,
    env: SetupEnv,
  ): MaybePromise<
    FilterSetup<Shared> &
      NoExtraKeys<FilterSetup, SetupKeys> & {
        capabilities?: NoExtraKeys<Capabilities, CapabilityKeys>;
      }
  >;
  queue?(
    next: NextHandlers,
    shared: Shared,
    ctx: QueueContext,
  ): MaybePromise<FilterHandlers & NoExtraKeys<FilterHandlers, HandlerKeys>>;
}

/**
 * Gives a filter module full type checking, as defineTarget does: `setup` gets its option values
 * typed from `options`, `queue` the type of what setup shares, and a key of what either returns
 * that a filter's results do not have is an error. With `moduleUrl` (the module's
 * `import.meta.url`), the filter, its module's default export, can be given to withFilters as an
 * object for createDevice: the queue threads import it from there (see defineTarget).
 */
export function defineFilter<
  Shared,
  const Options extends TargetOptionSpecs = TargetOptionSpecs,
  SetupKeys extends PropertyKey = never,
  HandlerKeys extends PropertyKey = never,
  CapabilityKeys extends PropertyKey = never,
>(
  filter: FilterDefinition<Shared, Options, SetupKeys, HandlerKeys, CapabilityKeys>,
  moduleUrl?: string | URL,
): Filter<Shared, Options> {
  return recordModule<Filter<Shared, Options>>(filter, moduleUrl);
}

/** A filter with the arguments it gets, rather than its options' values from the device's args. */
export interface BoundFilter {
  filter: Filter<unknown, TargetOptionSpecs>;
  args: TargetArgs;
}
export type FilterEntry = Filter<unknown, TargetOptionSpecs> | BoundFilter;

/** What the composition shares with its queues: each layer's own `shared`, target first. */
interface StackShared {
  target: unknown;
  filters: unknown[];
  /** Each filter's keepsForward, as its setup decided. */
  keepsForward: boolean[];
}

/**
 * The target seen through its filters, first outermost: one Target whose options are the
 * target's and those of each filter given without arguments, whose setup runs each layer's over
 * the one below, and whose queue() composes each layer's handlers over the one below. It records
 * what it is made of: createDevice takes it when each part is a module's default export defined
 * with its import.meta.url (as the built-in targets and filters are).
 */
export function withFilters(target: Target, entries: readonly FilterEntry[]): Target<StackShared> {
  const layers = entries.map((entry) =>
    'filter' in entry
      ? { filter: entry.filter as Filter, bound: entry.args }
      : { filter: entry as Filter, bound: undefined },
  );
  if (layers.length === 0) return target as Target<StackShared>;
  const parts = layers.map(({ filter, bound }) => ({ filter, args: bound }));
  const options: Record<string, TargetOptionSpecs[string]> = { ...target.options };
  const owner: Record<string, string> = {};
  for (const name of Object.keys(options)) owner[name] = `target ${target.name}`;
  for (const { filter, bound } of layers) {
    if (bound) continue;
    for (const [name, spec] of Object.entries(filter.options ?? {})) {
      if (Object.hasOwn(owner, name)) {
        throw new UserError(
          `filter ${filter.name}'s option --${name} clashes with ${owner[name]}'s: rename one of them`,
        );
      }
      owner[name] = `filter ${filter.name}`;
      options[name] = spec;
    }
  }
  const ownArgs = (args: TargetArgs, specs: TargetOptionSpecs | undefined): TargetArgs =>
    Object.fromEntries(Object.keys(specs ?? {}).map((name) => [name, args[name]]));

  const stack: Target<StackShared> = {
    name: target.name,
    options,
    async setup(args, env) {
      const shared: StackShared = { target: undefined, filters: [], keepsForward: [] };
      const closes: (() => MaybePromise<void>)[] = [];
      const setUp = async (depth: number): Promise<TargetSetup> => {
        if (depth === layers.length) {
          const inner = await target.setup(ownArgs(args, target.options), env);
          shared.target = inner.shared;
          if (inner.close) closes.unshift(inner.close.bind(inner));
          return inner;
        }
        const { filter, bound } = layers[depth];
        let below: Promise<TargetSetup> | undefined;
        const next = () => (below ??= setUp(depth + 1));
        const own = filter.setup
          ? await filter.setup(next, bound ?? ownArgs(args, filter.options), env)
          : {};
        const inner = await next();
        shared.filters[depth] = own.shared;
        const keepsForward = own.keepsForward ?? filter.keepsForward ?? false;
        shared.keepsForward[depth] = keepsForward;
        if (own.close) closes.unshift(own.close.bind(own));
        let capabilities = own.capabilities ?? inner.capabilities ?? {};
        if (filter.queue && !keepsForward && capabilities.zeroCopy) {
          capabilities = { ...capabilities, zeroCopy: false };
        }
        return {
          size: own.size ?? inner.size,
          capabilities,
          info: { ...inner.info, ...own.info },
        };
      };
      const closeAll = async () => {
        for (const close of closes) await close();
      };
      let top: TargetSetup;
      try {
        top = await setUp(0);
      } catch (err) {
        await closeAll().catch(() => undefined);
        throw err;
      }
      return {
        ...top,
        shared,
        info: { ...top.info, filters: layers.map((l) => l.filter.name) },
        close: closeAll,
      };
    },
    async queue(shared, ctx) {
      const inner = await target.queue(shared.target, ctx);
      let layer: Layer = { direct: inner, next: nextHandlers(inner, ctx) };
      for (let depth = layers.length - 1; depth >= 0; depth--) {
        const { filter } = layers[depth];
        if (!filter.queue) continue;
        const own = await filter.queue(layer.next, shared.filters[depth], ctx);
        const keepsForward = shared.keepsForward[depth];
        layer = overLayer({ name: filter.name, keepsForward }, own, layer);
      }
      return layer.direct;
    },
  };
  return recordStack(stack, { target, filters: parts });
}

/**
 * The stack down to some layer, two ways: `direct`, what the queue runs (hooks, then the forward
 * or handlers), and `next`, what a filter above that serves a request kind itself calls.
 */
export interface Layer {
  direct: QueueHandlers;
  next: NextHandlers;
}

const KINDS: readonly RequestKind[] = ['read', 'write', 'flush', 'discard', 'write_zeroes'];

/**
 * A filter's queue() over the layer below. With a hook, the queue runs the hook in front of what
 * it ran for the layer below (forward and zero copy kept), and the filter's handlers serve only
 * filters above it that call `next`, and the requests its route sends to them (a routing hook
 * needs a forward below: elsewhere its handlers serve every request). Without one, a filter serving read or write takes the
 * layer's data path to handlers (no forward: its handlers need the data); one serving only other
 * kinds keeps the forward for reads and writes, and the kinds it serves go to its handlers, past
 * the hooks below it (which its `next` runs as their filters' handlers).
 */
export function overLayer(
  filter: Pick<Filter, 'name' | 'keepsForward'>,
  own: FilterHandlers,
  below: Layer,
): Layer {
  const servesData = own.read !== undefined || own.write !== undefined;
  if (servesData && filter.keepsForward && own.hook === undefined) {
    throw new Error(
      `filter ${filter.name} declares keepsForward but its queue() serves read or write without a hook`,
    );
  }
  const { next: nextOf, direct: beneath } = below;
  const close = async () => {
    await own.close?.();
    await beneath.close?.();
  };
  const next: NextHandlers = {
    read: own.read ?? nextOf.read,
    write: own.write ?? nextOf.write,
    flush: own.flush ?? nextOf.flush,
    discard: own.discard ?? nextOf.discard,
    writeZeroes: own.writeZeroes ?? nextOf.writeZeroes,
  };
  const routes = own.hook?.route !== undefined;
  if (own.hook && (!routes || beneath.forward)) {
    const hooks: RequestHooks = {};
    const mine = { name: filter.name, hook: own.hook };
    for (const kind of KINDS) hooks[kind] = [mine, ...(beneath.hooks?.[kind] ?? [])];
    const direct: QueueHandlers = { ...beneath, hooks, close };
    if (routes) {
      // What its route sends to ROUTE_HANDLERS.
      const { read, write, flush, discard, writeZeroes } = own;
      Object.assign(direct, definedOnly({ read, write, flush, discard, writeZeroes }));
    }
    return { direct, next: { ...next, forward: beneath.forward } };
  }
  if (servesData || routes) {
    const { read, write, flush, discard, writeZeroes } = next;
    return { direct: { read, write, flush, discard, writeZeroes, close }, next };
  }
  // The kinds it serves go past the hooks below, which its next runs as their filters' handlers.
  const direct: QueueHandlers = { ...beneath, close };
  const hooks: RequestHooks = { ...beneath.hooks };
  if (own.flush) {
    direct.flush = own.flush;
    delete hooks.flush;
  }
  if (own.discard) {
    direct.discard = own.discard;
    delete hooks.discard;
  }
  if (own.writeZeroes) {
    direct.writeZeroes = own.writeZeroes;
    delete hooks.write_zeroes;
  }
  direct.hooks = hooks;
  const forward = beneath.forward;
  if (forward) {
    // A forwarded FLUSH or DISCARD would pass the filter's own by.
    direct.forward = {
      ...forward,
      sync: forward.sync === true && own.flush === undefined,
      discard: forward.discard === true && own.discard === undefined,
    };
  }
  return { direct, next: { ...next, forward } };
}

function definedOnly<T extends object>(fields: T): Partial<T> {
  return Object.fromEntries(
    Object.entries(fields).filter(([, v]) => v !== undefined),
  ) as Partial<T>;
}

/**
 * The layer below as callable handlers, its forward (when it has one) run as ring IO through
 * `ctx.io` with the forward's meaning (see RingForward): reads past the end of the file are
 * zeros, a FUA write is followed by fdatasync.
 */
export function nextHandlers(below: QueueHandlers, ctx: Pick<QueueContext, 'io'>): NextHandlers {
  const { io } = ctx;
  const forward = below.forward;
  const unsupported = (what: string) => () => {
    throw errnoError(what, EOPNOTSUPP);
  };
  if (!forward) {
    return {
      read: below.read?.bind(below) ?? unsupported('read'),
      write: below.write?.bind(below) ?? unsupported('write'),
      flush: below.flush?.bind(below) ?? unsupported('flush'),
      discard: below.discard?.bind(below) ?? unsupported('discard'),
      writeZeroes: below.writeZeroes?.bind(below) ?? unsupported('write zeroes'),
    };
  }
  const fdatasync = syncFlush(forward, ctx);
  return {
    forward,
    async read(buf, offset) {
      const n = await io.readFully(forward.fd, buf, forward.offset + offset);
      buf.fill(0, n);
    },
    async write(buf, offset, flags) {
      await io.writeFully(forward.fd, buf, forward.offset + offset);
      if (flags.fua) await fdatasync('fua');
    },
    flush: forward.sync
      ? () => fdatasync('flush')
      : (below.flush?.bind(below) ?? unsupported('flush')),
    discard: forward.discard
      ? punch(forward, ctx)
      : (below.discard?.bind(below) ?? unsupported('discard')),
    writeZeroes: below.writeZeroes?.bind(below) ?? unsupported('write zeroes'),
  };
}

function syncFlush(forward: RingForward, { io }: Pick<QueueContext, 'io'>) {
  return async (kind: 'flush' | 'fua' = 'flush'): Promise<void> => {
    await io.fsync(forward.fd, { dataOnly: true });
    forward.onSync?.(kind);
  };
}

function punch(forward: RingForward, { io }: Pick<QueueContext, 'io'>) {
  return async (offset: number, length: number): Promise<void> => {
    const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    await io.fallocate(forward.fd, mode, forward.offset + offset, length);
  };
}
