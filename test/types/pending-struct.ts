/**
 * The API as the `struct` branch makes it (a device's target given as a Target object or a URL,
 * ControlError exported): these cases compile only once it is merged.
 */
import {
  ControlError,
  createDevice,
  defineTarget,
  loopTarget,
  statsFilter,
  withFilters,
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
  }
}
