/**
 * A RAM disk in about twenty lines: the memory is a SharedArrayBuffer made once in setup(), which
 * every queue thread receives (structured cloning shares a SharedArrayBuffer rather than copying
 * it), so all queues see one disk.
 *
 *   ublk add -t ./dist/examples/ramdisk.js --size 256M
 *
 * From code, the default export itself is createDevice's target (import.meta.url below says
 * which module each queue thread imports it from).
 *
 * Memory is committed as it is written and never given back while the device exists; the
 * built-in `-t mem` target frees what is discarded.
 */
import { defineTarget, parseSize } from 'ublk-ts';

export default defineTarget(
  {
    name: 'ramdisk',
    options: { size: { type: 'string', description: 'disk size, e.g. 64M or 1G (default 64M)' } },
    setup(args) {
      const size = parseSize(args.size ?? '64M', 'size');
      return { size, shared: { memory: new SharedArrayBuffer(size) } };
    },
    queue({ memory }) {
      const disk = new Uint8Array(memory);
      return {
        read: (buf, offset) => buf.set(disk.subarray(offset, offset + buf.length)),
        write: (buf, offset) => disk.set(buf, offset),
      };
    },
  },
  import.meta.url,
);
