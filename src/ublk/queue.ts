import { constants as osConstants } from 'node:os';
import { constants as sysConstants, errnoError, isErrnoError, mmap, munmap } from '../sys.js';
import type { IoResult, QueueHandlers, QueueIo } from '../targets/target.js';
import {
  IORING_FSYNC_DATASYNC,
  IORING_SETUP_COOP_TASKRUN,
  IORING_SETUP_DEFER_TASKRUN,
  IORING_SETUP_SINGLE_ISSUER,
  IoBuffer,
  Ring,
} from '../uring/index.js';
import {
  IoDescTable,
  UBLK_IO,
  UBLK_IO_F,
  UBLK_IO_OP,
  UBLK_IO_RES,
  UBLK_U_IO,
  ioDescMmapLength,
  ioDescMmapOffset,
  writeIoCmd,
} from './abi.js';

export interface QueueConfig {
  queueId: number;
  depth: number;
  /** Size of each tag's buffer: the device's max_io_buf_bytes. */
  bufferBytes: number;
  /** /dev/ublkcN, opened by the daemon's main thread (fds are per process). */
  charFd: number;
  /** The device was granted UBLK_F_CMD_IOCTL_ENCODE: IO commands use encoded opcodes. */
  encodedOpcodes: boolean;
}

const { EIO, EOPNOTSUPP, ETIME, EBUSY } = osConstants.errno;
const SECTOR = 512;
/** user_data below this is a tag's ublk command; from it up, a target IO's slot. */
const TARGET_IO_BASE = 1 << 16;
/**
 * Longest kernel wait while handlers are pending: they may also wait for something only the event
 * loop delivers (a timer, a socket), which must not be held up by much more than this.
 */
const BUSY_WAIT_MS = 10;
/** Longest kernel wait of an idle queue, so that the thread's own timers still run. */
const IDLE_WAIT_MS = 1000;
/** Batches handled in the kernel-wait loop between two turns of the thread's event loop. */
const BATCHES_PER_TURN = 64;
/** Microtask hops without a commit or a new target IO after which a batch's handlers are left. */
const QUIET_HOPS = 3;

type Settle = (res: number) => void;

/**
 * One hardware queue's state machine, run by the thread that owns the queue (the kernel accepts a
 * queue's commands only from the task that fetched its tags).
 *
 * Each tag cycles FETCH_REQ -> request in the descriptor -> target handler -> COMMIT_AND_FETCH_REQ
 * with the result, until the kernel answers ABORT when the device stops.
 *
 * The thread waits for the kernel in io_uring_enter itself, not in the event loop: one syscall
 * submits every commit and target IO prepared since the last one and sleeps until the next
 * completion, and the kernel's task work (which posts ublk's CQEs) runs inside that call. Every
 * CQE of a wake-up is handled before the next enter; async handlers' continuations run as
 * microtasks in between. The event loop gets a turn every BATCHES_PER_TURN batches and on an idle
 * timeout, so that the thread's own timers and messages run. When every pending handler waits
 * for something other than this ring (a timer, a socket), the thread waits in the event loop
 * instead, woken by it or by the ring's eventfd.
 */
export class Queue {
  readonly io: QueueIo;
  /** Resolves once every tag was aborted and the queue's memory and ring are released. */
  readonly done: Promise<void>;

  private readonly ring: Ring;
  private readonly descs: IoDescTable;
  private readonly descMapping: ArrayBuffer;
  private readonly buffers: IoBuffer;
  private readonly views: Uint8Array[];
  private handlers!: QueueHandlers;
  private finishedTags = 0;
  /** Per tag, 1 once it is out of service (see finishTag). */
  private readonly tagFinished: Uint8Array;
  /** An ABORT arrived: the device is stopping, or quiescing for a new daemon. */
  private aborting = false;
  /** Requests whose handler returned a promise that has not settled. */
  private pendingHandlers = 0;
  /** Per tag, the op and length of a pending request, for its settled handler's result. */
  private readonly tagOp: Uint8Array;
  private readonly tagLength: Uint32Array;
  /** Per tag, made once: the callbacks of a pending handler's promise. */
  private readonly onFulfilled: ((value: IoResult) => void)[];
  private readonly onRejected: ((err: unknown) => void)[];
  private readonly targetIo: (Settle | undefined)[] = [];
  private readonly freeSlots: number[] = [];
  private targetIoInFlight = 0;
  private captured: Settle | undefined;
  private readonly capture = (resolve: Settle): void => void (this.captured = resolve);
  private turnScheduled = false;
  /** Commits and target IOs prepared so far: what handlers' continuations do. */
  private progress = 0;
  private parked = false;
  private resolveDone!: () => void;
  private readonly ops: { fetch: number; commit: number; getData: number };

