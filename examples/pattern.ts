/**
 * A read-only device whose content is computed, never stored: every 512-byte sector holds its own
 * sector number, as 64 little-endian 64-bit integers. Handy to check that reads land where they
 * should (`dd if=/dev/ublkb0 bs=512 skip=1000 count=1 | od -A d -t u8` shows 1000).
 *
 *   ublk add -t ./dist/examples/pattern.js --size 1G
 */
import { defineTarget, parseSize, SECTOR, UserError } from 'ublk-ts';

export default defineTarget(
  {
    name: 'pattern',
    options: { size: { type: 'string', description: 'device size, e.g. 1G (default 1G)' } },
    setup(args) {
      const size = parseSize(args.size ?? '1G', 'size');
      if (size % SECTOR !== 0)
        throw new UserError(`pattern: the size must be a multiple of ${SECTOR}`);
      // The kernel never sends a write to a read-only device, so the target has no write().
      return { size, capabilities: { readOnly: true } };
    },
    queue() {
      return {
        read(buf, offset) {
          // Request buffers are page-aligned, so a 32-bit view of one is too.
          const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
          for (let i = 0; i < words.length; i += 2) {
            const sector = offset / SECTOR + Math.floor((i * 4) / SECTOR);
            words[i] = sector % 2 ** 32; // low half first: little-endian on the machines ublk runs on
            words[i + 1] = Math.floor(sector / 2 ** 32);
          }
        },
      };
    },
  },
  import.meta.url,
);
