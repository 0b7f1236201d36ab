/**
 * A device's target given as a Target object or a URL, ControlError, and request hooks returning
 * the values HOOK_PASS, hookFail... make.
 */
import { constants } from 'node:os';
import {
  ControlError,
  createDevice,
  defineFilter,
  defineTarget,
  HOOK_PASS,
  hookDelay,
  hookFail,
  isControlError,
  loopTarget,
  ROUTE_BELOW,
  ROUTE_HANDLERS,
  routeToFile,
  statsFilter,
  withFilters,
  type RequestHook,
} from 'ublk-ts';
import { expectType } from './expect.js';

const zeros = defineTarget({
  name: 'zeros',
  setup: () => ({ size: 1 << 20, capabilities: { readOnly: true } }),
  queue: () => ({ read: (buf) => void buf.fill(0) }),
});

export async function targets(): Promise<void> {
  // use: a built-in target object, with its arguments
  await createDevice({ target: loopTarget, args: { file: '/tmp/disk.img' } });
  // use: a target defined in the program itself
  await createDevice({ target: zeros });
  // use: a target seen through filters
  await createDevice({ target: withFilters(loopTarget, [statsFilter]), args: { file: '/x' } });
  // use: a target module by file: URL
  await createDevice({ target: new URL('./my-target.js', import.meta.url) });

  // @ts-expect-error: a filter is no target: withFilters(target, [filter]) puts it over one
  await createDevice({ target: statsFilter });
  // @ts-expect-error: a target object needs setup and queue, not only a name
  await createDevice({ target: { name: 'zeros' } });
  // @ts-expect-error: the target itself, not a function that makes it
  await createDevice({ target: () => zeros });
}

export async function controlErrors(): Promise<void> {
  try {
    await createDevice({ target: 'null' });
  } catch (err) {
    // use: a refused control command, recognised as such
    if (err instanceof ControlError) {
      expectType<string>(err.code);
      expectType<number>(err.errno);
    }
    if (isControlError(err, 'EBUSY')) expectType<string>(err.code);
  }
}

// use: a filter whose hook fails writes past a limit, delays flushes and routes reads
export const hookFilter = defineFilter({
  name: 'limit',
  keepsForward: true,
  queue() {
    const tooFar = hookFail(constants.errno.ENOSPC);
    const slowly = hookDelay(5);
    const fromCache = routeToFile(7);
    return {
      hook: {
        before: (kind, offset) =>
          kind === 'flush' ? slowly : offset >= 1 << 30 ? tooFar : HOOK_PASS,
        route: (kind, offset) =>
          kind !== 'read' ? ROUTE_BELOW : offset < 4096 ? fromCache : ROUTE_HANDLERS,
      },
    };
  },
});

export const hookMisuses: RequestHook[] = [
  // @ts-expect-error: a failure is hookFail(errno), not a magic number
  { before: () => -5 },
  // @ts-expect-error: letting a request through is HOOK_PASS, not 0
  { before: () => 0 },
  // @ts-expect-error: a hook is synchronous: no promise, even of a verdict
  { before: async () => HOOK_PASS },
  // @ts-expect-error: a request routed to a file is routeToFile(fd), not the fd
  { route: () => 7 },
  // @ts-expect-error: a route is no verdict: HOOK_PASS is for before
  { route: () => HOOK_PASS },
];
