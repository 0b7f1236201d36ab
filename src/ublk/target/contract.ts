/**
 * The contract between a ublk device and the target that serves it: what the daemon calls, what a
 * target module exports. It sits in the ublk layer because the device and its queues consume it;
 * target authors reach it through src/targets/target.ts or the package's index.
 */

import type { RequestHooks } from '../queue/request-hooks.js';

/** ublk counts offsets and lengths in 512-byte sectors, whatever the device's block size. */
export const SECTOR = 512;

/** A command-line option a target adds to `ublk add`, in util.parseArgs terms. */
export interface TargetOptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** One line for `ublk help -t TYPE`. */
  description: string;
  /**
   * A file's path: `ublk add` makes a relative one absolute, against its own working directory,
   * since the daemon runs in `/`.
   */
  path?: boolean;
}
export type TargetOptionSpecs = Readonly<Record<string, TargetOptionSpec>>;

/** The values `setup` gets for a target's options: a string or a boolean each, as declared. */
export type OptionValues<Options extends TargetOptionSpecs> = {
  -readonly [Name in keyof Options]?: Options[Name]['type'] extends 'string'
    ? string
    : Options[Name]['type'] extends 'boolean'
      ? boolean
      : string | boolean;
};

/** Target arguments whose options are not known statically (a module loaded by path). */
export type TargetArgs = Record<string, string | boolean | undefined>;

/**
 * The developer-facing contract of a block device target.
 *
 * A target lives in a module whose default export is `defineTarget({...})`. The daemon imports it
 * twice over: once in its main thread, where `setup` runs once per device, and once in every queue
 * thread (the kernel wants one thread per hardware queue), where `queue` builds the request
 * handlers for that queue. Whatever the queues must share (a path, an fd number, a
 * SharedArrayBuffer) goes through `setup`'s `shared` value, which is structured-cloned to them.
 */
export interface Target<Shared = unknown, Options extends TargetOptionSpecs = TargetOptionSpecs> {
  /** Shown by `ublk list` and used as the target's type name. */
  name: string;
  /** Command-line options this target adds to `ublk add`, in node:util parseArgs terms. */
  options?: Options;
  /** Main thread, once per device: validate arguments, open backing stores, decide the geometry. */
  setup(
    args: OptionValues<Options>,
    env: SetupEnv,
  ): TargetSetup<Shared> | Promise<TargetSetup<Shared>>;
  /** Each queue thread: return the handlers that serve that queue's requests. */
  queue(shared: Shared, ctx: QueueContext): QueueHandlers | Promise<QueueHandlers>;
}

export interface SetupEnv {
  /**
   * True when a new daemon takes over a device whose daemon died (`ublk recover`): setup gets the
   * arguments the device was added with, must come back with the same size, and serves the data
   * the dead daemon served. A target whose data lived only in the dead daemon (in memory) cannot:
   * its setup must throw a UserError unless `startEmpty`, or users see their data vanish.
   */
  recovering: boolean;
  /** Accept starting without the data of the previous daemon (`recover --start_empty`). */
  startEmpty: boolean;
  /** How many queues (threads) will serve the device: `queue` runs once for each. */
  queues: number;
}

export interface TargetSetup<Shared = unknown> {
  /** Device size in bytes; a multiple of the logical block size. */
  size: number;
  capabilities?: Capabilities;
  shared?: Shared;
  /** Extra fields for `ublk list`'s `target {...}` line (name, type and dev_size are added). */
  info?: Record<string, unknown>;
  /** Main thread, after the device is gone. */
  close?(): void | Promise<void>;
}

/**
 * What the device can do. Each maps to a ublk parameter, so the kernel never sends a request the
 * target did not declare: no FLUSH without `volatileCache`, no DISCARD without `discard`...
 */
