import { close as closeFd, ioUringEnter, ioUringRegister } from '../sys.js';
import {
  IO_URING_BUF_REG,
  IO_URING_CQE,
  IO_URING_RSRC_REGISTER,
  IO_URING_SQE,
  IORING_ENTER_EXT_ARG,
  IORING_ENTER_GETEVENTS,
  IORING_REGISTER_BUFFERS2,
  IORING_REGISTER_PBUF_RING,
  IORING_RSRC_REGISTER_SPARSE,
  IORING_SETUP_CQE32,
  IORING_SETUP_SQE128,
  IORING_SQ_CQ_OVERFLOW,
} from './abi.js';
import { CompletionNotifier } from './completion-notifier.js';
import { CompletionQueue, type CqeHandler } from './completion-queue.js';
import { mapRing, type RingMemory } from './ring-memory.js';
import { setupRing } from './setup.js';
import { writeU64 } from './u64.js';
import { SubmissionQueue } from './submission-queue.js';
import { WaitTimeout } from './wait-timeout.js';

export interface RingOptions {
  /** SQ size; the kernel rounds it up to a power of two. */
  entries: number;
  /** CQ size (IORING_SETUP_CQSIZE); the kernel's default is twice the SQ size. */
  cqEntries?: number;
  /** IORING_SETUP_* flags, e.g. IORING_SETUP_SQE128. */
  flags?: number;
}

/**
 * An io_uring instance. Prepare SQEs with `ring.sq.prep*`, then either
 * - sync mode (e.g. a worker thread): `submitAndWait(n)` blocks for n completions, then
 *   `drain(handler)`; or
 * - event-loop mode: `startEventLoop(handler)` once, then `submit()`; the handler runs from the
 *   event loop as CQEs arrive, and the loop stays alive while operations are in flight.
 */
export class Ring {
  readonly fd: number;
  readonly features: number;
  readonly sq: SubmissionQueue;
  private readonly cq: CompletionQueue;
  private readonly memory: RingMemory;
  private readonly waitTimeout = new WaitTimeout();
  private notifier: CompletionNotifier | undefined;
  private eventLoopMode = false;
  /** SQEs the kernel has consumed so far; minus the CQ's `completed` gives the ops in flight. */
  private consumed = 0;
  private closed = false;

  private constructor(
    fd: number,
    features: number,
    memory: RingMemory,
    sq: SubmissionQueue,
    cq: CompletionQueue,
  ) {
    this.fd = fd;
    this.features = features;
    this.memory = memory;
    this.sq = sq;
    this.cq = cq;
  }

  static create(options: RingOptions): Ring {
    const flags = options.flags ?? 0;
    const sqeSize = flags & IORING_SETUP_SQE128 ? IO_URING_SQE.size128 : IO_URING_SQE.size;
    const cqeSize = flags & IORING_SETUP_CQE32 ? IO_URING_CQE.size32 : IO_URING_CQE.size;
    const { fd, params } = setupRing(options.entries, flags, options.cqEntries);
    try {
      const memory = mapRing(fd, params, sqeSize, cqeSize);
      const sq = new SubmissionQueue(memory.sqRing, memory.sqes, params, sqeSize);
      const cq = new CompletionQueue(memory.cqRing, params, cqeSize);
      return new Ring(fd, params.features, memory, sq, cq);
    } catch (error) {
      closeFd(fd);
      throw error;
    }
  }

  /** Operations submitted whose final CQE has not been drained yet. */
  get inFlight(): number {
    return this.consumed - this.cq.completed;
  }

  /** CQEs posted and not yet drained. */
  cqReady(): number {
    return this.cq.ready();
  }

  /** Submits every prepared SQE: how many the kernel took, or -errno (e.g. -EBUSY). */
  submit(): number {
    return this.enter(0, 0);
  }

  /**
   * Submits every prepared SQE and blocks until at least `minComplete` CQEs are ready, or
   * `timeoutMs` passed (then -ETIME if nothing was submitted). Fewer CQEs may be ready when a
   * signal or the timeout cut the wait short after a submission. Returns what submit() returns.
   */
  submitAndWait(minComplete: number, timeoutMs?: number): number {
    if (timeoutMs === undefined) return this.enter(minComplete, IORING_ENTER_GETEVENTS);
    this.waitTimeout.set(timeoutMs);
    const flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
    return this.enter(minComplete, flags, this.waitTimeout);
  }

