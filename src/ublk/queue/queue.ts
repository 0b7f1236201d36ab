import { constants as osConstants } from 'node:os';
import { errnoError, isErrnoError } from '../../errors.js';
import { constants as sysConstants, mmap, munmap } from '../../sys.js';
import {
  IORING_FSYNC_DATASYNC,
  MSG_NOSIGNAL,
  MSG_WAITALL,
  IORING_SETUP_COOP_TASKRUN,
  IORING_SETUP_DEFER_TASKRUN,
  IORING_SETUP_SINGLE_ISSUER,
  IoBuffer,
  Ring,
} from '../../uring/index.js';
import {
  IoDescTable,
  UBLK_IO,
  UBLK_IO_RES,
  UBLK_U_IO,
  ioDescMmapLength,
  ioDescMmapOffset,
  writeIoCmd,
} from '../ublk-cmd.js';
import {
  BatchIo,
  batchElemBytes,
  openBatchMemory,
  type BatchMemory,
  type BatchRing,
} from './batch-io.js';
import { FailureLog } from './failure-log.js';
import type { ForwardRing } from './forwarded-io.js';
import type { HookRing } from './request-hooks.js';
import {
  TagStates,
  type IoCommandSink,
  type IoDescriptors,
  type TagStatesConfig,
} from './tag-states.js';
import type { QueueHandlers, QueueIo } from '../target/contract.js';
import { bouncePoolBytes } from './user-copy.js';
import {
  encodeUserData,
  UD_BATCH_COMMAND,
  UD_BATCH_FETCH,
  UD_FORWARDED_IO,
  UD_HOOK_DELAY,
  UD_LINKED_COMMIT,
  UD_REGISTER_IO_BUF,
  UD_TAG_COMMAND,
  UD_TARGET_IO,
  UD_UNREGISTER_IO_BUF,
  userDataIndex,
  userDataKind,
} from './user-data.js';
import { wholeBufferIo } from './whole-buffer-io.js';

export interface QueueConfig extends TagStatesConfig {
  devId: number;
  /** /dev/ublkcN, opened by the daemon's main thread (fds are per process). */
  charFd: number;
  /** Log every failed request, not only the first of each cause. */
  logEveryFailure?: boolean;
}

/** The part of a Ring the scheduler drives; tests stand in for it. */
export type QueueRing = Pick<
  Ring,
  'submit' | 'submitAndWait' | 'drain' | 'awaitCqeInEventLoop' | 'cancelEventLoopWait' | 'close'
> & {
  sq: Pick<Ring['sq'], 'prepUringCmd' | 'prepSend' | 'prepRecv'> &
    ForwardRing['sq'] &
    HookRing['sq'] &
    Partial<BatchRing['sq']>;
};

/** What a queue runs on: its ring, the kernel's descriptors and the tags' buffer. */
export interface QueueResources {
  ring: QueueRing;
  descs: IoDescriptors;
  /**
   * Page-aligned memory the kernel copies requests to and from, and its address; empty with zero
   * copy, where the kernel lends the requests' own pages; with user copy, the bounce
   * pool the daemon copies requests through.
   */
  buffer: { bytes: Uint8Array; address: number };
  /** Batch IO (QueueConfig.dataPath.batch): the fetch buffers, their buffer rings, the element buffers. */
  batch?: BatchMemory;
  /** Unmaps the descriptors and frees the buffer, after the ring is closed. */
  release(): void;
  /** Ends the thread on a failure of the loop; by default an uncaught exception. */
  fatal?(err: unknown): void;
  /** Where failed requests are logged; by default the thread's stderr (the daemon's log). */
  log?(line: string): void;
}

const { ETIME, EBUSY } = osConstants.errno;
/**
 * Longest kernel wait while handlers are pending: they may also wait for something only the event
 * loop delivers (a timer, a socket), which must not be held up by much more than this.
 */
const BUSY_WAIT_MS = 10;
/** Longest kernel wait of an idle queue, so that the thread's own timers still run. */
const IDLE_WAIT_MS = 1000;
/**
 * A busy queue leaves its kernel-wait loop for a turn of the thread's event loop (its timers and
 * messages) once this long has passed, checked every TURN_CHECK_BATCHES batches; with handlers
 * pending, at every check. A turn delays the request it interrupts: see
 * docs/performance.md#decisions, "Event loop turn every 100 ms".
 */
