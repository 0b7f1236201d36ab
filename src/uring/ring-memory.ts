import { mmap, munmap } from '../sys.js';
import {
  IORING_FEAT_SINGLE_MMAP,
  IORING_OFF_CQ_RING,
  IORING_OFF_SQ_RING,
  IORING_OFF_SQES,
} from './abi.js';
import type { RingParams } from './setup.js';

/** The shared memory of a ring. The two ring buffers are one and the same with SINGLE_MMAP. */
export interface RingMemory {
  readonly sqRing: ArrayBuffer;
  readonly cqRing: ArrayBuffer;
  readonly sqes: ArrayBuffer;
  /** Unmaps (and so detaches) every buffer above. */
  unmap(): void;
}

export function mapRing(
  fd: number,
  params: RingParams,
  sqeSize: number,
  cqeSize: number,
): RingMemory {
  const sqRingSize = params.sqOff.array + params.sqEntries * Uint32Array.BYTES_PER_ELEMENT;
  const cqRingSize = params.cqOff.cqes + params.cqEntries * cqeSize;
  const mapped: ArrayBuffer[] = [];
  const map = (offset: number, length: number): ArrayBuffer => {
    const { buffer } = mmap(fd, offset, length, true);
    mapped.push(buffer);
    return buffer;
  };
  const unmap = (): void => mapped.forEach((buffer) => munmap(buffer));
  try {
    let sqRing: ArrayBuffer;
    let cqRing: ArrayBuffer;
    if (params.features & IORING_FEAT_SINGLE_MMAP) {
      sqRing = cqRing = map(IORING_OFF_SQ_RING, Math.max(sqRingSize, cqRingSize));
    } else {
      sqRing = map(IORING_OFF_SQ_RING, sqRingSize);
      cqRing = map(IORING_OFF_CQ_RING, cqRingSize);
    }
    const sqes = map(IORING_OFF_SQES, params.sqEntries * sqeSize);
    return { sqRing, cqRing, sqes, unmap };
  } catch (error) {
    unmap();
    throw error;
  }
}
