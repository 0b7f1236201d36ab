import {
  appendFileSync,
  closeSync,
  constants as fsConstants,
  fstatSync,
  openSync,
  readFileSync,
  readSync,
  statSync,
  type Stats,
} from 'node:fs';
import { isErrnoError, UserError } from '../errors.js';
import { constants as sysConstants, ioctl, majorMinor, mmap, munmap } from '../sys.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } from '../uring/index.js';
import { nonBlockingTwin, ringIoSync } from './inline-ring-io.js';
import { defineTarget, SECTOR, type QueueIo } from './define.js';

/**
 * ublksrv's loop target: `-t loop -f FILE [--buffered_io] [--offset SECTORS]`.
 *
 * The device is FILE (a regular file or a block device) from byte `offset * 512` to its end. Reads
 * and writes go on the queue's own io_uring straight between the backing file and the request
 * buffer (or, with zero copy, the request's own pages); FLUSH is an fdatasync of the backing file, a FUA write is a write followed by one.
 * DISCARD and WRITE_ZEROES become fallocate(2) as in the kernel's loop driver (PUNCH_HOLE, or
 * ZERO_RANGE for a WRITE_ZEROES that must not unmap), except DISCARD on a block device, which is
 * the BLKDISCARD ioctl.
 *
 * O_DIRECT by default, with the backing's logical block size as the device's, since O_DIRECT IO
 * must be aligned to it; buffered IO (and 512-byte blocks for a file) where the backing refuses
 * O_DIRECT, as tmpfs does before Linux 6.6, or with --buffered_io. `ublk list` shows which in
 * `direct_io`. A tmpfs file opened O_DIRECT is opened O_NONBLOCK too (see nonBlockingTwin).
 */

/**
 * Set in the daemon's environment, a file to which every completed fdatasync of the backing file
 * appends a line, "flush" (for a FLUSH request) or "fua" (for a FUA write). A debugging and test
 * aid: it shows that flushes and FUA writes reach the backing store.
 */
export const SYNC_LOG_ENV = 'UBLK_LOOP_SYNC_LOG';

/** What each queue needs; fds are process-wide, so the queues use the fd that setup opened. */
interface LoopShared {
  fd: number;
  /** Byte offset of the device's first byte in the backing file. */
  offset: number;
  blockDevice: boolean;
  syncLog?: string;
}

function openError(path: string, err: unknown): never {
  if (isErrnoError(err, 'ENOENT')) throw new UserError(`loop: backing file ${path} does not exist`);
  if (isErrnoError(err, 'EACCES') || isErrnoError(err, 'EPERM')) {
    throw new UserError(`loop: cannot open ${path} for reading and writing: permission denied`);
  }
  if (isErrnoError(err, 'EROFS')) {
    throw new UserError(`loop: cannot open ${path} for writing: read-only file system`);
  }
  if (isErrnoError(err, 'EISDIR')) {
    throw new UserError(`loop: ${path} is a directory, not a file or block device`);
  }
  if (isErrnoError(err, 'ETXTBSY') || isErrnoError(err, 'EBUSY')) {
    throw new UserError(`loop: ${path} is busy (in use elsewhere)`);
  }
  throw new UserError(`loop: cannot open ${path}: ${(err as Error).message}`);
}

/** An int filled in by an ioctl such as BLKSSZGET. */
function ioctlInt(fd: number, request: number): number {
  const out = new Int32Array(1);
  ioctl(fd, request, out);
  return out[0];
}

function blkdiscard(fd: number, offset: number, length: number): void {
  ioctl(fd, sysConstants.BLKDISCARD, new BigUint64Array([BigInt(offset), BigInt(length)]));
}

function blockDeviceSize(fd: number): number {
  const out = new BigUint64Array(1);
  ioctl(fd, sysConstants.BLKGETSIZE64, out);
  return Number(out[0]);
}

/** Whether a block device accepts discards: its queue's discard_max_bytes (a partition's parent's). */
function blockDeviceDiscards(rdev: number): boolean {
  const value = queueAttribute(rdev, 'discard_max_bytes');
  return value !== undefined && value > 0;
}

/** A number from a block device's /sys/.../queue/ (a partition's from its disk's). */
function queueAttribute(dev: number, name: string): number | undefined {
  const dir = `/sys/dev/block/${majorMinor(dev)}`;
  for (const path of [`${dir}/queue/${name}`, `${dir}/../queue/${name}`]) {
    try {
      const value = Number(readFileSync(path, 'utf8').trim());
      if (Number.isSafeInteger(value)) return value;
    } catch {
      // not this one (a partition has no queue/ of its own)
    }
  }
  return undefined;
}

