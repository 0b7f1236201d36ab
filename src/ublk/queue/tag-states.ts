import { constants } from 'node:os';
import { errnoError } from '../../errors.js';
import { pread, pwrite } from '../../sys.js';
import {
  UBLK_IO,
  UBLK_IO_F,
  UBLK_IO_OP,
  UBLK_IO_RES,
  UBLK_U_IO,
  type IoDescTable,
} from '../ublk-cmd.js';
import type { FailureLog } from './failure-log.js';
import {
  ForwardedIo,
  forwardedError,
  type ForwardRing,
  type LinkedCommit,
} from './forwarded-io.js';
import { HookRunner, ROUTED_BELOW, ROUTED_HANDLERS, type HookRing } from './request-hooks.js';
import { SECTOR, type IoResult, type QueueHandlers } from '../target/contract.js';
import { BOUNCE_CHUNK, BouncePool, userCopyOffset } from './user-copy.js';
import type { ResolvedDataPath } from '../device/data-path.js';

const { EINVAL, EIO, EOPNOTSUPP } = constants.errno;

/** What the state machine needs of the ring: one IO command for a tag, sent at the next enter. */
export interface IoCommandSink {
  /** `linked`: the commit follows a forwarded request's ring IO, linked (see LinkedCommit). */
  sendIoCmd(cmdOp: number, tag: number, result: number, linked?: boolean): void;
}

/** The descriptor fields the state machine reads (IoDescTable over the kernel's mapping). */
export type IoDescriptors = Pick<IoDescTable, 'op' | 'opFlags' | 'nrSectors' | 'startSector'>;

export interface TagStatesConfig {
  queueId: number;
  depth: number;
  /** Size of each tag's slice of the queue's buffer. */
  bufferBytes: number;
  /** The device was granted UBLK_F_CMD_IOCTL_ENCODE: IO commands use encoded opcodes. */
  encodedOpcodes: boolean;
  /** How request data travels (resolved by the main thread, data-path.ts). */
  dataPath: ResolvedDataPath;
  /** /dev/ublkcN; user copy reads and writes it, manual zero copy registers buffers on it. */
  charFd: number;
}

/** What a user-copy request's copy on /dev/ublkcN is, per tag. */
const COPY_LOAD = 1; // a WRITE's data, from the request to its bounce buffer
const COPY_STORE = 2; // a READ's data, from its bounce buffer to the request

/** What read/write handlers get with zero copy: the data never reaches JavaScript. */
const NO_BUFFER = new Uint8Array(0);

/**
 * The per-tag state machine of one hardware queue: each tag cycles FETCH_REQ -> request in the
 * descriptor -> target handler -> COMMIT_AND_FETCH_REQ with the result (NEED_GET_DATA first for a
 * write, when the device has it), until the kernel answers ABORT when the device stops or is
 * quiesced. It knows
 * nothing of how the ring is waited on: the scheduler (queue.ts) feeds it completions and sends
 * what it asks for.
 */
export class TagStates {
  /** Requests whose handler returned a promise that has not settled. */
  pendingHandlers = 0;
  /** Requests served as ring IO (QueueHandlers.forward); their CQEs go to `forwarded.complete`. */
  readonly forwarded: ForwardedIo;
  /** The filters' request hooks (QueueHandlers.hooks), when there are any. */
  private hooks: HookRunner | undefined;
  /** Tags out of service (see finish): all of them once the device stopped or was quiesced. */
  private finishedTags = 0;
  /** Per tag, 1 once it is out of service. */
  private readonly tagFinished: Uint8Array;
  /** An ABORT arrived: the device is stopping, or quiescing for a new daemon. */
  private aborting = false;
  /**
   * Commits linked behind forwarded IO, until the kernel refuses one: Linux 6.1 takes a tag's
   * commands only from the thread that fetched it, and runs a command linked behind IO that
   * completed in an io-wq worker on that worker (later kernels hand it to the thread).
   */
  private linkCommits = true;
  /** Per tag, the result its linked commit carries, to send again unlinked if refused. */
  private readonly linkedResult: Int32Array;

