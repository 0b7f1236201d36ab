import { setTimeout as sleep } from 'node:timers/promises';
import { defineFilter, type FilterHandlers } from '../../ublk/target/filter.js';
import {
  HOOK_PASS,
  hookDelay,
  type HookVerdict,
  type RequestKind,
} from '../../ublk/queue/request-hooks.js';
import { parseDuration } from './filter-options.js';

/**
 * nbdkit's delay filter: each request of a kind waits the given time before the layer below
 * serves it. The option names are nbdkit's (rdelay, wdelay...); a bare number is milliseconds,
 * not nbdkit's seconds. The wait is a timer on the queue's ring (its hook), so a forwarding layer
 * below keeps its forward and zero copy.
 */
const DELAYS = {
  rdelay: 'read',
  wdelay: 'write',
  flushdelay: 'flush',
  trimdelay: 'discard',
  zdelay: 'write_zeroes',
} as const satisfies Record<string, RequestKind>;
type DelayOption = keyof typeof DELAYS;
type Delays = Partial<Record<DelayOption, number>>;

const option = (what: string) =>
  ({ type: 'string', description: `delay each ${what} by MS (10, 10ms, 1.5s, 500us)` }) as const;

export default defineFilter({
  name: 'delay',
  options: {
    rdelay: option('read'),
    wdelay: option('write'),
    flushdelay: option('flush'),
    trimdelay: option('discard'),
    zdelay: option('write zeroes'),
  },
  // The hook delays on the queue's ring; the handlers serve filters stacked above that call next.
  keepsForward: true,
  setup(_next, args) {
    const delays: Delays = {};
    for (const name of Object.keys(DELAYS) as DelayOption[]) {
      const text = args[name];
      if (text !== undefined) delays[name] = parseDuration(text, name);
    }
    return { shared: delays, info: { delays } };
  },
  queue(next, delays: Delays) {
    const byKind: Record<RequestKind, HookVerdict> = {
      read: HOOK_PASS,
      write: HOOK_PASS,
      flush: HOOK_PASS,
      discard: HOOK_PASS,
      write_zeroes: HOOK_PASS,
    };
    for (const [name, kind] of Object.entries(DELAYS) as [DelayOption, RequestKind][]) {
      const ms = delays[name] ?? 0;
      if (ms > 0) byKind[kind] = hookDelay(ms);
    }
    const own: FilterHandlers = { hook: { before: (kind) => byKind[kind] } };
    const after = (ms: number) => sleep(ms);
    if (delays.rdelay) {
      const ms = delays.rdelay;
      own.read = async (buf, offset) => (await after(ms), next.read(buf, offset));
    }
    if (delays.wdelay) {
      const ms = delays.wdelay;
      own.write = async (buf, offset, flags) => (await after(ms), next.write(buf, offset, flags));
    }
    if (delays.flushdelay) {
      const ms = delays.flushdelay;
      own.flush = async () => (await after(ms), next.flush());
    }
    if (delays.trimdelay) {
      const ms = delays.trimdelay;
      own.discard = async (offset, length) => (await after(ms), next.discard(offset, length));
    }
    if (delays.zdelay) {
      const ms = delays.zdelay;
      own.writeZeroes = async (offset, length, flags) => (
        await after(ms),
        next.writeZeroes(offset, length, flags)
      );
    }
    return own;
  },
});
