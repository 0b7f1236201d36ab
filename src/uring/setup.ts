import { ioUringSetup } from '../sys.js';
import {
  IO_CQRING_OFFSETS,
  IO_SQRING_OFFSETS,
  IO_URING_PARAMS,
  IORING_SETUP_CQSIZE,
} from './abi.js';

type Offsets<T> = { readonly [K in keyof T]: number };

/** What io_uring_setup(2) reported back about a new ring. */
export interface RingParams {
  readonly sqEntries: number;
  readonly cqEntries: number;
  readonly features: number;
  /** Byte offsets of the SQ ring fields inside the SQ ring mapping. */
  readonly sqOff: Offsets<typeof IO_SQRING_OFFSETS>;
  /** Byte offsets of the CQ ring fields inside the CQ ring mapping. */
  readonly cqOff: Offsets<typeof IO_CQRING_OFFSETS>;
}

/** Creates the ring; a CQ size, when given, is passed with IORING_SETUP_CQSIZE. */
export function setupRing(
  entries: number,
  flags: number,
  cqEntries: number | undefined,
): { fd: number; params: RingParams } {
  const bytes = new Uint8Array(IO_URING_PARAMS.size);
  const words = new Uint32Array(bytes.buffer);
  const word = (byteOffset: number): number => words[byteOffset / 4];
  words[IO_URING_PARAMS.flags / 4] = flags | (cqEntries === undefined ? 0 : IORING_SETUP_CQSIZE);
  words[IO_URING_PARAMS.cqEntries / 4] = cqEntries ?? 0;
  const fd = ioUringSetup(entries, bytes);
  const sq = IO_URING_PARAMS.sqOff;
  const cq = IO_URING_PARAMS.cqOff;
  const params: RingParams = {
    sqEntries: word(IO_URING_PARAMS.sqEntries),
    cqEntries: word(IO_URING_PARAMS.cqEntries),
    features: word(IO_URING_PARAMS.features),
    sqOff: {
      head: word(sq + IO_SQRING_OFFSETS.head),
      tail: word(sq + IO_SQRING_OFFSETS.tail),
      ringMask: word(sq + IO_SQRING_OFFSETS.ringMask),
      flags: word(sq + IO_SQRING_OFFSETS.flags),
      array: word(sq + IO_SQRING_OFFSETS.array),
    },
    cqOff: {
      head: word(cq + IO_CQRING_OFFSETS.head),
      tail: word(cq + IO_CQRING_OFFSETS.tail),
      ringMask: word(cq + IO_CQRING_OFFSETS.ringMask),
      cqes: word(cq + IO_CQRING_OFFSETS.cqes),
    },
  };
  return { fd, params };
}