  private handlers!: QueueHandlers;
  private readonly buffer: Uint8Array;
  private readonly ops: { fetch: number; commit: number; getData: number };
  private readonly views: Uint8Array[];
  /** Zero copy by AUTO_BUF_REG, per tag: the pages the kernel lent, for the handlers. */
  private readonly lent: { index: number; length: number }[] | undefined;
  /** Per tag, the op, offset and length of a pending request, for its settled handler's result. */
  private readonly tagOp: Uint8Array;
  private readonly tagOffset: Float64Array;
  private readonly tagLength: Uint32Array;
  /** Per tag, made once: the callbacks of a pending handler's promise. */
  private readonly onFulfilled: ((value: IoResult) => void)[];
  private readonly onRejected: ((err: unknown) => void)[];
  private readonly bufferAddress: number;
  /** User copy: the bounce pool over `buffer`, and per tag what it holds of it. */
  private readonly pool: BouncePool | undefined;
  /** Per tag, the first chunk of its bounce buffer, or -1. */
  private readonly bounceChunk: Int32Array;
  private readonly bounceChunks: Uint16Array;
  /** Per first chunk, the handlers' view of a bounce buffer, reused while the length repeats. */
  private readonly bounceViews: (Uint8Array | undefined)[];

  constructor(
    private readonly config: TagStatesConfig,
    private readonly descs: IoDescriptors,
    /**
     * The queue's IO buffer and its address: tag t owns bytes [t * bufferBytes, (t + 1) *
     * bufferBytes). Empty with zero copy.
     */
    buffer: { bytes: Uint8Array; address: number },
    private readonly sink: IoCommandSink,
    private readonly failures: FailureLog,
    private readonly ring: ForwardRing & HookRing,
  ) {
    const { depth, bufferBytes } = config;
    this.buffer = buffer.bytes;
    this.bufferAddress = buffer.address;
    this.linkedResult = new Int32Array(depth);
    this.forwarded = new ForwardedIo(
      {
        depth,
        linkedCommit: this.linkedCommit,
        mode: config.dataPath.mode,
        charFd: config.charFd,
        queueId: config.queueId,
      },
      ring,
      this.onForwardedDone,
    );
    const { mode } = config.dataPath;
    this.pool = mode === 'user-copy' ? new BouncePool(buffer.bytes.length, depth) : undefined;
    this.bounceChunk = new Int32Array(depth).fill(-1);
    this.bounceChunks = new Uint16Array(depth);
    this.bounceViews = new Array<Uint8Array | undefined>(this.pool?.chunks ?? 0);
    this.ops = config.encodedOpcodes
      ? {
          fetch: UBLK_U_IO.FETCH_REQ,
          commit: UBLK_U_IO.COMMIT_AND_FETCH_REQ,
          getData: UBLK_U_IO.NEED_GET_DATA,
        }
      : {
          fetch: UBLK_IO.FETCH_REQ,
          commit: UBLK_IO.COMMIT_AND_FETCH_REQ,
          getData: UBLK_IO.NEED_GET_DATA,
        };
    this.views = Array.from({ length: depth }, (_, tag) =>
      mode === 'copy'
        ? this.buffer.subarray(tag * bufferBytes, (tag + 1) * bufferBytes)
        : NO_BUFFER,
    );
    this.lent =
      mode === 'auto-zero-copy'
        ? Array.from({ length: depth }, (_, tag) => ({ index: tag, length: 0 }))
        : undefined;
    this.tagFinished = new Uint8Array(depth);
    this.tagOp = new Uint8Array(depth);
    this.tagOffset = new Float64Array(depth);
    this.tagLength = new Uint32Array(depth);
    this.onFulfilled = Array.from({ length: depth }, (_, tag) => (value: IoResult) => {
      this.pendingHandlers--;
      this.settle(tag, checkedResult(this.tagOp[tag], this.tagLength[tag], value));
    });
    this.onRejected = Array.from({ length: depth }, (_, tag) => (err: unknown) => {
      this.pendingHandlers--;
      this.fail(tag, this.tagOp[tag], this.tagOffset[tag], this.tagLength[tag], err);
    });
  }

  /** Ring IO the state machine prepared whose CQE has not come: forwarded IO and hook delays. */
  get ringIoInFlight(): number {
    return this.forwarded.inFlight + (this.hooks?.inFlight ?? 0);
  }

  /** Every tag is out of service: the queue can close its ring. */
  get allFinished(): boolean {
    return this.finishedTags === this.config.depth;
  }

