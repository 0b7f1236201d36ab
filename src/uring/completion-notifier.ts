import {
  close,
  constants,
  errnoError,
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
 * Wakes this thread's event loop when a ring posts CQEs, without polling: an eventfd registered
 * with the ring (the kernel signals it on every CQE) and watched by libuv.
 */
export class CompletionNotifier {
  private readonly eventFd: number;
  private readonly watch: WatchHandle;
  private referenced = true;

  constructor(
    private readonly ringFd: number,
    onWake: () => void,
  ) {
    // Created signalled, so CQEs posted before the registration get drained too.
    this.eventFd = eventfd(1, constants.EFD_NONBLOCK | constants.EFD_CLOEXEC);
    const fdArg = new Int32Array([this.eventFd]);
    const registered = ioUringRegister(ringFd, IORING_REGISTER_EVENTFD, fdArg, 1);
    if (registered < 0) {
      close(this.eventFd);
      throw errnoError('io_uring_register', -registered);
    }
    this.watch = watchReadable(this.eventFd, (status) => {
      if (status < 0) throw errnoError('uv_poll', -status);
      // Reset before draining: a CQE posted during the drain then signals again.
      readEventfd(this.eventFd);
      onWake();
    });
  }

  /** Whether waiting for completions keeps the event loop (the process) alive. */
  setRef(ref: boolean): void {
    if (ref === this.referenced) return;
    setWatchRef(this.watch, ref);
    this.referenced = ref;
  }

  close(): void {
    unwatch(this.watch);
    ioUringRegister(this.ringFd, IORING_UNREGISTER_EVENTFD, null, 0);
    close(this.eventFd);
  }
}
