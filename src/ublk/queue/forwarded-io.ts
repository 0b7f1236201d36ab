import { constants as fsConstants, fstatSync, statfsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { errnoError } from '../../errors.js';
import { close, constants as sysConstants, open, pread, pwrite } from '../../sys.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  IORING_FSYNC_DATASYNC,
  IOSQE_CQE_SKIP_SUCCESS,
  IOSQE_IO_HARDLINK,
  IOSQE_IO_LINK,
  RAMFS_MAGIC,
  TMPFS_MAGIC,
  type SubmissionQueue,
} from '../../uring/index.js';
import { UBLK_IO_OP, UBLK_U_IO, writeIoCmd } from '../ublk-cmd.js';
import type { RingForward } from '../target/contract.js';
import type { DataPathMode } from '../device/data-path.js';
import {
  encodeUserData,
  UD_FORWARDED_IO,
  UD_REGISTER_IO_BUF,
  UD_UNREGISTER_IO_BUF,
} from './user-data.js';

const { EIO, ECANCELED } = osConstants.errno;

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

/**
 * The largest read or write of a file in memory done on this thread (see `onThread`); a longer
 * copy is left to io-wq, where it runs beside this thread's work on another CPU. See
 * docs/performance.md#decisions, "Short IO of in-memory files on the queue thread".
 */
const ON_THREAD_MAX_BYTES = 16 * 1024;

/** The ring calls a forwarded request needs. */
export interface ForwardRing {
  sq: Pick<
    SubmissionQueue,
    | 'prepRead'
    | 'prepWrite'
    | 'prepReadFixed'
    | 'prepWriteFixed'
    | 'prepFsync'
    | 'prepFallocate'
    | 'prepUringCmd'
    | 'spaceLeft'
  >;
  /** Submits what is prepared, making room in a full SQ. */
  makeRoom(): void;
}

export interface ForwardedIoConfig {
  depth: number;
  /**
   * Where a request's commit may follow its one ring IO as a linked SQE (see `start`); without
   * it, every forwarded request is committed from its CQE.
   */
  linkedCommit?: LinkedCommit;
  /**
   * The device's data path. auto-zero-copy: the kernel registered the request's own pages at index
   * `tag` of the ring's buffer table, so reads and writes are READ_FIXED/WRITE_FIXED at offsets
   * within it. manual-zero-copy: each READ_FIXED/WRITE_FIXED is the middle of a chain submitted at
   * once, as kublk does: REGISTER_IO_BUF of the request's pages at index `tag` on /dev/ublkcN
   * (`charFd`), linked to the IO, hard-linked to UNREGISTER_IO_BUF (which runs whatever the IO's
   * result). The request goes on once both the IO's and the unregister's CQEs came: usually in one
   * wake-up, where unregistering from the IO's CQE took one more.
   */
  mode: DataPathMode;
  /** /dev/ublkcN and the queue, for manual zero copy's commands. */
  charFd: number;
  queueId: number;
}

/**
 * The commit of a request, prepared as the SQE right after the request's ring IO, which is linked
 * to it (IOSQE_IO_LINK). `allowed` is asked before that IO is prepared.
 */
export interface LinkedCommit {
  allowed(tag: number): boolean;
  send(tag: number, result: number): void;
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
 * kernel's loop driver does; a FUA write is the write, then fdatasync. Short reads and writes of
 * a file that lives in memory are done on this thread instead (see `onThread`).
 */
export class ForwardedIo {
  /** Forwarded requests whose result is not known yet. */
  inFlight = 0;

  private forward: RingForward | undefined;
  private readonly stage: Uint8Array;
  /** The file the request's IO goes to (the forward's, or a filter's route), and where in it. */
  private readonly fd: Int32Array;
  private readonly fileOffset: Float64Array;
  private readonly length: Uint32Array;
  private readonly done: Uint32Array;
  /** Copy and user copy: where the request's data is in memory (start's `address`). */
  private readonly address: Float64Array;
  /** Per tag, 1 while its ring IO runs with its commit linked behind it (see start). */
  private readonly linked: Uint8Array;
  /** Per tag, 1 after a failed REGISTER_IO_BUF, until the request's next start. */
  private readonly registerFailed: Uint8Array;
  /**
   * Manual zero copy, per tag: CQEs of its chain still to come (the IO's, the unregister's), and
   * the result of whichever came first.
   */
  private readonly chainCqes: Uint8Array;
  private readonly ioResult: Int32Array;
  private readonly unregisterResult: Int32Array;
  private zeroFd = -1;
  /** Per fd a request went to: whether its reads and writes are done on this thread. */
  private readonly onThreadFds = new Map<number, boolean>();