export interface Capabilities {
  /** 512 (default) to 4096, a power of two. */
  logicalBlockSize?: number;
  /** Defaults to the logical block size. */
  physicalBlockSize?: number;
  readOnly?: boolean;
  rotational?: boolean;
  /** Writes may sit in a cache until FLUSH: the kernel then sends `flush()` and honours fsync. */
  volatileCache?: boolean;
  /** Forced-unit-access writes: `write(..., { fua: true })` must be durable when it resolves. */
  fua?: boolean;
  /** DISCARD support; granularity defaults to the physical block size. */
  discard?: boolean | { granularity?: number; alignment?: number; maxBytes?: number };
  writeZeroes?: boolean | { maxBytes?: number };
  /** Largest single request in bytes; the daemon's per-tag buffer size bounds it too. */
  maxIoBytes?: number;
  /**
   * The handlers never touch the request's data in JavaScript: reads and writes go through
   * `forward`, or are not looked at (null). Such a device may use zero copy (`--auto_zc`), where
   * the kernel lends the request's pages to the queue's ring and handlers get an empty `buf`.
   * `'handlers'`: the read and write handlers move the data themselves, as ring IO on the lent
   * pages (`RequestData`, `io.sendData`, `io.recvData`); that needs the kernel to lend them
   * (`--auto_zc`), not `--zerocopy`, where a forward registers them.
   */
  zeroCopy?: boolean | 'handlers';
}

/**
 * An object whose keys are `Keys` (inferred from the object), each of which `Shape` must have:
 * defineTarget and defineFilter check what setup() and queue() return with it, since TypeScript
 * does not check an object literal returned by a function given to a generic call for unknown
 * keys, and a misspelt handler or setup field would compile and be ignored. The keys are inferred
 * from the first part (each member of a union of objects adds its own); the second types each
 * unknown one `never`.
 */
export type NoExtraKeys<Shape, Keys extends PropertyKey> = { [K in Keys]?: unknown } & {
  [K in Exclude<Keys, keyof Shape>]: never;
};

/** What a request handler may return: a byte count, or nothing for "all of it" / success. */
export type IoResult = number | void;
export type MaybePromise<T> = T | Promise<T>;

/**
 * Request handlers of one queue. `buf` is the request's slice of the queue's IO buffer: fill it on
 * read, consume it on write, and do not keep it after the handler settles. A handler that throws or
 * rejects fails that one request with EIO (or with the errno its error carries, e.g. an error with
 * `errno: 28` fails with ENOSPC) and nothing else.
 *
 * Each declared capability needs its handler, or the forward that serves it (checked when the queue
 * starts, see src/ublk/target/handler-check.ts): `read` unless forwarded, `write` unless forwarded or
 * `readOnly`, `flush` with `volatileCache`, `discard` and `writeZeroes` with theirs. A handler
 * without its capability is never called.
 */
export interface QueueHandlers {
  /**
   * Synchronous hooks each request of a kind goes through before and after it is served, by the
   * forward or a handler, outermost first: how filters watch, fail or delay requests without a
   * promise per request (see request-hooks.ts). withFilters sets them.
   */
  hooks?: RequestHooks;
  /**
   * Requests the queue serves itself as IO on its ring, between `fd` and the request's buffer
   * (or, with zero copy, the request's own pages): no handler is called for them.
   */
  forward?: RingForward;
  /** With zero copy `buf` is empty and `data` is the request's pages (see RequestData). */
  read?(buf: Uint8Array, offset: number, data?: RequestData): MaybePromise<IoResult>;
  /** Optional only for a `readOnly` device, to which the kernel sends no write. */
  write?(
    buf: Uint8Array,
    offset: number,
    flags: WriteFlags,
    data?: RequestData,
  ): MaybePromise<IoResult>;
  flush?(): MaybePromise<IoResult>;
  discard?(offset: number, length: number): MaybePromise<IoResult>;
  writeZeroes?(offset: number, length: number, flags: ZeroFlags): MaybePromise<IoResult>;
  /** The queue is shutting down; no request is in flight. */
  close?(): MaybePromise<void>;
}

/**
 * "This request is this ring IO": READ and WRITE become read/write of `fd` at `offset` plus the
 * request's offset, a short one continued with the rest, a read past the end of the file filled
 * with zeros, a FUA write followed by fdatasync(fd). The queue prepares the SQEs and commits from
 * their CQEs, with no promise per request: the fastest path there is, and the only one with zero
 * copy, where the data never reaches JavaScript. Without zero copy, reads and writes of up to
 * 16 KiB of a regular file of tmpfs or ramfs (a memfd too) are pread/pwrite on the queue thread:
 * io_uring would hand each to a worker thread anyway, unless `fd` is O_NONBLOCK (loop's tmpfs
 * files and mem's memfd are), which io_uring tries inline.
 */
