import { constants } from 'node:os';
import { errnoError } from '../../errors.js';
import {
  IORING_CQE_F_MORE,
  IORING_URING_CMD_MULTISHOT,
  IOU_PBUF_RING_INC,
  IoBuffer,
  ProvidedBufferRing,
  type Ring,
  type SubmissionQueue,
} from '../../uring/index.js';
import { ELEM_HEADER, UBLK_BATCH_F, UBLK_IO_RES, UBLK_U_IO, writeBatchIo } from '../ublk-cmd.js';
import { encodeUserData, UD_BATCH_COMMAND, UD_BATCH_FETCH } from './user-data.js';

const { ENOBUFS } = constants.errno;

/**
 * Element buffers: PREP_IO_CMDS's, then COMMIT_IO_CMDS's. The kernel reads one while the command
 * is submitted, but it is free again only once its CQE came: the commit of one wake-up is built
 * while the previous one's CQE may not have been drained yet, and a full SQ flushes a commit
 * early (Queue.submit).
 */
export const BATCH_SLOTS = 8;
/**
 * FETCH_IO_CMDS per queue, each over its own buffer group, as kublk: when one ends (its buffer is
 * used up) the kernel delivers through the other while it is re-armed.
 */
const FETCH_COMMANDS = 2;
const TAG_BYTES = 2;
const TWO_POW_32 = 0x1_0000_0000;

/** The element size: the header, plus the tag's buffer address in copy mode. */
export function batchElemBytes(copyMode: boolean): number {
  return ELEM_HEADER.size + (copyMode ? 8 : 0);
}

/** What BatchIo needs of the ring: room for SQEs, submitted without flushing BatchIo itself. */
export interface BatchRing {
  sq: Pick<SubmissionQueue, 'prepUringCmd' | 'prepUringCmdBufferSelect'>;
  makeRoom(): void;
}

/** A fetch command's buffer, where the kernel writes tags, and the buffer ring offering it. */
export interface FetchBuffer {
  bytes: Uint8Array;
  address: number;
  ring: Pick<ProvidedBufferRing, 'push'>;
}

/** The memory of a queue's batch commands. */
export interface BatchMemory {
  /** BATCH_SLOTS element buffers of depth × elemBytes each (8-byte aligned), and their address. */
  elems: { bytes: Uint8Array; address: number };
  /** FETCH_COMMANDS of them; each buffer a multiple of 2 bytes. */
  fetch: FetchBuffer[];
}

export interface BatchConfig {
  queueId: number;
  depth: number;
  charFd: number;
  /**
   * Copy mode: each element carries the tag's buffer (UBLK_BATCH_F_HAS_BUF_ADDR), at `address`
   * plus tag × `bytesPerTag`; the kernel refuses a commit without it.
   */
  copyBuffer?: { address: number; bytesPerTag: number };
  /** AUTO_BUF_REG: each element's buf_index is the tag's index in the ring's buffer table. */
  autoBufReg: boolean;
}

/** Where the requests go: the tag state machine. */
export interface BatchSink {
  /** Descriptor `tag` holds a request. */
  request(tag: number): void;
  /** The kernel ended the fetch commands with ABORT; `held` (1 per tag) marks uncommitted tags. */
  abort(held: Uint8Array): void;
}

/**
 * UBLK_F_BATCH_IO (7.0+) for one queue: PREP_IO_CMDS once with an element per tag, multishot
 * FETCH_IO_CMDS whose CQEs each deliver a list of tags into a provided buffer, and one
 * COMMIT_IO_CMDS per wake-up carrying every result committed since the last (flush, called before
 * each ring enter). The element buffers and tag views are made once: nothing is allocated per
 * request or per batch.
 */
export class BatchIo {
  /** PREP_IO_CMDS and COMMIT_IO_CMDS prepared whose CQE has not been handled. */
  inFlight = 0;
  private readonly elemBytes: number;
  private readonly slotBytes: number;
  private readonly flags: number;
  private readonly halfWords: Uint16Array;
  private readonly results: Int32Array;
  private readonly words: Uint32Array;
  private readonly slotBusy = new Uint8Array(BATCH_SLOTS);
  /** Per slot, the bytes its command must report consumed (PREP_IO_CMDS: 0). */
  private readonly slotExpect = new Int32Array(BATCH_SLOTS);
  private readonly slotIsPrep = new Uint8Array(BATCH_SLOTS);
  /** The slot being filled, or -1, whether it is PREP's, and its elements so far. */
  private filling = -1;
  private fillingPrep = false;
  private count = 0;
  private fetchesToArm = false;
  private readonly fetchTags: Uint16Array[];
  /** Per fetch command, the bytes of its buffer the kernel has used (IOU_PBUF_RING_INC). */
  private readonly fetchUsed: Uint32Array;
  /** Per tag, 1 from its delivery to its commit. */
  private readonly held: Uint8Array;
  private aborted = false;

