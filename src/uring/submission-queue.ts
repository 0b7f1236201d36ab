import {
  IO_URING_SQE,
  IORING_OP_FALLOCATE,
  IORING_OP_FSYNC,
  IORING_OP_NOP,
  IORING_OP_POLL_ADD,
  IORING_OP_TIMEOUT,
  IORING_OP_READ,
  IORING_OP_READ_FIXED,
  IORING_OP_RECV,
  IORING_OP_SEND,
  IORING_OP_URING_CMD,
  IORING_OP_WRITE,
  IORING_OP_WRITE_FIXED,
} from './abi.js';
import type { RingParams } from './setup.js';
import { writeU64 } from './u64.js';

const FD = IO_URING_SQE.fd / 4;
const OFF = IO_URING_SQE.off / 4;
const CMD_OP = IO_URING_SQE.cmdOp / 4;
const ADDR = IO_URING_SQE.addr / 4;
const LEN = IO_URING_SQE.len / 4;
const OP_FLAGS = IO_URING_SQE.opFlags / 4;
const USER_DATA = IO_URING_SQE.userData / 4;
const BUF_INDEX = IO_URING_SQE.bufIndex / 2;

/**
 * The submission side of a ring. prep* methods fill the next free SQE and return false (null
 * for prepUringCmd) when the SQ is full: submit, then prepare again. Prepared SQEs reach the
 * kernel at the ring's next submit. `userData` is an integer in [0, 2^53), handed back in the
 * CQE; `sqeFlags` are IOSQE_* flags.
 */
export class SubmissionQueue {
  readonly entries: number;
  /** The SQE array as bytes (IORING_SETUP_SQE128 doubles each SQE), e.g. to inspect an SQE. */
  readonly sqeMemory: Uint8Array;
  private readonly ring: Uint32Array;
  private readonly head: number;
  private readonly tailIndex: number;
  private readonly flagsIndex: number;
  private readonly mask: number;
  private readonly words: Uint32Array;
  private readonly halfWords: Uint16Array;
  private readonly sqeWords: number;
  /** Per slot, the URING_CMD command area, made once so preparing allocates nothing. */
  private readonly cmdViews: DataView[];
  /** Our tail: SQEs up to here are prepared; the kernel sees them once published. */
  private tail: number;

  constructor(ring: ArrayBuffer, sqes: ArrayBuffer, params: RingParams, sqeSize: number) {
    const off = params.sqOff;
    this.entries = params.sqEntries;
    this.ring = new Uint32Array(ring);
    this.head = off.head / 4;
    this.tailIndex = off.tail / 4;
    this.flagsIndex = off.flags / 4;
    this.mask = this.ring[off.ringMask / 4];
    this.tail = this.ring[this.tailIndex];
    this.sqeMemory = new Uint8Array(sqes);
    this.words = new Uint32Array(sqes);
    this.halfWords = new Uint16Array(sqes);
    this.sqeWords = sqeSize / 4;
    this.cmdViews = [];
    for (let slot = 0; slot < this.entries; slot++) {
      const cmd = slot * sqeSize + IO_URING_SQE.cmd;
      this.cmdViews.push(new DataView(sqes, cmd, sqeSize - IO_URING_SQE.cmd));
    }
    // SQE slot i is always SQ array entry i, so the array is filled once, here.
    const array = new Uint32Array(ring, off.array, this.entries);
    for (let i = 0; i < this.entries; i++) array[i] = i;
  }

  /** How many more SQEs can be prepared before a submit. */
  spaceLeft(): number {
    return this.entries - ((this.tail - Atomics.load(this.ring, this.head)) >>> 0);
  }

  /** The SQ ring flags word (IORING_SQ_*). */
  flags(): number {
    return Atomics.load(this.ring, this.flagsIndex);
  }