export interface RingForward {
  fd: number;
  /** Byte offset in `fd` of the device's first byte. */
  offset: number;
  /** FLUSH is fdatasync(fd) too; without it, `flush()` serves FLUSH. */
  sync?: boolean;
  /** DISCARD is fallocate(fd, PUNCH_HOLE | KEEP_SIZE) too; without it, `discard()` serves it. */
  discard?: boolean;
  /** Called after each forwarded fdatasync completed, before its request is committed. */
  onSync?(kind: 'flush' | 'fua'): void;
}

/**
 * Zero copy (`--auto_zc`): the request whose pages the kernel lent to the queue's ring, which
 * `io.sendData` and `io.recvData` reach. Valid until the handler settles; one object per tag,
 * reused.
 */
export interface RequestData {
  /** The request's entry in the ring's registered buffer table. */
  readonly index: number;
  /** Bytes of the request. */
  readonly length: number;
}

export interface WriteFlags {
  fua: boolean;
}
export interface ZeroFlags {
  /** The caller wants the range allocated (no hole punching). */
  noUnmap: boolean;
}

/** What a queue thread offers its handlers. */
export interface QueueContext {
  queueId: number;
  depth: number;
  /** IO on the queue's own io_uring, batched with the queue's commits into one syscall. */
  io: QueueIo;
}

/**
 * IO on the queue's io_uring. `buf` must be the request's buffer or a subarray of it, or memory
 * from `allocate`. The raw calls (read, write, send, recv, sendData, recvData) resolve with the
 * kernel's result (bytes, or -errno), because a short transfer is theirs to handle; every other
 * call resolves once done and throws an ErrnoError on failure (the whole-buffer ones loop over
 * short IO).
 */
export interface QueueIo {
  read(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  write(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  /** Reads until `buf` is full or the file ends: the bytes read, fewer only at the end of file. */
  readFully(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  /** Writes all of `buf`; a write that makes no progress fails with EIO. */
  writeFully(fd: number, buf: Uint8Array, offset: number): Promise<void>;
  /** fsync(2), or fdatasync(2) with `dataOnly`; throws an ErrnoError on failure. */
  fsync(fd: number, opts?: { dataOnly?: boolean }): Promise<void>;
  /** fallocate(2) with FALLOC_FL_* `mode`; throws an ErrnoError on failure (EOPNOTSUPP...). */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /**
   * send(2) on a connected socket (never SIGPIPE): bytes sent, possibly fewer, or -errno. With
   * `waitAll` (MSG_WAITALL; a stream socket without kernel TLS, which refuses the flag) the ring
   * goes on sending until all of `buf` is out, fewer bytes only on an error, and the queue does
   * not wake for that completion alone (it mostly comes at submission): for bytes the peer
   * answers, whose answer wakes it. With nothing else to come the thread sleeps up to 10 ms
   * past the completion.
   */
  send(fd: number, buf: Uint8Array, waitAll?: boolean): Promise<number>;
  /**
   * recv(2) from a connected socket: bytes received (0 at end of stream) or -errno. With
   * `waitAll` (MSG_WAITALL) the ring goes on receiving until `buf` is full: one completion for a
   * payload of known length; fewer bytes only at the end of the stream or on an error.
   */
  recv(fd: number, buf: Uint8Array, waitAll?: boolean): Promise<number>;
  /**
   * Zero copy: write(2) of bytes [start, start + length) of the request's pages to `fd` (a
   * socket), the kernel reading them where they are: bytes written, possibly fewer, or -errno.
   */
  sendData(fd: number, data: RequestData, start: number, length: number): Promise<number>;
  /**
   * Zero copy: read(2) from `fd` (a socket, /dev/zero) into bytes [start, start + length) of the
   * request's pages: bytes read, possibly fewer, 0 at the end of a stream, or -errno.
   */
  recvData(fd: number, data: RequestData, start: number, length: number): Promise<number>;
  /**
   * Memory the ring may read and write besides the request buffers (protocol headers, staging
   * areas), zeroed, page-aligned; it lives as long as the queue.
   */
  allocate(length: number): Uint8Array;
}
