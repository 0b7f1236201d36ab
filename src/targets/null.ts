import { defineTarget } from './target.js';

/** ublksrv's null target: 250 GiB that completes every request at once and stores nothing. */
export default defineTarget({
  name: 'null',
  setup: () => ({ size: 250 * 2 ** 30 }),
  queue: () => ({
    read: () => undefined,
    write: () => undefined,
  }),
});
