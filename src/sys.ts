import { loadNativeAddon } from './native-addon.js';

/**
 * Typed access to the native shim (native/sys.c); every other module reaches the OS through
 * here. Hot-path calls (ioUringEnter, ioUringRegister) return -errno; the others throw an
 * {@link ErrnoError}.
 */

/** A memory mapping. `buffer` is detached (byteLength 0) once unmapped. */
export interface Mapping {
  readonly buffer: ArrayBuffer;
  readonly address: number;
}

/** Opaque handle of a readiness watch. */
export interface WatchHandle {
  readonly __brand: 'WatchHandle';
}

// Where the other modules have always found them; errors.ts is where they live.
export { errnoError, isErrnoError, type ErrnoError } from './errors.js';

/** A dev_t as "major:minor" (glibc's gnu_dev_major/minor), as sysfs and `ls -l` show it. */
export function majorMinor(dev: number): string {
  const major = ((dev >> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
  const minor = (dev & 0xff) | ((dev >> 12) & ~0xff);
  return `${major}:${minor}`;
}

export interface Sys {
  /** io_uring_setup(2). The kernel fills `params` (sizeof(struct io_uring_params) bytes). */
  ioUringSetup(entries: number, params: Uint8Array): number;
  /**
   * io_uring_enter(2): result or -errno; EINTR is retried. `argAddress` and `argSize` are the
   * IORING_ENTER_EXT_ARG struct (its addressOf) when that flag is set.
   */
  ioUringEnter(
    fd: number,
    toSubmit: number,
    minComplete: number,
    flags: number,
    argAddress?: number,
    argSize?: number,
  ): number;
  /** io_uring_register(2): result or -errno. */
  ioUringRegister(fd: number, opcode: number, arg: ArrayBufferView | null, nrArgs: number): number;
  /**
   * mmap(2): MAP_SHARED over `fd`, or private anonymous page-aligned memory when fd is -1. A
   * read-only mapping must not be written from JS (the write would fault). Unmapped by munmap, or
   * when the buffer is garbage collected.
   */
  mmap(fd: number, offset: number, length: number, writable: boolean): Mapping;
  /** Detaches and unmaps a buffer from mmap; a second call does nothing. */
  munmap(buffer: ArrayBuffer): void;
  /**
   * Address of a view's first byte, for SQE fields that point at JS memory. The view must stay
   * reachable until the kernel is done with it.
   */
  addressOf(view: ArrayBufferView): number;
  /** eventfd(2). */
  eventfd(initval: number, flags: number): number;
  /** Reads and so resets an EFD_NONBLOCK eventfd's counter: the count, 0 if not signalled. */
  readEventfd(fd: number): number;
  /** open(2) with raw flags (fs.constants.O_*); EINTR is retried. */
  open(path: string, flags: number, mode: number): number;
  /** close(2). */
  close(fd: number): void;
  /** lseek(2): the new offset or -errno (SEEK_DATA beyond the last data: -ENXIO). */
  lseek(fd: number, offset: number, whence: number): number;
  /**
   * pread(2) into memory at `address` (from addressOf): bytes read or -errno; EINTR is retried.
   * For files io_uring would hand to an io-wq worker, such as /dev/ublkcN (see user-copy.ts).
   */
  pread(fd: number, address: number, length: number, position: number): number;
  /** pwrite(2) from memory at `address`, as pread. */
  pwrite(fd: number, address: number, length: number, position: number): number;
  /** fcntl(F_DUPFD_CLOEXEC): a second descriptor of the same open file. */
  dup(fd: number): number;
  /** shutdown(2) of a socket (how: 0 read, 1 write, 2 both); not connected is not an error. */
  shutdown(fd: number, how: number): void;
  /** setsockopt(2) with the option value's bytes: 0 or -errno. */
  setsockopt(fd: number, level: number, name: number, value: ArrayBufferView): number;
  /**
   * Calls `callback(status)` on this thread's event loop whenever `fd` is readable (level
   * triggered: the callback must consume the readiness); status is 0 or -errno. The watch keeps
   * the event loop alive until unwatched or unref'd with setWatchRef.
   */
  watchReadable(fd: number, callback: (status: number) => void): WatchHandle;
  /** Stops a watch; a second call does nothing. */
  unwatch(handle: WatchHandle): void;
  /** Whether an active watch keeps the event loop alive. */
  setWatchRef(handle: WatchHandle, ref: boolean): void;
  /** prctl(2); pass 0 for unused arguments. */
  prctl(option: number, arg2: number, arg3: number, arg4: number, arg5: number): number;
  /** Kernel thread id of the calling thread (the pid on the main thread). */
  gettid(): number;
  /** sched_setaffinity(2) of a thread (0: the calling one) to the given CPU numbers. */
  schedSetaffinity(tid: number, cpus: readonly number[]): void;
  /** ioctl(2) with an integer argument or a pointer to a view's memory. */
  ioctl(fd: number, request: number, arg: ArrayBufferView | number): number;
  /** memfd_create(2): an anonymous RAM file (flags: MFD_CLOEXEC...); its fd. */
  memfdCreate(name: string, flags: number): number;
  /** OS constants as the headers the shim was compiled against define them. */
  readonly constants: {
    /** Not in fs.constants: libuv always sets it itself. */
    readonly O_CLOEXEC: number;
    readonly EFD_CLOEXEC: number;
    readonly EFD_NONBLOCK: number;
    readonly PR_SET_IO_FLUSHER: number;
    readonly PR_GET_IO_FLUSHER: number;
    readonly BLKGETSIZE64: number;
    /** Logical and physical block size of a block device, as an int. */
    readonly BLKSSZGET: number;
    readonly BLKPBSZGET: number;
    /** Discards a byte range of a block device: the argument is a u64 pair { start, length }. */
    readonly BLKDISCARD: number;
    readonly MFD_CLOEXEC: number;
    /** lseek(2) whence values that find a sparse file's data and holes. */
    readonly SEEK_DATA: number;
    readonly SEEK_HOLE: number;
    readonly PAGE_SIZE: number;
  };
}

const native = loadNativeAddon<Sys>('sys');

export const {
  ioUringSetup,
  ioUringEnter,
  ioUringRegister,
  mmap,
  munmap,
  addressOf,
  eventfd,
  readEventfd,
  open,
  close,
  lseek,
  pread,
  pwrite,
  dup,
  shutdown,
  setsockopt,
  watchReadable,
  unwatch,
  setWatchRef,
  prctl,
  gettid,
  schedSetaffinity,
  ioctl,
  memfdCreate,
  constants,
} = native;