  /** Fetches every tag. The kernel's START_DEV (or END_USER_RECOVERY) waits for exactly this. */
  start(handlers: QueueHandlers): void {
    this.handlers = handlers;
    this.forwarded.use(handlers.forward);
    this.hooks = HookRunner.of(handlers.hooks, this.config.depth, this.ring, {
      serve: (tag, op, offset, length, address) => this.serveNow(tag, op, offset, length, address),
      fail: (tag, op, offset, length, err) => this.fail(tag, op, offset, length, err),
    });
    for (let tag = 0; tag < this.config.depth; tag++) this.sink.sendIoCmd(this.ops.fetch, tag, -1);
  }

  /** The CQE of a tag's FETCH, COMMIT_AND_FETCH or NEED_GET_DATA command. */
  complete(tag: number, res: number): void {
    if (res === UBLK_IO_RES.OK) {
      this.handleRequest(tag);
    } else if (res === UBLK_IO_RES.NEED_GET_DATA) {
      this.sink.sendIoCmd(this.ops.getData, tag, 0);
    } else if (res === UBLK_IO_RES.ABORT) {
      this.aborting = true;
      this.finish(tag);
    } else {
      // A refused command leaves the tag out of service for good (and a refused FETCH would keep
      // START_DEV or END_USER_RECOVERY waiting forever): fail the queue thread, which ends the
      // daemon and lets the kernel's monitor take the device over (recovery, or DEAD).
      throw errnoError('ublk IO command', -res, { queueId: this.config.queueId, tag });
    }
  }

  /**
   * Batch IO: the kernel ended the queue's fetch commands with ABORT (its per-tag form). The tags
   * not `held` are out of service now, the others once their request is committed.
   */
  abortUnheld(held: Uint8Array): void {
    this.aborting = true;
    for (let tag = 0; tag < this.config.depth; tag++) if (held[tag] === 0) this.finish(tag);
  }

  /**
   * The CQE of a commit linked behind a forwarded request's IO: that of COMMIT_AND_FETCH, unless
   * the kernel refused the linked command (EINVAL, see linkCommits), which is then sent again
   * unlinked, as every later commit is.
   */
  completeLinkedCommit(tag: number, res: number): void {
    if (res === -EINVAL) {
      // Others may be refused after this one: each is sent again.
      this.linkCommits = false;
      return this.commit(tag, this.linkedResult[tag]);
    }
    this.complete(tag, res);
  }

  private readonly linkedCommit: LinkedCommit = {
    // Not with user copy (the commit gives the bounce buffer back, which the IO still uses),
    // while aborting (the commit takes the tag out of service at once), nor under request hooks
    // (their `after` must see what the IO did).
    // Batch IO commits in COMMIT_IO_CMDS, never with a tag's own command.
    allowed: (tag) =>
      this.linkCommits &&
      !this.aborting &&
      this.bounceChunk[tag] < 0 &&
      this.hooks === undefined &&
      !this.config.dataPath.batch,
    send: (tag, result) => {
      this.linkedResult[tag] = result;
      this.sink.sendIoCmd(this.ops.commit, tag, result, true);
    },
  };

  /** The queue is shutting down: no request is in flight. */
  closeHandlers(): void | Promise<void> {
    this.forwarded.close();
    return this.handlers.close?.();
  }

  private handleRequest(tag: number): void {
    const op = this.descs.op(tag);
    const length = this.descs.nrSectors(tag) * SECTOR;
    const offset = this.descs.startSector(tag) * SECTOR;
    if (
      this.pool !== undefined &&
      length > 0 &&
      (op === UBLK_IO_OP.READ || op === UBLK_IO_OP.WRITE)
    ) {
      this.tagOp[tag] = op;
      this.tagOffset[tag] = offset;
      this.tagLength[tag] = length;
      const chunks = BouncePool.chunksFor(length);
      // Behind earlier waiters, in arrival order.
      const first = this.pool.waiting > 0 ? -1 : this.pool.alloc(chunks);
      if (first < 0) return this.pool.wait(tag, chunks);
      return this.withBounce(tag, first, chunks);
    }
    this.serve(tag, op, offset, length, this.bufferAddress + tag * this.config.bufferBytes);
  }

  /** A delayed request's TIMEOUT completed (see request-hooks.ts). */
  resumeDelayed(tag: number): void {
    this.hooks!.resume(tag);
  }