  constructor(
    private readonly config: ForwardedIoConfig,
    private readonly ring: ForwardRing,
    private readonly finished: ForwardedDone,
  ) {
    this.stage = new Uint8Array(config.depth);
    this.fd = new Int32Array(config.depth);
    this.fileOffset = new Float64Array(config.depth);
    this.length = new Uint32Array(config.depth);
    this.done = new Uint32Array(config.depth);
    this.address = new Float64Array(config.depth);
    this.linked = new Uint8Array(config.depth);
    this.registerFailed = new Uint8Array(config.depth);
    this.chainCqes = new Uint8Array(config.depth);
    this.ioResult = new Int32Array(config.depth);
    this.unregisterResult = new Int32Array(config.depth);
  }

  /** The handlers' forward, or undefined when they have none. */
  use(forward: RingForward | undefined): void {
    this.forward = forward;
    this.onThreadFds.clear();
  }

  /**
   * Starts a request as ring IO when the forward covers it: READ and WRITE always, FLUSH with
   * `sync`, DISCARD with `discard`. False leaves the request to the handlers. `address` is where
   * the request's data is in memory: the tag's buffer (copy mode) or its bounce buffer (user
   * copy); unused with zero copy. `routeFd`, when not -1, is a file laid out as the device (a
   * filter's route, see request-hooks.ts) that the request's IO goes to instead.
   */
  start(
    tag: number,
    op: number,
    offset: number,
    length: number,
    fua: boolean,
    address: number,
    routeFd = -1,
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
    this.fd[tag] = routeFd < 0 ? forward.fd : routeFd;
    this.fileOffset[tag] = routeFd < 0 ? forward.offset + offset : offset;
    this.length[tag] = length;
    this.done[tag] = 0;
    this.address[tag] = address;
    this.linked[tag] = 0;
    this.registerFailed[tag] = 0;
    const readOrWrite = stage === STAGE_READ || stage === STAGE_WRITE || stage === STAGE_WRITE_FUA;
    if (readOrWrite && length <= ON_THREAD_MAX_BYTES && this.onThread(this.fd[tag])) {
      this.inFlight++;
      this.ioDone(tag, this.readOrWriteHere(tag));
      return true;
    }
    if (this.linkable(tag, stage, forward)) {
      // The request is one ring IO whose result is known: the kernel commits it as soon as the
      // IO succeeds, with no CQE for the IO and no return to this thread in between (one wake-up
      // per request instead of two). A short or failed IO breaks the link: its CQE comes, the
      // commit is cancelled without one (IOSQE_CQE_SKIP_SUCCESS on a failed head skips the
      // linked CQEs too), and complete() carries on as for an unlinked IO.
      if (this.ring.sq.spaceLeft() < 2) this.ring.makeRoom();
      this.linked[tag] = 1;
      this.prepare(tag, IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS);
      this.config.linkedCommit!.send(
        tag,
        stage === STAGE_READ || stage === STAGE_WRITE ? length : 0,
      );
      return true;
    }
    this.inFlight++;
    this.prepare(tag);
    return true;
  }

  /**
   * One IO and then the commit: reads, plain writes, flushes and discards, not FUA writes (two
   * IOs), manual zero copy (the registration's commands around the IO), or a sync someone must
   * hear of (onSync, from the CQE). Only while no other forwarded IO is in flight: then the
   * thread would wake for this IO alone, while under load it wakes for others anyway and sends
   * many commits in one enter (docs/performance.md#decisions, "Commit linked behind a lone IO").
   */
  private linkable(tag: number, stage: number, forward: RingForward): boolean {
    const linkedCommit = this.config.linkedCommit;
    if (linkedCommit === undefined || this.config.mode === 'manual-zero-copy') return false;
    if (this.inFlight !== 0) return false;
    const oneIo =
      stage === STAGE_READ ||
      stage === STAGE_WRITE ||
      stage === STAGE_DISCARD ||
      (stage === STAGE_FLUSH && forward.onSync === undefined);
    return oneIo && linkedCommit.allowed(tag);
  }

