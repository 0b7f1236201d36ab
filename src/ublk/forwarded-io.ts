import { constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { errnoError } from '../errors.js';
import { close, constants as sysConstants, open } from '../sys.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  IORING_FSYNC_DATASYNC,
  type SubmissionQueue,
} from '../uring/index.js';
import { UBLK_IO_OP } from './abi.js';
import type { RingForward } from './target.js';

const { EIO } = osConstants.errno;

/** user_data of a forwarded request's ring IO: this plus its tag (below 2^53, no BigInt). */
export const FORWARDED_IO_BASE = 2 ** 40;

/** What a forwarded request is waiting for, per tag. */
const STAGE_READ = 1;
/** The rest of a read past the end of a file that shrank: zeros, read from /dev/zero. */
const STAGE_READ_ZEROES = 2;
const STAGE_WRITE = 3;
/** A FUA write: the write, then STAGE_FUA_SYNC. */
const STAGE_WRITE_FUA = 4;
const STAGE_FUA_SYNC = 5;
const STAGE_FLUSH = 6;
const STAGE_DISCARD = 7;

/** The ring calls a forwarded request needs. */
export interface ForwardRing {
  sq: Pick<
    SubmissionQueue,
    'prepRead' | 'prepWrite' | 'prepReadFixed' | 'prepWriteFixed' | 'prepFsync' | 'prepFallocate'
  >;
  /** Submits what is prepared, making room in a full SQ. */
  makeRoom(): void;
}

export interface ForwardedIoConfig {
  depth: number;
  /**
   * UBLK_F_AUTO_BUF_REG: the kernel registered the request's own pages at index `tag` of the
   * ring's buffer table, so reads and writes are READ_FIXED/WRITE_FIXED at offsets within it.
   */
  autoBufReg: boolean;
}

/**
 * Called once a forwarded request is done: its result for COMMIT_AND_FETCH (bytes, 0, or -errno)
 * and, on failure, the syscall that failed.
 */
export type ForwardedDone = (tag: number, result: number, failedCall?: string) => void;

/**
 * Requests a target forwards to a file (QueueHandlers.forward), served as ring IO prepared here
 * and continued from each CQE: no handler, promise, closure or microtask per request, and no
 * allocation (the per-tag state is typed arrays, made once). A short read or write is continued
 * with the rest; a read that reaches the end of the file fills the rest with zeros, as the
 * kernel's loop driver does; a FUA write is the write, then fdatasync.
 */
export class ForwardedIo {
  /** Forwarded requests whose result is not known yet. */
  inFlight = 0;

  private forward: RingForward | undefined;
  private readonly stage: Uint8Array;
  /** Byte offset in the forward's fd of the request's first byte. */
  private readonly fileOffset: Float64Array;
  private readonly length: Uint32Array;
  private readonly done: Uint32Array;
  /** Copy and user copy: where the request's data is in memory (start's `address`). */
  private readonly address: Float64Array;
  private zeroFd = -1;

  constructor(
    private readonly config: ForwardedIoConfig,
    private readonly ring: ForwardRing,
    private readonly finished: ForwardedDone,
  ) {
    this.stage = new Uint8Array(config.depth);
    this.fileOffset = new Float64Array(config.depth);
    this.length = new Uint32Array(config.depth);
    this.done = new Uint32Array(config.depth);
    this.address = new Float64Array(config.depth);
  }

  /** The handlers' forward, or undefined when they have none. */
  use(forward: RingForward | undefined): void {
    this.forward = forward;
  }

  /**
   * Starts a request as ring IO when the forward covers it: READ and WRITE always, FLUSH with
   * `sync`, DISCARD with `discard`. False leaves the request to the handlers. `address` is where
   * the request's data is in memory: the tag's buffer (copy mode) or its bounce buffer (user
   * copy); unused with zero copy.
   */
  start(
    tag: number,
    op: number,
    offset: number,
    length: number,
    fua: boolean,
    address: number,
  ): boolean {
    const forward = this.forward;
    if (forward === undefined) return false;
    let stage: number;
    switch (op) {
      case UBLK_IO_OP.READ:
        stage = STAGE_READ;
        break;
      case UBLK_IO_OP.WRITE:
        stage = fua ? STAGE_WRITE_FUA : STAGE_WRITE;
        break;
      case UBLK_IO_OP.FLUSH:
        if (forward.sync !== true) return false;
        stage = STAGE_FLUSH;
        break;
      case UBLK_IO_OP.DISCARD:
        if (forward.discard !== true) return false;
        stage = STAGE_DISCARD;
        break;
      default:
        return false;
    }
    this.stage[tag] = stage;
    this.fileOffset[tag] = forward.offset + offset;
    this.length[tag] = length;
    this.done[tag] = 0;
    this.address[tag] = address;
    this.inFlight++;
    this.prepare(tag);
    return true;
  }