  constructor(private readonly config: QueueConfig) {
    const { depth, bufferBytes, queueId, charFd } = config;
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
    this.ring = createQueueRing(depth);
    const page = sysConstants.PAGE_SIZE;
    this.descMapping = mmap(
      charFd,
      ioDescMmapOffset(queueId, page),
      ioDescMmapLength(depth, page),
      false,
    ).buffer;
    this.descs = new IoDescTable(new Uint8Array(this.descMapping));
    this.buffers = IoBuffer.allocate(depth * bufferBytes);
    this.views = Array.from({ length: depth }, (_, tag) =>
      this.buffers.bytes.subarray(tag * bufferBytes, (tag + 1) * bufferBytes),
    );
    this.tagFinished = new Uint8Array(depth);
    this.tagOp = new Uint8Array(depth);
    this.tagLength = new Uint32Array(depth);
    this.onFulfilled = Array.from({ length: depth }, (_, tag) => (value: IoResult) => {
      this.pendingHandlers--;
      this.commit(tag, checkedResult(this.tagOp[tag], this.tagLength[tag], value));
    });
    this.onRejected = Array.from({ length: depth }, (_, tag) => (err: unknown) => {
      this.pendingHandlers--;
      this.commit(tag, errnoResult(err));
    });
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    const sq = this.ring.sq;
    this.io = {
      read: (fd, buf, offset) => {
        const address = this.addressOf(buf);
        const slot = this.claimSlot();
        while (!sq.prepRead(fd, address, buf.length, offset, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
      write: (fd, buf, offset) => {
        const address = this.addressOf(buf);
        const slot = this.claimSlot();
        while (!sq.prepWrite(fd, address, buf.length, offset, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
      fsync: (fd, opts) => {
        const slot = this.claimSlot();
        const flags = opts?.dataOnly ? IORING_FSYNC_DATASYNC : 0;
        while (!sq.prepFsync(fd, flags, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
      fallocate: (fd, mode, offset, length) => {
        const slot = this.claimSlot();
        while (!sq.prepFallocate(fd, mode, offset, length, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
    };
  }

  /** Fetches every tag. The kernel's START_DEV (or END_USER_RECOVERY) waits for exactly this. */
  start(handlers: QueueHandlers): void {
    this.handlers = handlers;
    for (let tag = 0; tag < this.config.depth; tag++) this.sendIoCmd(this.ops.fetch, tag, -1);
    this.submit();
    // From the event loop, so that the caller can report the queue ready first.
    this.scheduleTurn();
  }

  /** The queue's loop: wait, handle a batch, repeat; it leaves to the event loop when it must. */
  private async run(): Promise<void> {
    this.turnScheduled = false;
    for (let batch = 0; batch < BATCHES_PER_TURN; batch++) {
      if (this.finishedTags === this.config.depth && this.targetIoInFlight === 0) {
        return this.shutdown();
      }
      if (this.pendingHandlers > 0 && this.targetIoInFlight === 0) {
        // Only the event loop can settle these handlers: wait there, for it or for the ring,
        // unless CQEs are ready already.
        if (this.ring.awaitCqeInEventLoop(this.unpark)) {
          this.parked = true;
          return;
        }
      } else {
        const timeout = this.pendingHandlers > 0 ? BUSY_WAIT_MS : IDLE_WAIT_MS;
        const res = this.ring.submitAndWait(1, timeout);
        if (res < 0 && res !== -ETIME && res !== -EBUSY) throw errnoError('io_uring_enter', res);
      }
      if (this.ring.drain(this.onCqe) === 0) break; // a timeout: the event loop's turn
      // Let the handlers' promise continuations run (they commit, or start more ring IO) without
      // a turn of the event loop, which costs far more: each await lets every microtask queued so
      // far run. Stop once a few in a row changed nothing: a handler still pending then waits for
      // ring IO (the next kernel wait) or for the event loop (park).
      for (let quiet = 0; this.pendingHandlers > 0 && quiet < QUIET_HOPS;) {
        const before = this.progress;
        await null;
        quiet = this.progress === before ? quiet + 1 : 0;
      }
    }
    this.scheduleTurn();
  }

  private scheduleTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(this.runFromEventLoop);
  }

  private readonly runFromEventLoop = (): void => {
    this.run().catch((err: unknown) => {
      // As an uncaught exception: the queue thread fails (see onCqe).
      queueMicrotask(() => {
        throw err;
      });
    });
  };

  /** Ends a wait in the event loop: the ring has a CQE, or this thread prepared something. */
  private readonly unpark = (): void => {
    if (!this.parked) return;
    this.ring.cancelEventLoopWait();
    this.parked = false;
    this.scheduleTurn();
  };

  private readonly onCqe = (userData: number, res: number): void => {
    if (userData >= TARGET_IO_BASE) {
      const slot = userData - TARGET_IO_BASE;
      const settle = this.targetIo[slot]!;
      this.targetIo[slot] = undefined;
      this.freeSlots.push(slot);
      this.targetIoInFlight--;
      settle(res);
    } else if (res === UBLK_IO_RES.OK) {
      this.handleRequest(userData);
    } else if (res === UBLK_IO_RES.NEED_GET_DATA) {
      this.sendIoCmd(this.ops.getData, userData, 0);
    } else {
      // ABORT: the device is stopping, and this tag is done.
      if (res !== UBLK_IO_RES.ABORT) {
        // A refused command leaves the tag out of service for good (and a refused FETCH would
        // keep START_DEV or END_USER_RECOVERY waiting forever): fail the queue thread, which ends
        // the daemon and lets the kernel's monitor take the device over (recovery, or DEAD).
        throw new Error(
          `ublk queue ${this.config.queueId} tag ${userData}: the kernel refused a command: ${res}`,
        );
      }
      this.aborting = true;
      this.finishTag(userData);
    }
  };

  /**
   * A tag is out of service once the kernel aborted it, or once its last request was committed
   * after an ABORT: QUIESCE_DEV aborts only the idle tags and requeues every new request, so the
   * command a commit re-arms then never completes, and closing the ring cancels it (STOP_DEV
   * would abort it later, which changes nothing).
   */
  private finishTag(tag: number): void {
    if (this.tagFinished[tag]) return;
    this.tagFinished[tag] = 1;
    this.finishedTags++;
  }

  private handleRequest(tag: number): void {
    const op = this.descs.op(tag);
    const length = this.descs.nrSectors(tag) * SECTOR;
    const offset = this.descs.startSector(tag) * SECTOR;
    let result: IoResult | Promise<IoResult>;
    try {
      result = this.dispatch(tag, op, offset, length);
    } catch (err) {
      this.commit(tag, errnoResult(err));
      return;
    }
    if (result instanceof Promise) {
      this.tagOp[tag] = op;
      this.tagLength[tag] = length;
      this.pendingHandlers++;
      result.then(this.onFulfilled[tag], this.onRejected[tag]);
    } else {
      this.commit(tag, checkedResult(op, length, result));
    }
  }

  private dispatch(
    tag: number,
    op: number,
    offset: number,
    length: number,
  ): IoResult | Promise<IoResult> {
    const h = this.handlers;
    switch (op) {
      case UBLK_IO_OP.READ:
        return h.read(this.view(tag, length), offset);
      case UBLK_IO_OP.WRITE:
        return h.write(this.view(tag, length), offset, {
          fua: (this.descs.opFlags(tag) & UBLK_IO_F.FUA) !== 0,
        });
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
    let view = this.views[tag];
    if (view.length !== length) {
      const start = tag * this.config.bufferBytes;
      view = this.buffers.bytes.subarray(start, start + length);
      this.views[tag] = view;
    }
    return view;
  }

  /** Prepared now, submitted by the loop's next enter (woken from the event loop if parked). */
  private commit(tag: number, result: number): void {
    this.progress++;
    this.sendIoCmd(this.ops.commit, tag, result);
    if (this.aborting) this.finishTag(tag);
    this.unpark();
  }

  private sendIoCmd(cmdOp: number, tag: number, result: number): void {
    let cmd = this.ring.sq.prepUringCmd(this.config.charFd, cmdOp, tag);
    while (!cmd) {
      this.submit();
      cmd = this.ring.sq.prepUringCmd(this.config.charFd, cmdOp, tag);
    }
    const address = this.buffers.address + tag * this.config.bufferBytes;
    writeIoCmd(cmd, 0, this.config.queueId, tag, result, address);
  }

  private claimSlot(): number {
    this.progress++;
    this.targetIoInFlight++;
    this.unpark();
    return TARGET_IO_BASE + (this.freeSlots.pop() ?? this.targetIo.length);
  }

  /** The promise of a prepared target IO, made without a closure per IO. */
  private targetIoPromise(userData: number): Promise<number> {
    const promise = new Promise<number>(this.capture);
    this.targetIo[userData - TARGET_IO_BASE] = this.captured;
    return promise;
  }

  private addressOf(buf: Uint8Array): number {
    if (buf.buffer !== this.buffers.bytes.buffer) {
      throw new TypeError('target IO must use the request buffer or a slice of it');
    }
    return this.buffers.address + buf.byteOffset;
  }

  private submit(): void {
    const res = this.ring.submit();
    if (res < 0 && res !== -EBUSY) throw errnoError('io_uring_enter', res);
  }

  private async shutdown(): Promise<void> {
    if (this.finishedTags !== this.config.depth) return;
    this.finishedTags = -1; // once
    // The commits of the last requests, prepared but not yet sent: they complete those requests.
    this.submit();
    try {
      await this.handlers.close?.();
    } finally {
      this.ring.close();
      munmap(this.descMapping);
      this.buffers.free();
      this.resolveDone();
    }
  }
}

/**
 * The queue's ring, with room for every tag's command plus a few target IOs per tag. Completions
 * run as deferred task work (6.1+), inside the thread's own io_uring_enter: no interrupt of the
 * thread per request, and the requests that arrived meanwhile come back as one batch. Older
 * kernels get what they have of that.
 */
function createQueueRing(depth: number): Ring {
  const entries = Math.min(depth * 4, 4096);
  const choices = [
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
    IORING_SETUP_COOP_TASKRUN,
  ];
  for (const flags of choices) {
    try {
      return Ring.create({ entries, flags });
    } catch (err) {
      if (!isErrnoError(err, 'EINVAL')) throw err;
    }
  }
  return Ring.create({ entries });
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