  /**
   * Whether short reads and writes of `fd` (ON_THREAD_MAX_BYTES) are pread/pwrite on this thread
   * rather than ring IO: for a regular file of tmpfs or ramfs (a memfd too), with the request's
   * data in our memory (copy mode, user copy). Those files have no FMODE_NOWAIT, so io_uring hands
   * each read or write of them to an io-wq worker, which makes the same copy one thread switch
   * later, and this thread wakes once more for its CQE; nothing in them waits for a device. kublk's
   * user copy reads /dev/ublkcN with pread for the same reason (docs/performance.md#decisions).
   */
  private onThread(fd: number): boolean {
    const mode = this.config.mode;
    if (mode === 'auto-zero-copy' || mode === 'manual-zero-copy') return false;
    let here = this.onThreadFds.get(fd);
    if (here === undefined) {
      here = inMemoryFile(fd);
      this.onThreadFds.set(fd, here);
    }
    return here;
  }

  /** The tag's READ or WRITE (its first pass: nothing done yet) with pread/pwrite: as a CQE's res. */
  private readOrWriteHere(tag: number): number {
    const fd = this.fd[tag];
    const address = this.address[tag];
    return this.stage[tag] === STAGE_READ
      ? pread(fd, address, this.length[tag], this.fileOffset[tag])
      : pwrite(fd, address, this.length[tag], this.fileOffset[tag]);
  }

  /** The CQE of a forwarded request's ring IO (user_data UD_FORWARDED_IO). */
  complete(tag: number, res: number): void {
    if (this.linked[tag] !== 0) {
      // The link broke (see start): the request is ours again.
      this.linked[tag] = 0;
      this.inFlight++;
    }
    if (res === -ECANCELED && this.registerFailed[tag] !== 0) {
      // Cancelled behind its failed REGISTER_IO_BUF, whose CQE finished the request already (a
      // kernel posts this only where it does not skip the CQEs of a failed link, see there).
      return;
    }
    if (this.chainCqes[tag] !== 0) {
      this.ioResult[tag] = res;
      if (--this.chainCqes[tag] !== 0) return;
      return this.chainDone(tag);
    }
    this.ioDone(tag, res);
  }

  /** Manual zero copy: both CQEs of a tag's chain came. */
  private chainDone(tag: number): void {
    const unregistered = this.unregisterResult[tag];
    if (unregistered < 0) return this.finish(tag, unregistered, 'ublk UNREGISTER_IO_BUF');
    this.ioDone(tag, this.ioResult[tag]);
  }

