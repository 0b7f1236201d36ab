import { closeSync, constants as fsConstants, openSync, statfsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { isErrnoError } from '../errors.js';
import { constants as sysConstants, mmap, munmap } from '../sys.js';
import { Ring, TMPFS_MAGIC, type SubmissionQueue } from '../uring/index.js';

const { EIO } = osConstants.errno;

/** One IO on the calling thread through a one-entry io_uring: its result, or -errno. */
export function ringIoSync(prep: (sq: SubmissionQueue) => void): number {
  const ring = Ring.create({ entries: 1 });
  try {
    prep(ring.sq);
    const submitted = ring.submitAndWait(1);
    if (submitted < 0) return submitted;
    let res = -EIO;
    ring.drain((_userData, r) => (res = r));
    return res;
  } finally {
    ring.close();
  }
}

/**
 * A second descriptor of a tmpfs file (a memfd too), opened O_DIRECT and O_NONBLOCK, when the
 * kernel takes both and the ring serves it; else undefined (the caller keeps `fd`).
 *
 * tmpfs files have no FMODE_NOWAIT, so io_uring hands each read and write of them to an io-wq
 * worker: a thread switch and one more wake-up of the queue thread per request, for a copy between
 * pages in memory. io_uring takes an O_NONBLOCK file as one it may try without blocking (7.3's
 * io_file_get_flags), and tmpfs neither blocks for long nor answers EAGAIN there, so the IO is done
 * inside the queue thread's own io_uring_enter. O_DIRECT (tmpfs takes it from Linux 6.6, where it
 * changes nothing else) keeps a write from being refused under IOCB_NOWAIT, as a buffered one is
 * (EINVAL). An io_uring that instead fails an O_NONBLOCK file's IO with EAGAIN where it would have
 * punted it is caught by the probe read. See docs/performance.md#decisions, "tmpfs O_NONBLOCK".
 */
export function nonBlockingTwin(fd: number): number | undefined {
  if (statfsSync(`/proc/self/fd/${fd}`).type !== TMPFS_MAGIC) return undefined;
  const page = sysConstants.PAGE_SIZE;
  const mapping = mmap(-1, 0, page, true); // aligned, as O_DIRECT wants
  let twin = -1;
  try {
    const flags = fsConstants.O_RDWR | fsConstants.O_DIRECT | fsConstants.O_NONBLOCK;
    twin = openSync(`/proc/self/fd/${fd}`, flags);
    if (ringIoSync((sq) => sq.prepRead(twin, mapping.address, page, 0, 1)) < 0) return undefined;
    const served = twin;
    twin = -1;
    return served;
  } catch (err) {
    if (isErrnoError(err, 'EINVAL')) return undefined; // no O_DIRECT on tmpfs before 6.6
    throw err;
  } finally {
    if (twin >= 0) closeSync(twin);
    munmap(mapping.buffer);
  }
}
