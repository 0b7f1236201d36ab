import { IO_URING_CQE, IORING_CQE_F_MORE } from './abi.js';
import type { RingParams } from './setup.js';
import { readU64 } from './u64.js';

/** Receives one CQE: the SQE's user_data, the result (>= 0 or -errno) and IORING_CQE_F_* flags. */
export type CqeHandler = (userData: number, res: number, flags: number) => void;

const USER_DATA = IO_URING_CQE.userData / 4;
const RES = IO_URING_CQE.res / 4;
const FLAGS = IO_URING_CQE.flags / 4;

/** The completion side of a ring. */
export class CompletionQueue {
  /** Operations finished so far: CQEs without IORING_CQE_F_MORE (a multishot's last one). */
  completed = 0;
  private readonly ring: Uint32Array;
  private readonly headIndex: number;
  private readonly tailIndex: number;
  private readonly mask: number;
  private readonly cqes: number;
  private readonly cqeWords: number;

  constructor(ring: ArrayBuffer, params: RingParams, cqeSize: number) {
    const off = params.cqOff;
    this.ring = new Uint32Array(ring);
    this.headIndex = off.head / 4;
    this.tailIndex = off.tail / 4;
    this.mask = this.ring[off.ringMask / 4];
    this.cqes = off.cqes / 4;
    this.cqeWords = cqeSize / 4;
  }

  /** CQEs posted and not yet drained. */
  ready(): number {
    return (Atomics.load(this.ring, this.tailIndex) - this.ring[this.headIndex]) >>> 0;
  }

  /**
   * Hands every ready CQE to `onCqe`, then releases them all to the kernel with one head
   * update. A throwing handler still releases the CQEs handled so far, including its own; a
   * handler that closes the ring ends the drain. Returns how many CQEs were handled.
   */
  drain(onCqe: CqeHandler): number {
    const start = this.ring[this.headIndex]; // only we write the head
    const tail = Atomics.load(this.ring, this.tailIndex);
    let head = start;
    try {
      // An unmapped ring has a detached, empty view.
      while (head !== tail && this.ring.length !== 0) {
        const cqe = this.cqes + (head & this.mask) * this.cqeWords;
        const flags = this.ring[cqe + FLAGS];
        head = (head + 1) >>> 0;
        if (!(flags & IORING_CQE_F_MORE)) this.completed++;
        onCqe(readU64(this.ring, cqe + USER_DATA), this.ring[cqe + RES] | 0, flags);
      }
    } finally {
      if (this.ring.length !== 0) Atomics.store(this.ring, this.headIndex, head);
    }
    return (head - start) >>> 0;
  }
}
