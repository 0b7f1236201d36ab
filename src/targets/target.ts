import type { TargetArgs, TargetOptionSpecs } from '../cli/args.js';

/**
 * The developer-facing contract of a block device target.
 *
 * A target lives in a module whose default export is `defineTarget({...})`. The daemon imports it
 * twice over: once in its main thread, where `setup` runs once per device, and once in every queue
 * thread (the kernel wants one thread per hardware queue), where `queue` builds the request
 * handlers for that queue. Whatever the queues must share (a path, an fd number, a
 * SharedArrayBuffer) goes through `setup`'s `shared` value, which is structured-cloned to them.
 */
export interface Target<Shared = unknown> {
  /** Shown by `ublk list` and used as the target's type name. */
  name: string;
  /** Command-line options this target adds to `ublk add`, in node:util parseArgs terms. */
  options?: TargetOptionSpecs;
  /** Main thread, once per device: validate arguments, open backing stores, decide the geometry. */
  setup(args: TargetArgs, env: SetupEnv): TargetSetup<Shared> | Promise<TargetSetup<Shared>>;
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
}

/** What a request handler may return: a byte count, or nothing for "all of it" / success. */
export type IoResult = number | void;
export type MaybePromise<T> = T | Promise<T>;

/**
 * Request handlers of one queue. `buf` is the request's slice of the queue's IO buffer: fill it on
 * read, consume it on write, and do not keep it after the handler settles. A handler that throws or
 * rejects fails that one request with EIO (or with the errno its error carries, e.g. an error with
 * `errno: 28` fails with ENOSPC) and nothing else.
 */
export interface QueueHandlers {
  read(buf: Uint8Array, offset: number): MaybePromise<IoResult>;
  write(buf: Uint8Array, offset: number, flags: WriteFlags): MaybePromise<IoResult>;
  flush?(): MaybePromise<IoResult>;
  discard?(offset: number, length: number): MaybePromise<IoResult>;
  writeZeroes?(offset: number, length: number, flags: ZeroFlags): MaybePromise<IoResult>;
  /** The queue is shutting down; no request is in flight. */
  close?(): MaybePromise<void>;
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

export interface QueueIo {
  read(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  write(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  fsync(fd: number, opts?: { dataOnly?: boolean }): Promise<number>;
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<number>;
}

/** Identity helper that gives a target module full type checking. */
export function defineTarget<Shared>(target: Target<Shared>): Target<Shared> {
  return target;
}
