import { defineTarget } from './define.js';

/**
 * ublksrv's null target: 250 GiB that completes every request at once and stores nothing. It never
 * looks at the data, so it runs with zero copy too.
 */
export default defineTarget({
  name: 'null',
  setup: () => ({ size: 250 * 2 ** 30, capabilities: { zeroCopy: true } }),
  queue: () => ({
    read: () => undefined,
    write: () => undefined,
  }),
});
