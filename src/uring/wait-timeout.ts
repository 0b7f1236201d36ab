import { addressOf } from '../sys.js';
import { IO_URING_GETEVENTS_ARG, KERNEL_TIMESPEC } from './abi.js';
import { writeU64 } from './u64.js';

/** io_uring_enter's IORING_ENTER_EXT_ARG argument for a wait with a timeout, made once. */
export class WaitTimeout {
  /** The argument's address and size, as io_uring_enter takes them. */
  readonly argAddress: number;
  readonly argSize = IO_URING_GETEVENTS_ARG.size;
  private readonly arg: Uint32Array;
  // An explicit ArrayBuffer: its memory is off the JS heap and never moves, so the kernel can
  // be given its address.
  private readonly timespec = new Uint32Array(new ArrayBuffer(KERNEL_TIMESPEC.size));
  private milliseconds = -1;

  constructor() {
    this.arg = new Uint32Array(new ArrayBuffer(IO_URING_GETEVENTS_ARG.size));
    writeU64(this.arg, IO_URING_GETEVENTS_ARG.ts / 4, addressOf(this.timespec));
    this.argAddress = addressOf(this.arg);
  }

  set(milliseconds: number): void {
    // A queue thread waits with one of two timeouts, again and again.
    if (milliseconds === this.milliseconds) return;
    this.milliseconds = milliseconds;
    writeU64(this.timespec, KERNEL_TIMESPEC.tvSec / 4, Math.floor(milliseconds / 1000));
    writeU64(this.timespec, KERNEL_TIMESPEC.tvNsec / 4, Math.floor((milliseconds % 1000) * 1e6));
  }
}