  /** Hands the prepared SQEs to the kernel side of the ring; returns how many await submission. */
  publish(): number {
    Atomics.store(this.ring, this.tailIndex, this.tail);
    return (this.tail - Atomics.load(this.ring, this.head)) >>> 0;
  }

  prepNop(userData: number, sqeFlags = 0): boolean {
    return this.claim(IORING_OP_NOP, -1, userData, sqeFlags) >= 0;
  }

  /** Reads `length` bytes at file `offset` into memory at `address` (see IoBuffer). */
  prepRead(
    fd: number,
    address: number,
    length: number,
    offset: number,
    userData: number,
    sqeFlags = 0,
  ): boolean {
    return this.prepReadWrite(IORING_OP_READ, fd, address, length, offset, userData, sqeFlags) >= 0;
  }

  /** Writes `length` bytes from memory at `address` to file `offset`. */
  prepWrite(
    fd: number,
    address: number,
    length: number,
    offset: number,
    userData: number,
    sqeFlags = 0,
  ): boolean {
    return (
      this.prepReadWrite(IORING_OP_WRITE, fd, address, length, offset, userData, sqeFlags) >= 0
    );
  }

  /**
   * READ_FIXED: reads into entry `bufIndex` of the ring's registered buffer table, at `address`
   * within it (a buffer the kernel registered, as ublk's AUTO_BUF_REG does, starts at 0).
   */
  prepReadFixed(
    fd: number,
    address: number,
    length: number,
    offset: number,
    bufIndex: number,
    userData: number,
    sqeFlags = 0,
  ): boolean {
    return this.prepFixed(
      IORING_OP_READ_FIXED,
      fd,
      address,
      length,
      offset,
      bufIndex,
      userData,
      sqeFlags,
    );
  }

  /** WRITE_FIXED: prepReadFixed's other direction. */
  prepWriteFixed(
    fd: number,
    address: number,
    length: number,
    offset: number,
    bufIndex: number,
    userData: number,
    sqeFlags = 0,
  ): boolean {
    return this.prepFixed(
      IORING_OP_WRITE_FIXED,
      fd,
      address,
      length,
      offset,
      bufIndex,
      userData,
      sqeFlags,
    );
  }

  /** send(2) of `length` bytes at `address` on socket `fd`; msgFlags are MSG_* flags. */
  prepSend(
    fd: number,
    address: number,
    length: number,
    msgFlags: number,
    userData: number,
    sqeFlags = 0,
  ): boolean {
    return this.prepSocketIo(IORING_OP_SEND, fd, address, length, msgFlags, userData, sqeFlags);
  }

  /** recv(2) of up to `length` bytes into `address` from socket `fd`. */
  prepRecv(
    fd: number,
    address: number,
    length: number,
    msgFlags: number,
    userData: number,
    sqeFlags = 0,
  ): boolean {
    return this.prepSocketIo(IORING_OP_RECV, fd, address, length, msgFlags, userData, sqeFlags);
  }

  /** fsyncFlags: 0 or IORING_FSYNC_DATASYNC. */
  prepFsync(fd: number, fsyncFlags: number, userData: number, sqeFlags = 0): boolean {
    const sqe = this.claim(IORING_OP_FSYNC, fd, userData, sqeFlags);
    if (sqe < 0) return false;
    this.words[sqe + OP_FLAGS] = fsyncFlags;
    return true;
  }

  /** fallocate(2) with a FALLOC_FL_* mode. */
  prepFallocate(
    fd: number,
    mode: number,
    offset: number,
    length: number,
    userData: number,
    sqeFlags = 0,
  ): boolean {
    const sqe = this.claim(IORING_OP_FALLOCATE, fd, userData, sqeFlags);
    if (sqe < 0) return false;
    // The kernel takes the length from addr and the mode from len.
    writeU64(this.words, sqe + OFF, offset);
    writeU64(this.words, sqe + ADDR, length);
    this.words[sqe + LEN] = mode;
    return true;
  }