  /** The data of a request is in memory at `address` (or, with zero copy, in its own pages). */
  private serve(tag: number, op: number, offset: number, length: number, address: number): void {
    if (this.hooks?.start(tag, op, offset, length, address) === true) return;
    this.serveNow(tag, op, offset, length, address);
  }

  /** The request, through its hooks: to the forward, else to the handlers. */
  private serveNow(tag: number, op: number, offset: number, length: number, address: number): void {
    const fua = (this.descs.opFlags(tag) & UBLK_IO_F.FUA) !== 0;
    const route = this.hooks === undefined ? ROUTED_BELOW : this.hooks.routeOf(tag);
    if (
      route !== ROUTED_HANDLERS &&
      this.forwarded.start(tag, op, offset, length, fua, address, route)
    ) {
      return;
    }
    let result: IoResult | Promise<IoResult>;
    try {
      result = this.dispatch(tag, op, offset, length);
    } catch (err) {
      this.fail(tag, op, offset, length, err);
      return;
    }
    if (result instanceof Promise) {
      this.tagOp[tag] = op;
      this.tagOffset[tag] = offset;
      this.tagLength[tag] = length;
      this.pendingHandlers++;
      result.then(this.onFulfilled[tag], this.onRejected[tag]);
    } else {
      this.settle(tag, checkedResult(op, length, result));
    }
  }

  /** User copy: the tag got bounce chunks [first, first + chunks); a WRITE loads its data first. */
  private withBounce(tag: number, first: number, chunks: number): void {
    this.bounceChunk[tag] = first;
    this.bounceChunks[tag] = chunks;
    const op = this.tagOp[tag];
    if (op === UBLK_IO_OP.WRITE) {
      const res = this.copy(tag, COPY_LOAD, this.tagLength[tag]);
      if (res < 0) return this.copyFailed(tag, COPY_LOAD, res);
    }
    this.serve(tag, op, this.tagOffset[tag], this.tagLength[tag], this.bounceAddress(tag));
  }

  private bounceAddress(tag: number): number {
    return this.bufferAddress + this.bounceChunk[tag] * BOUNCE_CHUNK;
  }

  /**
   * Copies `length` bytes between the tag's bounce buffer and its request: 0 or -errno. With
   * pread/pwrite on /dev/ublkcN from this thread, as kublk does, not as ring IO: the char device
   * has no FMODE_NOWAIT, so io_uring hands every read or write of it to an io-wq worker, one
   * more thread switch and one more wake-up of this thread per request: see
   * docs/performance.md#decisions, "User copy on the queue thread".
   */
  private copy(tag: number, stage: number, length: number): number {
    const fd = this.config.charFd;
    const address = this.bounceAddress(tag);
    for (let done = 0; done < length;) {
      const position = userCopyOffset(this.config.queueId, tag, done);
      const res =
        stage === COPY_LOAD
          ? pread(fd, address + done, length - done, position)
          : pwrite(fd, address + done, length - done, position);
      // 0: the request has no more bytes than were copied, which cannot happen for one it sent.
      if (res <= 0) return res < 0 ? res : -EIO;
      done += res;
    }
    return 0;
  }

  private copyFailed(tag: number, stage: number, res: number): void {
    const call =
      stage === COPY_LOAD ? 'read /dev/ublkc (user copy)' : 'write /dev/ublkc (user copy)';
    this.fail(
      tag,
      this.tagOp[tag],
      this.tagOffset[tag],
      this.tagLength[tag],
      errnoError(call, -res),
    );
  }

  /** A request's result: a user-copy READ stores its data in the request first. */
  private settle(tag: number, result: number): void {
    if (this.bounceChunk[tag] >= 0 && this.tagOp[tag] === UBLK_IO_OP.READ && result > 0) {
      const res = this.copy(tag, COPY_STORE, result);
      if (res < 0) return this.copyFailed(tag, COPY_STORE, res);
    }
    this.commit(tag, result);
  }

  /** Gives a committed request's bounce chunks back, and to the requests waiting for them. */
  private releaseBounce(tag: number): void {
    const pool = this.pool!;
    pool.free(this.bounceChunk[tag], this.bounceChunks[tag]);
    this.bounceChunk[tag] = -1;
    for (let next = pool.grantWaiter(); next >= 0; next = pool.grantWaiter()) {
      this.withBounce(next, pool.grantedChunk, BouncePool.chunksFor(this.tagLength[next]));
    }
  }

