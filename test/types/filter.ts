/**
 * defineFilter and withFilters as a filter's author uses them: `next` offers every request kind
 * and nothing else, setup's arguments and queue's `shared` are typed as defineTarget's are.
 */
import {
  defineFilter,
  delayFilter,
  loopTarget,
  statsFilter,
  withFilters,
  type FilterEntry,
  type RequestHook,
  type Target,
} from 'ublk-ts';
import { expectTrue, expectType, type Exact } from './expect.js';

// use: a filter over the layer below: its own option, setup over next(), handlers calling next
export const halfFilter = defineFilter({
  name: 'half',
  options: { half_of: { type: 'string', description: 'which half: low or high' } },
  async setup(next, args, env) {
    expectType<string | undefined>(args.half_of);
    expectType<boolean>(env.recovering);
    const below = await next();
    return {
      size: below.size / 2,
      shared: { high: args.half_of === 'high', half: below.size / 2 },
    };
  },
  queue(next, shared, ctx) {
    expectTrue<Exact<typeof shared, { high: boolean; half: number }>>(true);
    expectType<number>(ctx.queueId);
    const at = (offset: number) => (shared.high ? shared.half + offset : offset);
    return {
      read: (buf, offset) => next.read(buf, at(offset)),
      write: (buf, offset, flags) => next.write(buf, at(offset), flags),
      discard: (offset, length) => next.discard(at(offset), length),
      writeZeroes: (offset, length, flags) => next.writeZeroes(at(offset), length, flags),
      flush: () => next.flush(),
    };
  },
});

// use: filters stacked over a built-in target, one with arguments of its own
export const stacked: Target = withFilters(loopTarget, [
  statsFilter,
  { filter: delayFilter, args: { rdelay: '5ms' } },
  halfFilter,
]);

export const misuses = [
  defineFilter({
    name: 'no-such-next',
    queue: (next) => ({
      // @ts-expect-error TS2339: the layer below has no trim(): DISCARD is next.discard
      discard: (offset, length) => next.trim(offset, length),
    }),
  }),

  defineFilter({
    name: 'setup-before-next',
    async setup(next) {
      // @ts-expect-error TS2339: next() is a promise of the layer's setup, not the setup itself
      return { size: next().size / 2 };
    },
  }),

  defineFilter({
    name: 'shared-mismatch',
    setup: () => ({ shared: { count: 1 } }),
    // @ts-expect-error TS2322: setup shares a count, queue reads a rate
    queue: (_next, shared: { rate: number }) => ({ flush: () => shared.rate }),
  }),

  // A filter's setup and queue are optional, so TypeScript reports these at the method.
  defineFilter({
    name: 'handler-typo',
    // @ts-expect-error TS2322: `wirte` is a typo for `write`: writes would pass by unchanged
    queue: (next) => ({
      flush: () => next.flush(),
      wirte: (buf: Uint8Array, offset: number) => next.write(buf, offset, { fua: false }),
    }),
  }),

  defineFilter({
    name: 'forward-beside-read',
    // @ts-expect-error TS2322: the forward is the layer below's; a filter cannot set its own
    queue: (next) => ({
      read: (buf, offset) => next.read(buf, offset),
      forward: { fd: 3, offset: 0 },
    }),
  }),

  defineFilter({
    name: 'hooks-typo',
    // @ts-expect-error TS2322: a filter's hook is `hook`; `hooks` is how the queue runs them
    queue: (next) => ({ flush: () => next.flush(), hooks: {} }),
  }),

  defineFilter({
    name: 'setup-field-typo',
    // @ts-expect-error TS2322: `keepForward` is a typo for `keepsForward`, which would be ignored
    async setup(next) {
      const below = await next();
      return { size: below.size, keepForward: true };
    },
  }),

  defineFilter({
    name: 'capability-typo',
    // @ts-expect-error TS2322: `writezeroes` is a typo for `writeZeroes`
    setup: () => ({ capabilities: { readOnly: true, writezeroes: false } }),
  }),
];

export const hooks: RequestHook[] = [
  // use: a hook that only watches
  { after: (kind, offset, length, result) => void [kind, offset, length, result] },
  {
    // @ts-expect-error TS2322: a hook says what becomes of each request; returning nothing says nothing
    before: () => {},
  },
];

// @ts-expect-error TS2345: withFilters takes a list of filters, even of one
withFilters(loopTarget, statsFilter);
// @ts-expect-error TS2322: a bound filter's arguments are strings or booleans, as on the command line
export const badArgs: FilterEntry = { filter: delayFilter, args: { rdelay: 5 } };
// @ts-expect-error TS2345: a filter goes over a target, not over nothing
withFilters(undefined, [statsFilter]);