  /** One-shot poll; the CQE's res is the ready POLL* mask. */
  prepPollAdd(fd: number, pollEvents: number, userData: number, sqeFlags = 0): boolean {
    const sqe = this.claim(IORING_OP_POLL_ADD, fd, userData, sqeFlags);
    if (sqe < 0) return false;
    this.words[sqe + OP_FLAGS] = pollEvents;
    return true;
  }

  /**
   * A pure timer (a TIMEOUT counting no completions): its CQE comes when the struct
   * __kernel_timespec at `timespecAddress` (relative, read at submission) has passed, with
   * res -ETIME.
   */
  prepTimeout(timespecAddress: number, userData: number, sqeFlags = 0): boolean {
    const sqe = this.claim(IORING_OP_TIMEOUT, -1, userData, sqeFlags);
    if (sqe < 0) return false;
    writeU64(this.words, sqe + ADDR, timespecAddress);
    this.words[sqe + LEN] = 1;
    return true;
  }

  /**
   * A driver command. Returns the zeroed command area of the SQE (16 bytes, 80 on an SQE128
   * ring) for the caller to fill in place before the next submit, or null when the SQ is full.
   * `addr` is the SQE's own addr field, which some drivers read (ublk's AUTO_BUF_REG).
   */
  prepUringCmd(
    fd: number,
    cmdOp: number,
    userData: number,
    addr = 0,
    sqeFlags = 0,
  ): DataView | null {
    const sqe = this.claim(IORING_OP_URING_CMD, fd, userData, sqeFlags);
    if (sqe < 0) return null;
    this.words[sqe + CMD_OP] = cmdOp;
    writeU64(this.words, sqe + ADDR, addr);
    return this.cmdViews[sqe / this.sqeWords];
  }

  private prepReadWrite(
    opcode: number,
    fd: number,
    address: number,
    length: number,
    offset: number,
    userData: number,
    sqeFlags: number,
  ): number {
    const sqe = this.claim(opcode, fd, userData, sqeFlags);
    if (sqe < 0) return -1;
    writeU64(this.words, sqe + OFF, offset);
    writeU64(this.words, sqe + ADDR, address);
    this.words[sqe + LEN] = length;
    return sqe;
  }

  private prepSocketIo(
    opcode: number,
    fd: number,
    address: number,
    length: number,
    msgFlags: number,
    userData: number,
    sqeFlags: number,
  ): boolean {
    const sqe = this.prepReadWrite(opcode, fd, address, length, 0, userData, sqeFlags);
    if (sqe < 0) return false;
    this.words[sqe + OP_FLAGS] = msgFlags;
    return true;
  }

  private prepFixed(
    opcode: number,
    fd: number,
    address: number,
    length: number,
    offset: number,
    bufIndex: number,
    userData: number,
    sqeFlags: number,
  ): boolean {
    const sqe = this.prepReadWrite(opcode, fd, address, length, offset, userData, sqeFlags);
    if (sqe < 0) return false;
    this.halfWords[sqe * 2 + BUF_INDEX] = bufIndex;
    return true;
  }

  /** Zeroes the next free SQE and fills the common fields; returns its word index, or -1. */
  private claim(opcode: number, fd: number, userData: number, sqeFlags: number): number {
    if (this.spaceLeft() === 0) return -1;
    const sqe = (this.tail & this.mask) * this.sqeWords;
    this.tail = (this.tail + 1) >>> 0;
    // A loop, not fill(): TypedArray.prototype.fill is a call into the runtime, this is inlined.
    for (let i = sqe + this.sqeWords - 1; i >= sqe; i--) this.words[i] = 0;
    this.sqeMemory[sqe * 4 + IO_URING_SQE.opcode] = opcode;
    this.sqeMemory[sqe * 4 + IO_URING_SQE.flags] = sqeFlags;
    this.words[sqe + FD] = fd;
    writeU64(this.words, sqe + USER_DATA, userData);
    return sqe;
  }
}
