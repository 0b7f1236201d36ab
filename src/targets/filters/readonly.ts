import { defineFilter } from '../../ublk/target/filter.js';

/**
 * nbdkit's readonly filter: the device is read-only (the block layer refuses writes with EROFS or
 * EPERM before they reach the daemon), the layer below never sees a write, discard or
 * write-zeroes. It changes only capabilities, so the layer's forward and zero copy stay.
 */
export default defineFilter({
  name: 'readonly',
  async setup(next) {
    const below = await next();
    return {
      capabilities: { ...below.capabilities, readOnly: true, discard: false, writeZeroes: false },
    };
  },
});