/** fallocate(2) on the calling thread (Node has no fallocate). */
function fallocateSync(fd: number, mode: number, offset: number, length: number): number {
  return ringIoSync((sq) => sq.prepFallocate(fd, mode, offset, length, 1));
}

/**
 * Whether the file system of a regular file can punch holes. The probe punches beyond the end of
 * the file (KEEP_SIZE), where there is no data to lose.
 */
function canPunchHoles(fd: number, size: number): boolean {
  const page = sysConstants.PAGE_SIZE;
  const beyond = Math.ceil((size + 1) / page) * page;
  return fallocateSync(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, beyond, page) === 0;
}

/**
 * The IO size and alignment O_DIRECT needs on a regular file: the logical block size of the block
 * device under its file system when there is one (stat's st_blksize is the file system's block,
 * not that). Otherwise (overlay, network file systems...) the smallest size at which reading the
 * first block works. undefined when even a page is refused: no O_DIRECT then.
 */
function directIoBlockSize(fd: number, fsDev: number): number | undefined {
  const page = sysConstants.PAGE_SIZE;
  const fromDevice = queueAttribute(fsDev, 'logical_block_size');
  if (fromDevice !== undefined && fromDevice >= SECTOR && fromDevice <= page) return fromDevice;
  const mapping = mmap(-1, 0, page, true); // page-aligned, as O_DIRECT wants the memory too
  try {
    for (let bs = SECTOR; bs <= page; bs *= 2) {
      try {
        readSync(fd, new Uint8Array(mapping.buffer, 0, bs), 0, bs, 0);
        return bs;
      } catch (err) {
        if (!isErrnoError(err, 'EINVAL')) throw err;
      }
    }
    return undefined;
  } finally {
    munmap(mapping.buffer);
  }
}

function parseOffset(text: string | undefined): number {
  if (text === undefined) return 0;
  const value = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new UserError(`loop: invalid --offset '${text}': expected a number of 512-byte sectors`);
  }
  return value;
}