  constructor(
    private readonly config: BatchConfig,
    private readonly memory: BatchMemory,
    private readonly ring: BatchRing,
    private readonly sink: BatchSink,
  ) {
    this.elemBytes = batchElemBytes(config.copyBuffer !== undefined);
    this.slotBytes = config.depth * this.elemBytes;
    this.flags = config.copyBuffer ? UBLK_BATCH_F.HAS_BUF_ADDR : 0;
    const { bytes } = memory.elems;
    if (bytes.length < BATCH_SLOTS * this.slotBytes) {
      throw new RangeError(`batch element memory of ${bytes.length} bytes is too small`);
    }
    const words = bytes.byteLength >>> 2;
    this.halfWords = new Uint16Array(bytes.buffer, bytes.byteOffset, words * 2);
    this.results = new Int32Array(bytes.buffer, bytes.byteOffset, words);
    this.words = new Uint32Array(bytes.buffer, bytes.byteOffset, words);
    this.fetchTags = memory.fetch.map(
      (f) => new Uint16Array(f.bytes.buffer, f.bytes.byteOffset, f.bytes.length / TAG_BYTES),
    );
    this.fetchUsed = new Uint32Array(memory.fetch.length);
    this.held = new Uint8Array(config.depth);
  }

  /** Tag `tag` joins PREP_IO_CMDS (its FETCH_REQ in per-tag terms); the fetches follow it. */
  prepare(tag: number): void {
    if (this.filling < 0) this.startSlot(true);
    this.writeElem(tag, 0);
    this.fetchesToArm = true;
  }

  /** The request of `tag` is done with `result`: it goes in the next COMMIT_IO_CMDS. */
  commit(tag: number, result: number): void {
    this.held[tag] = 0;
    if (this.filling < 0) this.startSlot(false);
    this.writeElem(tag, result);
  }

  /** Prepares the pending PREP_IO_CMDS or COMMIT_IO_CMDS, and the first fetches after PREP. */
  flush(): void {
    if (this.filling >= 0) {
      const slot = this.filling;
      const count = this.count;
      const op = this.fillingPrep ? UBLK_U_IO.PREP_IO_CMDS : UBLK_U_IO.COMMIT_IO_CMDS;
      const address = this.memory.elems.address + slot * this.slotBytes;
      const length = count * this.elemBytes;
      const { sq } = this.ring;
      const userData = encodeUserData(UD_BATCH_COMMAND, slot);
      let cmd = sq.prepUringCmd(this.config.charFd, op, userData, address, 0, length);
      while (!cmd) {
        this.ring.makeRoom();
        cmd = sq.prepUringCmd(this.config.charFd, op, userData, address, 0, length);
      }
      writeBatchIo(cmd, 0, this.config.queueId, this.flags, count, this.elemBytes);
      this.slotExpect[slot] = this.fillingPrep ? 0 : length;
      this.slotIsPrep[slot] = this.fillingPrep ? 1 : 0;
      this.inFlight++;
      this.filling = -1;
      this.count = 0;
    }
    if (this.fetchesToArm) {
      this.fetchesToArm = false;
      for (let i = 0; i < this.memory.fetch.length; i++) this.armFetch(i);
    }
  }

  /** The CQE of the PREP_IO_CMDS or COMMIT_IO_CMDS of element buffer `slot` (UD_BATCH_COMMAND). */
  complete(slot: number, res: number): void {
    this.inFlight--;
    this.slotBusy[slot] = 0;
    const expected = this.slotExpect[slot];
    if (res === expected) return;
    const what = this.slotIsPrep[slot] ? 'ublk PREP_IO_CMDS' : 'ublk COMMIT_IO_CMDS';
    // A refused element is our bug or the kernel's: the tags after it stay uncommitted for good.
    if (res < 0) throw errnoError(what, -res, { queueId: this.config.queueId });
    throw new Error(
      `${what} (queue ${this.config.queueId}) took ${res} of ${expected} bytes: element ${res / this.elemBytes} refused`,
    );
  }

