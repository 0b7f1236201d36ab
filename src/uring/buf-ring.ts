import { IO_URING_BUF, IO_URING_BUF_RING } from './abi.js';
import { writeU64 } from './u64.js';

const ENTRY_WORDS = IO_URING_BUF.size / 4;
const ADDR = IO_URING_BUF.addr / 4;
const LEN = IO_URING_BUF.len / 4;
const BID = IO_URING_BUF.bid / 2;
const TAIL = IO_URING_BUF_RING.tail / 2;

/**
 * The buffer side of a provided buffer ring in memory of ours (page-aligned, registered with
 * Ring.registerBufRing): we add buffers at the tail, the kernel takes them from the head for
 * IOSQE_BUFFER_SELECT requests of the ring's group. The views are made once: adding allocates
 * nothing.
 */
export class ProvidedBufferRing {
  private readonly words: Uint32Array;
  private readonly halfWords: Uint16Array;
  private readonly mask: number;
  private tail = 0;

  /** `memory` holds `entries` (a power of two) io_uring_buf entries, zeroed. */
  constructor(memory: Uint8Array, entries: number) {
    this.words = new Uint32Array(memory.buffer, memory.byteOffset, entries * ENTRY_WORDS);
    this.halfWords = new Uint16Array(memory.buffer, memory.byteOffset, entries * ENTRY_WORDS * 2);
    this.mask = entries - 1;
  }

  /** Hands the kernel `length` bytes at `address` as buffer `bid`. */
  push(address: number, length: number, bid: number): void {
    const entry = (this.tail & this.mask) * ENTRY_WORDS;
    writeU64(this.words, entry + ADDR, address);
    this.words[entry + LEN] = length;
    this.halfWords[entry * 2 + BID] = bid;
    this.tail = (this.tail + 1) & 0xffff;
    // The entry is complete before the kernel can see the tail move past it.
    Atomics.store(this.halfWords, TAIL, this.tail);
  }
}
