/**
 * UBLK_F_USER_COPY (6.5+): no buffer is given to the kernel per tag; the daemon copies a request's
 * data itself with pread/pwrite at the request's position on /dev/ublkcN.
 * What it copies through is a bounce pool bounded in bytes, not depth x max IO size.
 */
import { UBLK_QID, UBLK_TAG, UBLKSRV_IO_BUF_OFFSET } from '../ublk-cmd.js';

const TAG_SCALE = 2 ** UBLK_TAG.OFF;
const QID_SCALE = 2 ** UBLK_QID.OFF;

/**
 * The /dev/ublkcN position of byte `byteOffset` of request (qId, tag):
 * UBLKSRV_IO_BUF_OFFSET + (qId << UBLK_QID_OFF) + (tag << UBLK_TAG_OFF) + byteOffset. Arithmetic,
 * not shifts, which would cut it to 32 bits; exact for every qId below 4095 (2^53).
 */
export function userCopyOffset(qId: number, tag: number, byteOffset: number): number {
  return UBLKSRV_IO_BUF_OFFSET + qId * QID_SCALE + tag * TAG_SCALE + byteOffset;
}

/** The unit the bounce pool hands out: small requests take one, a 512 KiB one 32. */
export const BOUNCE_CHUNK = 16 * 1024;
/** Bytes of bounce memory per queue, unless one request needs more (see bouncePoolBytes). */
export const BOUNCE_POOL_BYTES = 4 * 1024 * 1024;

/**
 * A queue's bounce pool size: BOUNCE_POOL_BYTES, at least one request of the largest size, at most
 * what depth requests of the largest size take (a shallow queue needs no more).
 */
export function bouncePoolBytes(depth: number, maxIoBytes: number): number {
  const perRequest = Math.ceil(maxIoBytes / BOUNCE_CHUNK) * BOUNCE_CHUNK;
  return Math.max(perRequest, Math.min(BOUNCE_POOL_BYTES, depth * perRequest));
}

/**
 * Chunks of the bounce pool: first fit over a used map, made once. A request that finds no room
 * waits, in arrival order, for chunks to be freed (the head of the line first, so that a large
 * request is not starved by small ones).
 */
export class BouncePool {
  readonly chunks: number;
  /** Per chunk, 1 while it is handed out. */
  private readonly used: Uint8Array;
  /** No free chunk below this index. */
  private lowestFree = 0;
  /** Tags waiting for room, with the chunk count each needs: a FIFO over a ring of depth slots. */
  private readonly waitTag: Uint16Array;
  private readonly waitChunks: Uint16Array;
  private waitHead = 0;
  private waitCount = 0;

  constructor(poolBytes: number, depth: number) {
    this.chunks = Math.floor(poolBytes / BOUNCE_CHUNK);
    this.used = new Uint8Array(this.chunks);
    this.waitTag = new Uint16Array(depth);
    this.waitChunks = new Uint16Array(depth);
  }

  /** Chunks a request of `bytes` takes (at least one). */
  static chunksFor(bytes: number): number {
    return Math.max(1, Math.ceil(bytes / BOUNCE_CHUNK));
  }

  get waiting(): number {
    return this.waitCount;
  }

  /** The first chunk of `n` free ones in a row, now handed out; -1 when there is no such run. */
  alloc(n: number): number {
    const used = this.used;
    let run = 0;
    for (let i = this.lowestFree; i < this.chunks; i++) {
      if (used[i] !== 0) {
        run = 0;
        continue;
      }
      if (++run === n) {
        const first = i - n + 1;
        used.fill(1, first, i + 1);
        if (first === this.lowestFree) this.lowestFree = i + 1;
        return first;
      }
    }
    return -1;
  }

  free(first: number, n: number): void {
    this.used.fill(0, first, first + n);
    if (first < this.lowestFree) this.lowestFree = first;
  }

  /** Queues a tag that found no room; `n` chunks. */
  wait(tag: number, n: number): void {
    const slot = (this.waitHead + this.waitCount) % this.waitTag.length;
    this.waitTag[slot] = tag;
    this.waitChunks[slot] = n;
    this.waitCount++;
  }

  /**
   * The head waiter's tag, its chunks handed out at `this.grantedChunk`, or -1 when none waits or
   * the head still finds no room.
   */
  grantWaiter(): number {
    if (this.waitCount === 0) return -1;
    const first = this.alloc(this.waitChunks[this.waitHead]);
    if (first < 0) return -1;
    this.grantedChunk = first;
    const tag = this.waitTag[this.waitHead];
    this.waitHead = (this.waitHead + 1) % this.waitTag.length;
    this.waitCount--;
    return tag;
  }

  /** The first chunk of the last grantWaiter's tag. */
  grantedChunk = -1;
}