  /** The fetch command `i`'s CQE (UD_BATCH_FETCH): `res` bytes of tags more in its buffer, or its end. */
  fetched(i: number, res: number, cqeFlags: number): void {
    if (res > 0) {
      const tags = this.fetchTags[i];
      const first = this.fetchUsed[i] / TAG_BYTES;
      const end = first + res / TAG_BYTES;
      this.fetchUsed[i] += res;
      for (let k = first; k < end; k++) {
        const tag = tags[k];
        if (tag >= this.config.depth || this.held[tag] === 1) {
          throw new Error(
            `ublk FETCH_IO_CMDS (queue ${this.config.queueId}) delivered tag ${tag}, ${tag >= this.config.depth ? 'beyond the queue depth' : 'not committed since its last delivery'}`,
          );
        }
        this.held[tag] = 1;
        this.sink.request(tag);
      }
    }
    if ((cqeFlags & IORING_CQE_F_MORE) !== 0) return;
    if (res === UBLK_IO_RES.ABORT) return this.abort();
    // -ENOBUFS: its buffer is used up (the tags not delivered wait in the kernel): arm it again.
    if (res < 0 && res !== -ENOBUFS) {
      throw errnoError('ublk FETCH_IO_CMDS', -res, { queueId: this.config.queueId });
    }
    if (!this.aborted) this.armFetch(i);
  }

  /**
   * The device stops or quiesces: every tag not held is out of service; the other fetch command,
   * if still armed, is cancelled when the ring closes.
   */
  private abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.sink.abort(this.held);
  }

  private armFetch(i: number): void {
    const fetch = this.memory.fetch[i];
    this.fetchUsed[i] = 0;
    fetch.ring.push(fetch.address, fetch.bytes.length, 0);
    const { sq } = this.ring;
    const userData = encodeUserData(UD_BATCH_FETCH, i);
    const op = UBLK_U_IO.FETCH_IO_CMDS;
    const cmdFlags = IORING_URING_CMD_MULTISHOT;
    let cmd = sq.prepUringCmdBufferSelect(this.config.charFd, op, userData, i, cmdFlags);
    while (!cmd) {
      this.ring.makeRoom();
      cmd = sq.prepUringCmdBufferSelect(this.config.charFd, op, userData, i, cmdFlags);
    }
    const nrElem = fetch.bytes.length / TAG_BYTES;
    writeBatchIo(cmd, 0, this.config.queueId, 0, nrElem, TAG_BYTES);
  }

  private startSlot(prep: boolean): void {
    let slot = 0;
    while (slot < BATCH_SLOTS && this.slotBusy[slot] === 1) slot++;
    if (slot === BATCH_SLOTS) {
      throw new Error(
        `ublk queue ${this.config.queueId}: all ${BATCH_SLOTS} batch element buffers await their CQE`,
      );
    }
    this.slotBusy[slot] = 1;
    this.filling = slot;
    this.fillingPrep = prep;
    this.count = 0;
  }

  private writeElem(tag: number, result: number): void {
    const byte = this.filling * this.slotBytes + this.count * this.elemBytes;
    this.count++;
    const half = byte >>> 1;
    this.halfWords[half] = tag;
    this.halfWords[half + 1] = this.config.autoBufReg ? tag : 0;
    this.results[(byte >>> 2) + 1] = result;
    const copy = this.config.copyBuffer;
    if (copy) {
      const address = copy.address + tag * copy.bytesPerTag;
      const word = (byte + ELEM_HEADER.size) >>> 2;
      this.words[word] = address >>> 0;
      this.words[word + 1] = Math.floor(address / TWO_POW_32);
    }
  }
}

/**
 * A queue's batch memory, in one page-aligned mapping: the buffer rings (one entry each, consumed
 * incrementally, as kublk), the fetch buffers (room for every tag) and the element buffers. The
 * rings are registered on `ring` as groups 0 and 1; `free` after the ring is closed.
 */
export function openBatchMemory(
  ring: Pick<Ring, 'registerBufRing'>,
  depth: number,
  elemBytes: number,
  page: number,
): { memory: BatchMemory; free(): void } {
  const fetchBytes = roundUp(depth * TAG_BYTES, page);
  const elemsOffset = FETCH_COMMANDS * (page + fetchBytes);
  const elemsBytes = roundUp(BATCH_SLOTS * depth * elemBytes, page);
  const buffer = IoBuffer.allocate(elemsOffset + elemsBytes);
  try {
    const fetch: FetchBuffer[] = [];
    for (let i = 0; i < FETCH_COMMANDS; i++) {
      const ringOffset = i * page;
      const res = ring.registerBufRing(buffer.address + ringOffset, 1, i, IOU_PBUF_RING_INC);
      if (res < 0) throw errnoError('io_uring_register(PBUF_RING)', -res);
      const offset = FETCH_COMMANDS * page + i * fetchBytes;
      fetch.push({
        bytes: buffer.bytes.subarray(offset, offset + fetchBytes),
        address: buffer.address + offset,
        ring: new ProvidedBufferRing(buffer.bytes.subarray(ringOffset, ringOffset + page), 1),
      });
    }
    const elems = {
      bytes: buffer.bytes.subarray(elemsOffset),
      address: buffer.address + elemsOffset,
    };
    return { memory: { elems, fetch }, free: () => buffer.free() };
  } catch (err) {
    buffer.free();
    throw err;
  }
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}