const TURN_INTERVAL_MS = 100;
const TURN_CHECK_BATCHES = 64;
/** Microtask hops without a commit or a new target IO after which a batch's handlers are left. */
const QUIET_HOPS = 3;

type Settle = (res: number) => void;

/**
 * One hardware queue's scheduler, run by the thread that owns the queue (the kernel accepts a
 * queue's commands only from the task that fetched its tags). The tags' state machine is
 * TagStates; this is the loop around it and the target IO it offers.
 *
 * The thread waits for the kernel in io_uring_enter itself, not in the event loop: one syscall
 * submits every commit and target IO prepared since the last one and sleeps until the next
 * completion, and the kernel's task work (which posts ublk's CQEs) runs inside that call. Every
 * CQE of a wake-up is handled before the next enter; async handlers' continuations run as
 * microtasks in between. The event loop gets a turn every TURN_INTERVAL_MS (every
 * TURN_CHECK_BATCHES batches while handlers are pending) and on an idle timeout, so that the
 * thread's own timers and messages run. When every pending handler waits for something other
 * than this ring (a timer, a socket), the thread waits in the event loop instead, woken by it or
 * by the ring's eventfd.
 */
export class Queue implements IoCommandSink {
  readonly io: QueueIo;
  /** Resolves once every tag is out of service and the queue's memory and ring are released. */
  readonly done: Promise<void>;

  private readonly ring: QueueRing;
  private readonly tags: TagStates;
  /** With batch IO, what turns the tags' fetches and commits into batch commands. */
  private readonly batch: BatchIo | undefined;
  private readonly failures: FailureLog;
  private readonly targetIo: (Settle | undefined)[] = [];
  private readonly freeSlots: number[] = [];
  /** What `io.allocate` handed out: ring-addressable like the request buffer, freed with it. */
  private readonly allocated = new Map<ArrayBufferLike, IoBuffer>();
  private targetIoInFlight = 0;
  /** SENDs with MSG_WAITALL prepared for the next enter: they complete without the thread. */
  private selfCompleting = 0;
  private captured: Settle | undefined;
  private readonly capture = (resolve: Settle): void => void (this.captured = resolve);
  private turnScheduled = false;
  private shutDown = false;
  /** Commands and target IOs prepared so far: what handlers' continuations do. */
  private progress = 0;
  private parked = false;
  private resolveDone!: () => void;

  /** A queue on the device's real ring, descriptor mapping and buffers. */
  static open(config: QueueConfig): Queue {
    const { depth, bufferBytes, queueId, charFd } = config;
    const ring = createQueueRing(depth);
    const page = sysConstants.PAGE_SIZE;
    const descMapping = mmap(
      charFd,
      ioDescMmapOffset(queueId, page),
      ioDescMmapLength(depth, page),
      false,
    ).buffer;
    let buffer: IoBuffer | undefined;
    let batch: ReturnType<typeof openBatchMemory> | undefined;
    try {
      const { mode, batch: batched } = config.dataPath;
      if (mode === 'auto-zero-copy' || mode === 'manual-zero-copy') {
        // Zero copy: each request's pages are registered at its tag's index of this table (by
        // the kernel, or by the forwarded request's REGISTER_IO_BUF).
        const res = ring.registerSparseBuffers(depth);
        if (res < 0) throw errnoError('io_uring_register(BUFFERS2, sparse)', -res);
      } else if (mode === 'user-copy') {
        // No buffer per tag: a pool bounded in bytes, which requests copy through.
        buffer = IoBuffer.allocate(bouncePoolBytes(depth, bufferBytes));
      } else {
        buffer = IoBuffer.allocate(depth * bufferBytes);
      }
      if (batched) {
        batch = openBatchMemory(ring, depth, batchElemBytes(mode === 'copy'), page);
      }
    } catch (err) {
      munmap(descMapping);
      ring.close();
      buffer?.free();
      throw err;
    }
    return new Queue(config, {
      ring,
      descs: new IoDescTable(new Uint8Array(descMapping)),
      buffer: buffer ?? { bytes: new Uint8Array(0), address: 0 },
      batch: batch?.memory,
      release: () => {
        munmap(descMapping);
        buffer?.free();
        batch?.free();
      },
    });
  }

