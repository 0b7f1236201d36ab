/**
 * A filter of one's own, nbdkit's `offset` filter in about thirty lines: the device is the window
 * of the layer below that starts at --window_offset and is --window_size long (to the end by
 * default). It changes the size in setup() and every request's offset in queue().
 *
 *   ublk add -t loop -f disk.img --filter ./dist/examples/window.js --window_offset 1M
 *
 * From code, `withFilters(loopTarget, [window])` is createDevice's target: with import.meta.url
 * below, each queue thread imports the filter from this module.
 *
 * It serves reads and writes itself, so the layer below's forward (and zero copy) gives way to
 * handlers; a filter that only changes capabilities (the built-in readonly) keeps them.
 */
import { defineFilter, parseSize, UserError } from 'ublk-ts';

export default defineFilter(
  {
    name: 'window',
    options: {
      window_offset: { type: 'string', description: 'where the window starts (e.g. 1M)' },
      window_size: { type: 'string', description: 'its length (default: to the end)' },
    },
    async setup(next, args) {
      const below = await next();
      const start =
        args.window_offset === undefined ? 0 : parseSize(args.window_offset, 'window_offset');
      const size = args.window_size
        ? parseSize(args.window_size, 'window_size')
        : below.size - start;
      const block = below.capabilities?.logicalBlockSize ?? 512;
      if (start % block !== 0 || size % block !== 0 || size <= 0 || start + size > below.size) {
        throw new UserError(
          `window: ${start}+${size} is not a ${block}-byte aligned part of the ${below.size}-byte disk`,
        );
      }
      return { size, shared: start, info: { window_offset: start } };
    },
    queue: (next, start: number) => ({
      read: (buf, offset) => next.read(buf, start + offset),
      write: (buf, offset, flags) => next.write(buf, start + offset, flags),
      discard: (offset, length) => next.discard(start + offset, length),
      writeZeroes: (offset, length, flags) => next.writeZeroes(start + offset, length, flags),
    }),
  },
  import.meta.url,
);
