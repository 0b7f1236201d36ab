import { errnoError } from '../errors.js';
import {
  close,
  constants,
  eventfd,
  ioUringRegister,
  readEventfd,
  setWatchRef,
  unwatch,
  watchReadable,
  type WatchHandle,
} from '../sys.js';
import { IORING_REGISTER_EVENTFD, IORING_UNREGISTER_EVENTFD } from './abi.js';

/**
 * Wakes this thread's event loop when a ring posts CQEs (or, with IORING_SETUP_DEFER_TASKRUN, has
 * completions waiting to be posted), without polling: an eventfd registered with the ring, which
 * the kernel signals, watched by libuv while started.
 */
export class CompletionNotifier {
  private readonly eventFd: number;
  private watch: WatchHandle | undefined;
  private referenced = true;

  constructor(private readonly ringFd: number) {
    // Created signalled, so that CQEs posted before the registration are looked for too.
    this.eventFd = eventfd(1, constants.EFD_NONBLOCK | constants.EFD_CLOEXEC);
    const fdArg = new Int32Array([this.eventFd]);
    const registered = ioUringRegister(ringFd, IORING_REGISTER_EVENTFD, fdArg, 1);
    if (registered < 0) {
      close(this.eventFd);
      throw errnoError('io_uring_register', -registered);
    }
  }

  /** Calls `onWake` from the event loop each time the kernel signals, until stop(). */
  start(onWake: () => void): void {
    if (this.watch) throw new Error('the completion notifier is already started');
    this.watch = watchReadable(this.eventFd, (status) => {
      if (status < 0) throw errnoError('uv_poll', -status);
      // Reset before the callback: a CQE posted while it runs then signals again.
      this.reset();
      onWake();
    });
    if (!this.referenced) setWatchRef(this.watch, false);
  }

  stop(): void {
    if (!this.watch) return;
    unwatch(this.watch);
    this.watch = undefined;
  }

  /** Forgets the signals so far: check the ring after this, and a later CQE still wakes. */
  reset(): void {
    readEventfd(this.eventFd);
  }

  /** Whether waiting for completions keeps the event loop (the process) alive. */
  setRef(ref: boolean): void {
    if (ref === this.referenced) return;
    this.referenced = ref;
    if (this.watch) setWatchRef(this.watch, ref);
  }

  close(): void {
    this.stop();
    ioUringRegister(this.ringFd, IORING_UNREGISTER_EVENTFD, null, 0);
    close(this.eventFd);
  }
}