  constructor(
    private readonly config: QueueConfig,
    private readonly resources: QueueResources,
  ) {
    this.ring = resources.ring;
    this.failures = new FailureLog({
      devId: config.devId,
      queueId: config.queueId,
      everyFailure: config.logEveryFailure,
      write: resources.log,
    });
    const forwardRing: ForwardRing & HookRing = {
      sq: this.ring.sq,
      makeRoom: () => this.submit(),
    };
    this.tags = new TagStates(
      config,
      resources.descs,
      resources.buffer,
      this,
      this.failures,
      forwardRing,
    );
    this.batch = config.dataPath.batch ? this.openBatch(resources) : undefined;
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    const sq = this.ring.sq;
    const raw = {
      read: (fd: number, buf: Uint8Array, offset: number) => {
        const address = this.addressOf(buf);
        const slot = this.claimSlot();
        while (!sq.prepRead(fd, address, buf.length, offset, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
      write: (fd: number, buf: Uint8Array, offset: number) => {
        const address = this.addressOf(buf);
        const slot = this.claimSlot();
        while (!sq.prepWrite(fd, address, buf.length, offset, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
    };
    this.io = {
      ...raw,
      ...wholeBufferIo(raw),
      fsync: async (fd, opts) => {
        const slot = this.claimSlot();
        const flags = opts?.dataOnly ? IORING_FSYNC_DATASYNC : 0;
        while (!sq.prepFsync(fd, flags, slot)) this.submit();
        const res = await this.targetIoPromise(slot);
        if (res < 0) throw errnoError(opts?.dataOnly ? 'fdatasync' : 'fsync', -res);
      },
      fallocate: async (fd, mode, offset, length) => {
        const slot = this.claimSlot();
        while (!sq.prepFallocate(fd, mode, offset, length, slot)) this.submit();
        const res = await this.targetIoPromise(slot);
        if (res < 0) throw errnoError('fallocate', -res);
      },
      send: (fd, buf, waitAll) => {
        const address = this.addressOf(buf);
        const slot = this.claimSlot();
        const flags = waitAll === true ? MSG_NOSIGNAL | MSG_WAITALL : MSG_NOSIGNAL;
        while (!sq.prepSend(fd, address, buf.length, flags, slot)) this.submit();
        if (waitAll === true) this.selfCompleting++;
        return this.targetIoPromise(slot);
      },
      recv: (fd, buf, waitAll) => {
        const address = this.addressOf(buf);
        const slot = this.claimSlot();
        const flags = waitAll === true ? MSG_WAITALL : 0;
        while (!sq.prepRecv(fd, address, buf.length, flags, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
      // Offset 0: a socket refuses any other (ESPIPE), /dev/zero ignores it.
      sendData: (fd, data, start, length) => {
        const slot = this.claimSlot();
        while (!sq.prepWriteFixed(fd, start, length, 0, data.index, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
      recvData: (fd, data, start, length) => {
        const slot = this.claimSlot();
        while (!sq.prepReadFixed(fd, start, length, 0, data.index, slot)) this.submit();
        return this.targetIoPromise(slot);
      },
      allocate: (length) => {
        const memory = IoBuffer.allocate(length);
        this.allocated.set(memory.bytes.buffer, memory);
        return memory.bytes;
      },
    };
  }

  /** Fetches every tag, then serves them from the event loop's next turn. */
  start(handlers: QueueHandlers): void {
    this.tags.start(handlers);
    this.submit();
    // From the event loop, so that the caller can report the queue ready first.
    this.scheduleTurn();
  }

  /** For TagStates: prepared now, submitted by the loop's next enter (woken if parked). */
  sendIoCmd(cmdOp: number, tag: number, result: number, linked = false): void {
    this.progress++;
    if (this.batch) {
      // No NEED_GET_DATA with batch IO (the kernel drops it): a fetch or a commit.
      if (cmdOp === UBLK_U_IO.FETCH_REQ || cmdOp === UBLK_IO.FETCH_REQ) this.batch.prepare(tag);
      else this.batch.commit(tag, result);
      return this.unpark();
    }
    // Zero copy: the SQE's addr is struct ublk_auto_buf_reg, {index: tag, flags: 0}, and the
    // command carries no buffer. No UBLK_AUTO_BUF_REG_FALLBACK: a request whose pages the kernel
    // cannot register (never with one table slot per tag) is failed by the kernel itself.
    const { mode } = this.config.dataPath;
    const sqeAddr = mode === 'auto-zero-copy' ? tag : 0;
    const userData = encodeUserData(linked ? UD_LINKED_COMMIT : UD_TAG_COMMAND, tag);
    let cmd = this.ring.sq.prepUringCmd(this.config.charFd, cmdOp, userData, sqeAddr);
    while (!cmd) {
      this.submit();
      cmd = this.ring.sq.prepUringCmd(this.config.charFd, cmdOp, userData, sqeAddr);
    }
    // With user copy the kernel maps no buffer either: the command's addr is 0.
    const address =
      mode === 'copy' ? this.resources.buffer.address + tag * this.config.bufferBytes : 0;
    writeIoCmd(cmd, 0, this.config.queueId, tag, result, address);
    this.unpark();
  }

  /** The queue's loop: wait, handle a batch, repeat; it leaves to the event loop when it must. */
  private async run(): Promise<void> {
    this.turnScheduled = false;
    const tags = this.tags;
    const started = performance.now();
    for (let batch = 1; ; batch++) {
      // The commits of the batch just handled go in one COMMIT_IO_CMDS, with this enter.
      this.batch?.flush();
      const ringIoInFlight = this.targetIoInFlight + tags.ringIoInFlight;
      if (tags.allFinished && ringIoInFlight === 0) return this.shutdown();
      if (tags.pendingHandlers > 0 && ringIoInFlight === 0) {
        // Only the event loop can settle these handlers: wait there, for it or for the ring,
        // unless CQEs are ready already.
        if (this.ring.awaitCqeInEventLoop(this.unpark)) {
          this.parked = true;
          return;
        }
      } else {
        const timeout = tags.pendingHandlers > 0 ? BUSY_WAIT_MS : IDLE_WAIT_MS;
        // A COMMIT_IO_CMDS completes during the enter that submits it: wait for a CQE beyond
        // those, else the enter returns at once and a second one sleeps (one more enter and pass
        // of the loop per request).
        // Likewise a whole-buffer SEND, which a socket with room takes at once: waking for its
        // CQE alone costs a return to JavaScript and one more enter (docs/performance.md#decisions,
        // "A SEND of whole requests does not wake the queue"). Such a send is of bytes the
        // peer answers (QueueIo.send), so the answer ends this wait, else its timeout does.
        const commits = this.batch?.inFlight ?? 0;
        const res = this.ring.submitAndWait(1 + commits + this.selfCompleting, timeout);
        this.selfCompleting = 0;
        if (res < 0 && res !== -ETIME && res !== -EBUSY) throw errnoError('io_uring_enter', -res);
      }
      if (this.ring.drain(this.onCqe) === 0) break; // a timeout: the event loop's turn
      // Let the handlers' promise continuations run (they commit, or start more ring IO) without
      // a turn of the event loop, which costs far more: each await lets every microtask queued so
      // far run. Stop once a few in a row changed nothing: a handler still pending then waits for
      // ring IO (the next kernel wait) or for the event loop (park).
      for (let quiet = 0; tags.pendingHandlers > 0 && quiet < QUIET_HOPS;) {
        const before = this.progress;
        await null;
        quiet = this.progress === before ? quiet + 1 : 0;
      }
      // Pending handlers may wait for the event loop (a socket, a timer): a turn at each check.
      if (
        batch % TURN_CHECK_BATCHES === 0 &&
        (tags.pendingHandlers > 0 || performance.now() - started >= TURN_INTERVAL_MS)
      ) {
        break;
      }
    }
    this.scheduleTurn();
  }

  private openBatch(resources: QueueResources): BatchIo {
    const { sq } = this.ring;
    if (!resources.batch || !sq.prepUringCmdBufferSelect) {
      throw new TypeError('a batch IO queue needs batch memory and a buffer-select ring');
    }
    const config = this.config;
    return new BatchIo(
      {
        queueId: config.queueId,
        depth: config.depth,
        charFd: config.charFd,
        copyBuffer:
          config.dataPath.mode === 'copy'
            ? { address: resources.buffer.address, bytesPerTag: config.bufferBytes }
            : undefined,
        autoBufReg: config.dataPath.mode === 'auto-zero-copy',
      },
      resources.batch,
      {
        sq: {
          prepUringCmd: sq.prepUringCmd.bind(sq),
          prepUringCmdBufferSelect: sq.prepUringCmdBufferSelect.bind(sq),
        },
        makeRoom: () => this.submitPrepared(),
      },
      {
        request: (tag) => this.tags.complete(tag, UBLK_IO_RES.OK),
        abort: (held) => this.tags.abortUnheld(held),
      },
    );
  }

  private scheduleTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(this.runFromEventLoop);
  }

  private readonly runFromEventLoop = (): void => {
    this.run().catch(this.resources.fatal ?? throwUncaught);
  };

  /** Ends a wait in the event loop: the ring has a CQE, or this thread prepared something. */
  private readonly unpark = (): void => {
    if (!this.parked) return;
    this.ring.cancelEventLoopWait();
    this.parked = false;
    this.scheduleTurn();
  };

  private readonly onCqe = (userData: number, res: number, flags: number): void => {
    const index = userDataIndex(userData);
    switch (userDataKind(userData)) {
      case UD_TAG_COMMAND:
        return this.tags.complete(index, res);
      case UD_TARGET_IO: {
        const settle = this.targetIo[index]!;
        this.targetIo[index] = undefined;
        this.freeSlots.push(index);
        this.targetIoInFlight--;
        return settle(res);
      }
      case UD_FORWARDED_IO:
        return this.tags.forwarded.complete(index, res);
      case UD_REGISTER_IO_BUF:
        return this.tags.forwarded.completeRegister(index, res);
      case UD_UNREGISTER_IO_BUF:
        return this.tags.forwarded.completeUnregister(index, res);
      case UD_HOOK_DELAY:
        return this.tags.resumeDelayed(index);
      case UD_LINKED_COMMIT:
        return this.tags.completeLinkedCommit(index, res);
      case UD_BATCH_COMMAND:
        return this.batch!.complete(index, res);
      case UD_BATCH_FETCH:
        return this.batch!.fetched(index, res, flags);
      default:
        throw new Error(
          `ublk queue ${this.config.queueId}: a CQE of unknown user_data ${userData}`,
        );
    }
  };

  private claimSlot(): number {
    this.progress++;
    this.targetIoInFlight++;
    this.unpark();
    return encodeUserData(UD_TARGET_IO, this.freeSlots.pop() ?? this.targetIo.length);
  }

  /** The promise of a prepared target IO, made without a closure per IO. */
  private targetIoPromise(userData: number): Promise<number> {
    const promise = new Promise<number>(this.capture);
    this.targetIo[userDataIndex(userData)] = this.captured;
    return promise;
  }

  private addressOf(buf: Uint8Array): number {
    const { bytes, address } = this.resources.buffer;
    if (buf.buffer === bytes.buffer) return address + buf.byteOffset;
    const own = this.allocated.get(buf.buffer);
    if (own) return own.address + buf.byteOffset;
    throw new TypeError(
      'target IO must use the request buffer, a slice of it, or io.allocate memory',
    );
  }

  private submit(): void {
    this.batch?.flush();
    this.submitPrepared();
  }

  /** Submits what is prepared as it is: BatchIo's way to make room in the SQ. */
  private submitPrepared(): void {
    const res = this.ring.submit();
    if (res < 0 && res !== -EBUSY) throw errnoError('io_uring_enter', -res);
  }

  private async shutdown(): Promise<void> {
    if (this.shutDown) return;
    this.shutDown = true;
    // The commits of the last requests, prepared but not yet sent: they complete those requests.
    this.submit();
    try {
      await this.tags.closeHandlers();
    } finally {
      this.failures.flush();
      this.ring.close();
      this.resources.release();
      for (const memory of this.allocated.values()) memory.free();
      this.resolveDone();
    }
  }
}

/** As an uncaught exception: the queue thread fails (see TagStates.complete). */
function throwUncaught(err: unknown): void {
  queueMicrotask(() => {
    throw err;
  });
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