  /** A forwarded request's ring IO is done with `res`: the request goes on, or is finished. */
  private ioDone(tag: number, res: number): void {
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
        if (this.fd[tag] === this.forward?.fd) this.forward.onSync?.('fua');
        return this.finish(tag, this.length[tag]);
      case STAGE_FLUSH:
        if (this.fd[tag] === this.forward?.fd) this.forward.onSync?.('flush');
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

  /** The CQE of a REGISTER_IO_BUF: only on failure, its success posts none. */
  completeRegister(tag: number, res: number): void {
    // The request fails here, not at its data IO linked after it: that and the unregister are
    // cancelled without a CQE, since the registration was sent with IOSQE_CQE_SKIP_SUCCESS (a
    // failed request with that flag skips its link's CQEs: REQ_F_SKIP_LINK_CQES). Nothing is
    // registered.
    this.registerFailed[tag] = 1;
    this.chainCqes[tag] = 0;
    this.finish(tag, res < 0 ? res : -EIO, 'ublk REGISTER_IO_BUF');
  }

  /** The CQE of an UNREGISTER_IO_BUF. */
  completeUnregister(tag: number, res: number): void {
    if (res === -ECANCELED && this.registerFailed[tag] !== 0) return; // as in complete()
    this.unregisterResult[tag] = res;
    if (--this.chainCqes[tag] === 0) this.chainDone(tag);
  }

  /** A REGISTER_IO_BUF or UNREGISTER_IO_BUF of the tag's request at buffer index `tag`. */
  private prepareCommand(
    tag: number,
    cmdOp: number,
    kind: typeof UD_REGISTER_IO_BUF | typeof UD_UNREGISTER_IO_BUF,
    sqeFlags: number,
  ): void {
    const charFd = this.config.charFd;
    const userData = encodeUserData(kind, tag);
    let cmd = this.ring.sq.prepUringCmd(charFd, cmdOp, userData, 0, sqeFlags);
    while (!cmd) {
      this.ring.makeRoom();
      cmd = this.ring.sq.prepUringCmd(charFd, cmdOp, userData, 0, sqeFlags);
    }
    writeIoCmd(cmd, 0, this.config.queueId, tag, 0, tag);
  }

  private finish(tag: number, result: number, failedCall?: string): void {
    this.inFlight--;
    this.finished(tag, result, failedCall);
  }

  /** Prepares the tag's next ring IO for its stage, from what is done so far. */
  private prepare(tag: number, sqeFlags = 0): void {
    const stage = this.stage[tag];
    const fd = this.fd[tag];
    const userData = encodeUserData(UD_FORWARDED_IO, tag);
    const sq = this.ring.sq;
    if (stage === STAGE_FUA_SYNC || stage === STAGE_FLUSH) {
      while (!sq.prepFsync(fd, IORING_FSYNC_DATASYNC, userData, sqeFlags)) this.ring.makeRoom();
      return;
    }
    const done = this.done[tag];
    const length = this.length[tag] - done;
    if (stage === STAGE_DISCARD) {
      const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
      while (!sq.prepFallocate(fd, mode, this.fileOffset[tag], length, userData, sqeFlags)) {
        this.ring.makeRoom();
      }
      return;
    }
    const reading = stage === STAGE_READ || stage === STAGE_READ_ZEROES;
    const source = stage === STAGE_READ_ZEROES ? this.devZero() : fd;
    const offset = stage === STAGE_READ_ZEROES ? 0 : this.fileOffset[tag] + done;
    if (this.config.mode === 'manual-zero-copy') {
      // One chain, in one submission: room for all three.
      if (sq.spaceLeft() < 3) this.ring.makeRoom();
      const flags = IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
      this.prepareCommand(tag, UBLK_U_IO.REGISTER_IO_BUF, UD_REGISTER_IO_BUF, flags);
      if (reading) sq.prepReadFixed(source, done, length, offset, tag, userData, IOSQE_IO_HARDLINK);
      else sq.prepWriteFixed(source, done, length, offset, tag, userData, IOSQE_IO_HARDLINK);
      this.prepareCommand(tag, UBLK_U_IO.UNREGISTER_IO_BUF, UD_UNREGISTER_IO_BUF, 0);
      this.chainCqes[tag] = 2;
      return;
    }
    if (this.config.mode === 'auto-zero-copy') {
      // The registered buffer is the request's pages, addressed from 0.
      while (
        !(reading
          ? sq.prepReadFixed(source, done, length, offset, tag, userData, sqeFlags)
          : sq.prepWriteFixed(source, done, length, offset, tag, userData, sqeFlags))
      ) {
        this.ring.makeRoom();
      }
      return;
    }
    const address = this.address[tag] + done;
    while (
      !(reading
        ? sq.prepRead(source, address, length, offset, userData, sqeFlags)
        : sq.prepWrite(source, address, length, offset, userData, sqeFlags))
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

/** A regular file of a file system that keeps its files in memory (a memfd is tmpfs's). */
function inMemoryFile(fd: number): boolean {
  try {
    if (!fstatSync(fd).isFile()) return false; // a device node on devtmpfs is no file of it
    const { type } = statfsSync(`/proc/self/fd/${fd}`);
    return type === TMPFS_MAGIC || type === RAMFS_MAGIC;
  } catch {
    return false; // not ours to judge: the ring's IO will say what is wrong with it
  }
}

/** The syscall each stage's ring IO stands for, to name a failure. */
const STAGE_CALLS = ['', 'read', 'read', 'write', 'write', 'fdatasync', 'fdatasync', 'discard'];

/** A failed forwarded request's error, for the failure log (made only on failure). */
export function forwardedError(call: string, result: number): Error {
  return errnoError(call, -result);
}
