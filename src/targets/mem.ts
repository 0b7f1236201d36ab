import { closeSync, ftruncateSync } from 'node:fs';
import { totalmem } from 'node:os';
import { UserError } from '../errors.js';
import { constants as sysConstants, memfdCreate } from '../sys.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../uring/index.js';
import { nonBlockingTwin } from './inline-ring-io.js';
import { parseSize } from './size.js';
import { defineTarget, SECTOR } from './define.js';

/**
 * `-t mem --size SIZE`: a sparse RAM disk that every queue of the device shares.
 *
 * The memory is a memfd (an unlinked tmpfs file) made in setup; queues reach it through the
 * process-wide fd and serve requests on their own io_uring, the kernel copying between the file's
 * pages and the request buffer (inline, where the kernel lets us open it O_NONBLOCK: see
 * nonBlockingTwin). Why a memfd and not a SharedArrayBuffer (examples/ramdisk.ts):
 * - pages exist only once written (a hole reads as zeros without allocating), and DISCARD or
 *   WRITE_ZEROES punches a hole that gives them back at once; a SharedArrayBuffer cannot release
 *   memory (no madvise from JS), and zeroing it from JS commits the very pages a discard should
 *   free;
 * - no copy on the JS thread, and no size limit of JS buffers (Buffer's is 4 GiB in Node 20).
 * The memfd is never mapped: written data counts in its st_blocks and Shmem, not in the daemon's
 * RSS, and a discard gives it back; test/kernel/mem.test.ts checks that accounting.
 *
 * The data lives as long as the daemon: it is gone after `ublk del`, and after the daemon dies;
 * `ublk recover` then needs --start_empty to go on with an empty disk.
 */

export default defineTarget({
  name: 'mem',
  options: {
    size: { type: 'string', description: 'device size, e.g. 512M or 2G (required)' },
  },

  setup(args, env) {
    if (env.recovering && !env.startEmpty) {
      throw new UserError(
        "mem: the disk's data died with its daemon; `ublk recover --start_empty` continues with an empty disk, `ublk del` removes it",
      );
    }
    if (typeof args.size !== 'string') {
      throw new UserError('mem: no size: use --size SIZE (e.g. --size 512M)');
    }
    const size = parseSize(args.size, 'mem --size');
    if (size % SECTOR !== 0) {
      throw new UserError(`mem: --size ${args.size} is not a multiple of ${SECTOR} bytes`);
    }
    const memory = totalmem();
    if (size > memory) {
      throw new UserError(
        `mem: --size ${args.size} (${size} bytes) is more than this machine's memory (${memory} bytes)`,
      );
    }
    let fd = memfdCreate('mem-target', sysConstants.MFD_CLOEXEC);
    try {
      ftruncateSync(fd, size);
      // The same file, with IO the ring does inline rather than in an io-wq worker.
      const twin = nonBlockingTwin(fd);
      if (twin !== undefined) {
        closeSync(fd);
        fd = twin;
      }
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    return {
      size,
      capabilities: { physicalBlockSize: 4096, discard: true, writeZeroes: true, zeroCopy: true },
      shared: { fd },
      close: () => closeSync(fd),
    };
  },

  queue({ fd }, { io }) {
    return {
      // Reads, writes and DISCARD (a punched hole) are ring IO the queue runs itself: see
      // RingForward.
      forward: { fd, offset: 0, discard: true },
      async writeZeroes(offset, length, { noUnmap }) {
        const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        await io.fallocate(fd, mode, offset, length);
        // The caller wants the zeroes to stay allocated: allocate the hole again (tmpfs has no
        // ZERO_RANGE).
        if (noUnmap) await io.fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length);
      },
    };
  },
});