  private dispatch(
    tag: number,
    op: number,
    offset: number,
    length: number,
  ): IoResult | Promise<IoResult> {
    const h = this.handlers;
    const lent = this.lent?.[tag];
    if (lent) lent.length = length;
    switch (op) {
      case UBLK_IO_OP.READ:
        return h.read ? h.read(this.view(tag, length), offset, lent) : -EOPNOTSUPP;
      case UBLK_IO_OP.WRITE:
        return h.write
          ? h.write(
              this.view(tag, length),
              offset,
              { fua: (this.descs.opFlags(tag) & UBLK_IO_F.FUA) !== 0 },
              lent,
            )
          : -EOPNOTSUPP;
      case UBLK_IO_OP.FLUSH:
        return h.flush ? h.flush() : -EOPNOTSUPP;
      case UBLK_IO_OP.DISCARD:
        return h.discard ? h.discard(offset, length) : -EOPNOTSUPP;
      case UBLK_IO_OP.WRITE_ZEROES:
        return h.writeZeroes
          ? h.writeZeroes(offset, length, {
              noUnmap: (this.descs.opFlags(tag) & UBLK_IO_F.NOUNMAP) !== 0,
            })
          : -EOPNOTSUPP;
      default:
        return -EOPNOTSUPP;
    }
  }

  /** The tag's buffer cut to the request, reusing the previous view when the length repeats. */
  private view(tag: number, length: number): Uint8Array {
    const chunk = this.bounceChunk[tag];
    if (chunk >= 0) {
      let bounce = this.bounceViews[chunk];
      if (bounce?.length !== length) {
        const start = chunk * BOUNCE_CHUNK;
        bounce = this.buffer.subarray(start, start + length);
        this.bounceViews[chunk] = bounce;
      }
      return bounce;
    }
    let view = this.views[tag];
    if (view.length !== length && view !== NO_BUFFER) {
      const start = tag * this.config.bufferBytes;
      view = this.buffer.subarray(start, start + length);
      this.views[tag] = view;
    }
    return view;
  }

  /** A handler that threw or rejected: that request fails with the error's errno, logged. */
  private fail(tag: number, op: number, offset: number, length: number, err: unknown): void {
    const result = errnoResult(err);
    this.failures.record({ tag, op, offset, length, result }, err);
    this.commit(tag, result);
  }

  /** A forwarded request is done: committed, and logged as a handler failure would be. */
  private readonly onForwardedDone = (tag: number, result: number, failedCall?: string): void => {
    if (failedCall !== undefined) {
      const op = this.descs.op(tag);
      const length = this.descs.nrSectors(tag) * SECTOR;
      const offset = this.descs.startSector(tag) * SECTOR;
      this.failures.record({ tag, op, offset, length, result }, forwardedError(failedCall, result));
      return this.commit(tag, result);
    }
    this.settle(tag, result);
  };

  private commit(tag: number, result: number): void {
    this.hooks?.after(tag, result);
    if (this.bounceChunk[tag] >= 0) this.releaseBounce(tag);
    this.sink.sendIoCmd(this.ops.commit, tag, result);
    if (this.aborting) this.finish(tag);
  }

  /**
   * A tag is out of service once the kernel aborted it, or once its last request was committed
   * after an ABORT: QUIESCE_DEV aborts only the idle tags and requeues every new request, so the
   * command a commit re-arms then never completes, and closing the ring cancels it (STOP_DEV
   * would abort it later, which changes nothing).
   */
  private finish(tag: number): void {
    if (this.tagFinished[tag]) return;
    this.tagFinished[tag] = 1;
    this.finishedTags++;
  }
}

/** A handler's value as the kernel wants it: bytes for READ/WRITE, 0 for the others. */
function checkedResult(op: number, length: number, value: IoResult): number {
  if (value === undefined) return op === UBLK_IO_OP.READ || op === UBLK_IO_OP.WRITE ? length : 0;
  if (!Number.isInteger(value) || value > length) return -EIO;
  if (value < 0) return value;
  return op === UBLK_IO_OP.READ || op === UBLK_IO_OP.WRITE ? value : 0;
}

/** A thrown error's errno (positive as in our errors, negative as in Node's), else EIO. */
function errnoResult(err: unknown): number {
  const errno = (err as { errno?: unknown } | null)?.errno;
  return typeof errno === 'number' && errno !== 0 ? -Math.abs(errno) : -EIO;
}