  /** The CQE of a forwarded request's ring IO. */
  complete(tag: number, res: number): void {
    const stage = this.stage[tag];
    if (res < 0) return this.finish(tag, res, STAGE_CALLS[stage]);
    switch (stage) {
      case STAGE_READ:
      case STAGE_READ_ZEROES:
      case STAGE_WRITE:
      case STAGE_WRITE_FUA: {
        if (res === 0) {
          // End of file: what is left of a read is zeros; a write that makes no progress fails.
          if (stage !== STAGE_READ) return this.finish(tag, -EIO, STAGE_CALLS[stage]);
          this.stage[tag] = STAGE_READ_ZEROES;
        }
        const done = (this.done[tag] += res);
        if (done < this.length[tag]) return this.prepare(tag);
        if (stage === STAGE_WRITE_FUA) {
          this.stage[tag] = STAGE_FUA_SYNC;
          return this.prepare(tag);
        }
        return this.finish(tag, done);
      }
      case STAGE_FUA_SYNC:
        this.forward?.onSync?.('fua');
        return this.finish(tag, this.length[tag]);
      case STAGE_FLUSH:
        this.forward?.onSync?.('flush');
        return this.finish(tag, 0);
      default:
        return this.finish(tag, 0);
    }
  }

  /** The queue is closing: no request is in flight. */
  close(): void {
    if (this.zeroFd >= 0) close(this.zeroFd);
    this.zeroFd = -1;
  }

  private finish(tag: number, result: number, failedCall?: string): void {
    this.inFlight--;
    this.finished(tag, result, failedCall);
  }

  /** Prepares the tag's next ring IO for its stage, from what is done so far. */
  private prepare(tag: number): void {
    const stage = this.stage[tag];
    const fd = this.forward!.fd;
    const userData = FORWARDED_IO_BASE + tag;
    const sq = this.ring.sq;
    if (stage === STAGE_FUA_SYNC || stage === STAGE_FLUSH) {
      while (!sq.prepFsync(fd, IORING_FSYNC_DATASYNC, userData)) this.ring.makeRoom();
      return;
    }
    const done = this.done[tag];
    const length = this.length[tag] - done;
    if (stage === STAGE_DISCARD) {
      const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
      while (!sq.prepFallocate(fd, mode, this.fileOffset[tag], length, userData)) {
        this.ring.makeRoom();
      }
      return;
    }
    const reading = stage === STAGE_READ || stage === STAGE_READ_ZEROES;
    const source = stage === STAGE_READ_ZEROES ? this.devZero() : fd;
    const offset = stage === STAGE_READ_ZEROES ? 0 : this.fileOffset[tag] + done;
    if (this.config.autoBufReg) {
      // The registered buffer is the request's pages, addressed from 0.
      while (
        !(reading
          ? sq.prepReadFixed(source, done, length, offset, tag, userData)
          : sq.prepWriteFixed(source, done, length, offset, tag, userData))
      ) {
        this.ring.makeRoom();
      }
      return;
    }
    const address = this.address[tag] + done;
    while (
      !(reading
        ? sq.prepRead(source, address, length, offset, userData)
        : sq.prepWrite(source, address, length, offset, userData))
    ) {
      this.ring.makeRoom();
    }
  }

  /** /dev/zero, opened on first need (a read past the end of a file that shrank is rare). */
  private devZero(): number {
    if (this.zeroFd < 0) {
      this.zeroFd = open('/dev/zero', fsConstants.O_RDONLY | sysConstants.O_CLOEXEC, 0);
    }
    return this.zeroFd;
  }
}

/** The syscall each stage's ring IO stands for, to name a failure. */
const STAGE_CALLS = ['', 'read', 'read', 'write', 'write', 'fdatasync', 'fdatasync', 'discard'];

/** A failed forwarded request's error, for the failure log (made only on failure). */
export function forwardedError(call: string, result: number): Error {
  return errnoError(call, -result);
}