export default defineTarget({
  name: 'loop',
  options: {
    file: { type: 'string', short: 'f', description: 'backing file or block device (required)' },
    buffered_io: {
      type: 'boolean',
      description: 'go through the page cache instead of O_DIRECT',
    },
    offset: {
      type: 'string',
      description: 'skip the first SECTORS 512-byte sectors of the backing file',
    },
  },

  setup(args) {
    const path = args.file;
    if (typeof path !== 'string' || path === '') {
      throw new UserError('loop: no backing file: use -f FILE');
    }
    const offsetSectors = parseOffset(args.offset);
    const offset = offsetSectors * SECTOR;
    let direct = args.buffered_io !== true;

    let st: Stats;
    try {
      st = statSync(path);
    } catch (err) {
      openError(path, err);
    }
    if (st.isDirectory()) {
      throw new UserError(`loop: ${path} is a directory, not a file or block device`);
    }
    const blockDevice = st.isBlockDevice();
    if (!blockDevice && !st.isFile()) {
      throw new UserError(`loop: ${path} is not a regular file or a block device`);
    }
    let fd = -1;
    try {
      try {
        fd = openSync(path, openFlags(direct));
      } catch (err) {
        // tmpfs (before Linux 6.6) and some others refuse O_DIRECT at open: use the page cache.
        if (!direct || !isErrnoError(err, 'EINVAL')) openError(path, err);
        direct = false;
        fd = openSync(path, openFlags(false));
      }
      st = fstatSync(fd); // what we opened, not what the path named a moment ago
      let total: number;
      let logical: number;
      let physical: number;
      let discard: boolean;
      let writeZeroes: boolean;
      if (blockDevice) {
        total = blockDeviceSize(fd);
        logical = ioctlInt(fd, sysConstants.BLKSSZGET);
        physical = Math.max(ioctlInt(fd, sysConstants.BLKPBSZGET), logical);
        discard = blockDeviceDiscards(st.rdev);
        // ZERO_RANGE on a block device falls back to writing zeroes: it always works.
        writeZeroes = true;
      } else {
        total = st.size;
        logical = SECTOR;
        if (direct) {
          const bs = directIoBlockSize(fd, st.dev);
          if (bs === undefined) {
            closeSync(fd);
            fd = -1;
            direct = false;
            fd = openSync(path, openFlags(false));
          } else {
            logical = bs;
            const twin = nonBlockingTwin(fd);
            if (twin !== undefined) {
              closeSync(fd);
              fd = twin;
            }
          }
        }
        // The file system's block size is the unit below which writes cost a read-modify-write.
        physical = Math.max(logical, Math.min(powerOfTwoBelow(st.blksize), sysConstants.PAGE_SIZE));
        discard = total > 0 && canPunchHoles(fd, total);
        writeZeroes = discard;
      }
      if (total === 0) {
        throw new UserError(`loop: ${path} is empty: give it a size (e.g. truncate -s 1G ${path})`);
      }
      if (offset >= total) {
        throw new UserError(
          `loop: --offset ${offsetSectors} sectors is at or beyond the end of ${path} (${total} bytes)`,
        );
      }
      const size = total - offset;
      if (offset % logical !== 0) {
        throw new UserError(
          `loop: --offset ${offsetSectors} sectors is not a multiple of the block size ${logical} of ${path}`,
        );
      }
      if (size % logical !== 0) {
        throw new UserError(
          `loop: the size of ${path} (${size} bytes${offset ? ` after the offset` : ''}) is not a multiple of the block size ${logical}`,
        );
      }
      const syncLog = process.env[SYNC_LOG_ENV] || undefined;
      const openFd = fd;
      return {
        size,
        capabilities: {
          logicalBlockSize: logical,
          physicalBlockSize: physical,
          volatileCache: true,
          fua: true,
          discard: discard ? { granularity: physical } : false,
          writeZeroes,
          zeroCopy: true,
        },
        shared: { fd, offset, blockDevice, syncLog } satisfies LoopShared,
        info: { backing_file: path, direct_io: direct ? 1 : 0, offset: offsetSectors },
        close: () => closeSync(openFd),
      };
    } catch (err) {
      if (fd >= 0) closeSync(fd);
      if (isErrnoError(err, 'EACCES') || isErrnoError(err, 'EPERM') || isErrnoError(err, 'EROFS')) {
        openError(path, err);
      }
      throw err;
    }
  },

  queue({ fd, offset: base, blockDevice, syncLog }, { io }) {
    const zeroes = new ZeroRange(io, fd, blockDevice);
    return {
      // Reads, writes (FUA: then fdatasync), FLUSH (fdatasync) and a file's DISCARD (a punched
      // hole) are ring IO the queue runs itself, with no promise per request and, with --auto_zc,
      // no copy: see RingForward.
      forward: {
        fd,
        offset: base,
        sync: true,
        discard: !blockDevice,
        onSync: syncLog ? (kind) => appendFileSync(syncLog, `${kind}\n`) : undefined,
      },
      // Only a block device's DISCARD: fallocate(2) offers a block device only "write zeroes"
      // (PUNCH_HOLE); a real discard is the BLKDISCARD ioctl, which io_uring cannot carry on
      // Linux 6.1. It blocks this queue while it runs, as in ublksrv; discards are rare and the
      // kernel splits them.
      discard: (offset, length) => blkdiscard(fd, base + offset, length),
      async writeZeroes(offset, length, { noUnmap }) {
        await zeroes.run(base + offset, length, noUnmap);
      },
    };
  },
});

/**
 * WRITE_ZEROES as the kernel's loop driver does it (ZERO_RANGE to keep the range allocated,
 * PUNCH_HOLE otherwise), with fallbacks for what a backing refuses: tmpfs has no ZERO_RANGE (a
 * hole punched then allocated is the same thing), and a block device without write-zeroes support
 * refuses PUNCH_HOLE (ZERO_RANGE writes the zeroes instead).
 */
class ZeroRange {
  private zeroRangeWorks = true;
  private punchWorks = true;

  constructor(
    private readonly io: QueueIo,
    private readonly fd: number,
    private readonly blockDevice: boolean,
  ) {}

  async run(offset: number, length: number, noUnmap: boolean): Promise<void> {
    if (!noUnmap && this.punchWorks) {
      if (await this.tried(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)) return;
      this.punchWorks = false;
    }
    if (this.zeroRangeWorks || this.blockDevice) {
      if (await this.tried(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)) return;
      this.zeroRangeWorks = false;
    }
    await this.io.fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (noUnmap) await this.io.fallocate(this.fd, FALLOC_FL_KEEP_SIZE, offset, length);
  }

  /** fallocate, false where the backing refuses the mode (EOPNOTSUPP); other failures throw. */
  private async tried(mode: number, offset: number, length: number): Promise<boolean> {
    try {
      await this.io.fallocate(this.fd, mode, offset, length);
      return true;
    } catch (err) {
      if (isErrnoError(err, 'EOPNOTSUPP')) return false;
      throw err;
    }
  }
}

function openFlags(direct: boolean): number {
  return fsConstants.O_RDWR | (direct ? fsConstants.O_DIRECT : 0);
}

function powerOfTwoBelow(n: number): number {
  return n >= 1 ? 2 ** Math.floor(Math.log2(n)) : 1;
}