  /**
   * Hands every ready CQE to `onCqe` (releasing them to the kernel in one step), including any
   * the kernel had to hold back while the CQ was full. Returns how many CQEs were handled.
   */
  drain(onCqe: CqeHandler): number {
    let handled = 0;
    try {
      for (;;) {
        handled += this.cq.drain(onCqe);
        if (this.closed || !(this.sq.flags() & IORING_SQ_CQ_OVERFLOW)) return handled;
        // CQEs that did not fit are queued in the kernel until an enter flushes them.
        const flushed = ioUringEnter(this.fd, 0, 0, IORING_ENTER_GETEVENTS);
        if (flushed < 0 || this.cq.ready() === 0) return handled;
      }
    } finally {
      this.updateRef();
    }
  }

  /**
   * Event-loop mode: `onCqe` receives the completions from the event loop (see the class doc), and
   * `afterDrain` runs once after each wake-up's batch, e.g. to submit what the batch prepared.
   */
  startEventLoop(onCqe: CqeHandler, afterDrain?: () => void): void {
    if (this.eventLoopMode) throw new Error('the ring is already in event-loop mode');
    this.eventLoopMode = true;
    const notifier = this.completionNotifier();
    notifier.start(() => {
      this.drain(onCqe);
      afterDrain?.();
    });
    this.updateRef();
  }

  /** Leaves event-loop mode, so the ring no longer keeps the event loop alive. */
  stopEventLoop(): void {
    this.eventLoopMode = false;
    this.notifier?.stop();
  }

  /**
   * For a thread that waits in io_uring_enter but must sometimes wait in its event loop instead:
   * submits what is prepared and, unless CQEs are ready (then it returns false), calls `onReady`
   * once from the event loop when some are. With IORING_SETUP_DEFER_TASKRUN, completions become
   * CQEs only inside io_uring_enter, which this runs first.
   */
  awaitCqeInEventLoop(onReady: () => void): boolean {
    const notifier = this.completionNotifier();
    notifier.reset();
    this.enter(0, IORING_ENTER_GETEVENTS);
    if (this.cq.ready() > 0) return false;
    notifier.start(() => {
      notifier.stop();
      onReady();
    });
    return true;
  }

  /** Cancels awaitCqeInEventLoop's call back. */
  cancelEventLoopWait(): void {
    this.notifier?.stop();
  }

  /**
   * Registers a buffer table of `count` empty entries (IORING_REGISTER_BUFFERS2, sparse; 5.19+),
   * for buffers someone else fills in later, such as ublk's AUTO_BUF_REG. 0 or -errno.
   */
  registerSparseBuffers(count: number): number {
    const arg = new Uint32Array(IO_URING_RSRC_REGISTER.size / 4);
    arg[IO_URING_RSRC_REGISTER.nr / 4] = count;
    arg[IO_URING_RSRC_REGISTER.flags / 4] = IORING_RSRC_REGISTER_SPARSE;
    return ioUringRegister(this.fd, IORING_REGISTER_BUFFERS2, arg, arg.byteLength);
  }

  /**
   * Registers a provided buffer ring of `entries` (a power of two) at `address`, page-aligned
   * memory of ours (see ProvidedBufferRing), as buffer group `bgid`; `flags` are IOU_PBUF_RING_*.
   * It lives as long as the ring. 0 or -errno.
   */
  registerBufRing(address: number, entries: number, bgid: number, flags: number): number {
    const arg = new Uint32Array(IO_URING_BUF_REG.size / 4);
    writeU64(arg, IO_URING_BUF_REG.ringAddr / 4, address);
    arg[IO_URING_BUF_REG.ringEntries / 4] = entries;
    const halves = new Uint16Array(arg.buffer);
    halves[IO_URING_BUF_REG.bgid / 2] = bgid;
    halves[IO_URING_BUF_REG.flags / 2] = flags;
    return ioUringRegister(this.fd, IORING_REGISTER_PBUF_RING, arg, 1);
  }

  /** Unmaps the ring memory (detaching every view) and closes the fds; repeated calls do nothing. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.notifier?.close();
    this.notifier = undefined;
    this.memory.unmap();
    closeFd(this.fd);
  }

  private enter(minComplete: number, flags: number, timeout?: WaitTimeout): number {
    const pending = this.sq.publish();
    if (pending === 0 && flags === 0) return 0;
    const result =
      timeout === undefined
        ? ioUringEnter(this.fd, pending, minComplete, flags)
        : ioUringEnter(this.fd, pending, minComplete, flags, timeout.argAddress, timeout.argSize);
    if (result > 0) {
      this.consumed += result;
      this.updateRef();
    }
    return result;
  }

  private completionNotifier(): CompletionNotifier {
    this.notifier ??= new CompletionNotifier(this.fd);
    return this.notifier;
  }

  private updateRef(): void {
    this.notifier?.setRef(this.inFlight > 0);
  }
}
