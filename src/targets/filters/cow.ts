import {
  closeSync,
  constants as fsConstants,
  fstatSync,
  ftruncateSync,
  openSync,
  write,
} from 'node:fs';
import { promisify } from 'node:util';
import { constants as osConstants } from 'node:os';
import { checkResult, errnoError, isErrnoError, UserError } from '../../errors.js';
import { constants as sysConstants, lseek } from '../../sys.js';
import { defineFilter } from '../../ublk/target/filter.js';
import { ROUTE_BELOW, ROUTE_HANDLERS, routeToFile } from '../../ublk/queue/request-hooks.js';

/**
 * nbdkit's cow filter, with an overlay that outlives the daemon: writes go to the sparse file
 * --cow_file, whole 4 KiB blocks at a time, and reads come from it where a block was written,
 * else from the layer below, which never sees a write. Which blocks the overlay holds is the
 * file's own allocation (SEEK_DATA/SEEK_HOLE), read when the device starts (so `ublk recover`
 * and a later `ublk add` over the same overlay see the same disk) and kept in a shared bitmap
 * while it runs: no second file to keep in step. Hence the device's logical block size is 4 KiB,
 * every request covers whole blocks, and the overlay's file system must allocate in blocks of at
 * most 4 KiB (ext4, xfs, tmpfs without huge pages).
 *
 * DISCARD and WRITE_ZEROES write zeros into the overlay: a hole there would show the base again.
 * Over a forwarding layer most requests stay ring IO (its hook's route); zero copy is off, since
 * a read that mixes overlay and base blocks is assembled in the request's buffer.
 * An existing overlay is used as it is; delete it to start over.
 */
export const COW_BLOCK = 4096;
const { EIO, ENXIO } = osConstants.errno;

/** Blocks the overlay holds, one bit each, shared by every queue. */
export class CowMap {
  readonly bits: Int32Array;
  constructor(readonly buffer: SharedArrayBuffer) {
    this.bits = new Int32Array(buffer);
  }

  static create(blocks: number): CowMap {
    return new CowMap(new SharedArrayBuffer(Math.ceil(blocks / 32) * 4));
  }

  has(block: number): boolean {
    return ((Atomics.load(this.bits, block >>> 5) >>> (block & 31)) & 1) === 1;
  }

  /** Marks the blocks of bytes [offset, offset + length). */
  mark(offset: number, length: number): void {
    const end = (offset + length) / COW_BLOCK;
    for (let block = offset / COW_BLOCK; block < end; block++) {
      Atomics.or(this.bits, block >>> 5, 1 << (block & 31));
    }
  }

  /** 1 if the overlay holds every block of [offset, offset + length), 0 if none, else -1. */
  uniform(offset: number, length: number): number {
    const first = offset / COW_BLOCK;
    const held = this.has(first);
    for (let block = first + 1; block < (offset + length) / COW_BLOCK; block++) {
      if (this.has(block) !== held) return -1;
    }
    return held ? 1 : 0;
  }

  /** Bytes [offset, offset + length) cut where they switch between overlay and base. */
  runs(offset: number, length: number): { offset: number; length: number; top: boolean }[] {
    const out: { offset: number; length: number; top: boolean }[] = [];
    for (let at = offset; at < offset + length; at += COW_BLOCK) {
      const top = this.has(at / COW_BLOCK);
      const last = out[out.length - 1];
      if (last && last.top === top) last.length += COW_BLOCK;
      else out.push({ offset: at, length: COW_BLOCK, top });
    }
    return out;
  }
}

/** The overlay's data extents, as [start, end) byte pairs. */
function dataExtents(fd: number, size: number): [number, number][] {
  const { SEEK_DATA, SEEK_HOLE } = sysConstants;
  const extents: [number, number][] = [];
  for (let at = 0; at < size;) {
    const data = lseek(fd, at, SEEK_DATA);
    if (data === -ENXIO) break;
    checkResult(data, 'lseek(SEEK_DATA)');
    const hole = checkResult(lseek(fd, data, SEEK_HOLE), 'lseek(SEEK_HOLE)');
    extents.push([data, Math.min(hole, size)]);
    at = hole;
  }
  return extents;
}

export function mapOf(fd: number, size: number): CowMap {
  const map = CowMap.create(size / COW_BLOCK);
  for (const [start, end] of dataExtents(fd, size)) {
    const first = Math.floor(start / COW_BLOCK) * COW_BLOCK;
    map.mark(first, Math.ceil(end / COW_BLOCK) * COW_BLOCK - first);
  }
  return map;
}

interface CowShared {
  fd: number;
  map: SharedArrayBuffer;
}

const writeAt = promisify(write);
const ZEROS = new Uint8Array(1 << 20);

export default defineFilter({
  name: 'cow',
  options: {
    cow_file: {
      type: 'string',
      path: true,
      description: 'the overlay that takes the writes, a sparse file; made when missing (required)',
    },
  },
  async setup(next, args) {
    const path = args.cow_file;
    if (!path) throw new UserError('cow: no overlay file: use --cow_file FILE');
    const below = await next();
    const { size } = below;
    if (size % COW_BLOCK !== 0) {
      throw new UserError(`cow: the device's size ${size} is not a multiple of ${COW_BLOCK} bytes`);
    }
    let fd: number;
    try {
      fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
    } catch (err) {
      throw new UserError(`cow: cannot open ${path}: ${(err as Error).message}`);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new UserError(`cow: ${path} is not a regular file`);
      if (st.size === 0) ftruncateSync(fd, size);
      else if (st.size !== size) {
        throw new UserError(
          `cow: ${path} has ${st.size} bytes, the device ${size}: it is the overlay of another disk (delete it to start over)`,
        );
      }
      if (st.blksize > COW_BLOCK) {
        throw new UserError(
          `cow: ${path}'s file system allocates ${st.blksize}-byte blocks, more than the overlay's ${COW_BLOCK}: put it elsewhere`,
        );
      }
      const map = mapOf(fd, size);
      const caps = below.capabilities ?? {};
      const logical = Math.max(caps.logicalBlockSize ?? 512, COW_BLOCK);
      return {
        capabilities: {
          ...caps,
          logicalBlockSize: logical,
          physicalBlockSize: Math.max(caps.physicalBlockSize ?? logical, logical),
          readOnly: false,
          volatileCache: true,
          fua: true,
          discard: { granularity: COW_BLOCK },
          writeZeroes: true,
        },
        shared: { fd, map: map.buffer } satisfies CowShared,
        info: { cow_file: path },
        close: () => closeSync(fd),
      };
    } catch (err) {
      closeSync(fd);
      if (isErrnoError(err)) throw new UserError(`cow: ${path}: ${err.message}`);
      throw err;
    }
  },
  queue(next, { fd, map: buffer }: CowShared, { io }) {
    const map = new CowMap(buffer);
    const overlay = routeToFile(fd);
    const sync = async () => {
      await io.fsync(fd, { dataOnly: true });
    };
    // No request buffer to hand the ring here: zeros go through libuv's thread pool.
    const zero = async (offset: number, length: number) => {
      for (let done = 0; done < length;) {
        const chunk = Math.min(ZEROS.length, length - done);
        const n = (await writeAt(fd, ZEROS, 0, chunk, offset + done)).bytesWritten;
        if (n === 0) throw errnoError('write', EIO);
        done += n;
      }
      map.mark(offset, length);
    };
    return {
      // Over a forward (loop, mem), reads of blocks all in the overlay or all in the base and
      // every write and flush stay ring IO with no promise (the overlay is laid out as the
      // device); mixed reads, discards and write-zeroes come to the handlers below.
      hook: {
        route(kind, offset, length) {
          if (kind === 'read') {
            const held = map.uniform(offset, length);
            return held === 1 ? overlay : held === 0 ? ROUTE_BELOW : ROUTE_HANDLERS;
          }
          return kind === 'write' || kind === 'flush' ? overlay : ROUTE_HANDLERS;
        },
        after(kind, offset, length, result) {
          if (kind === 'write' && result >= 0) map.mark(offset, length);
        },
      },
      async read(buf, offset) {
        for (const run of map.runs(offset, buf.length)) {
          const part = buf.subarray(run.offset - offset, run.offset - offset + run.length);
          if (run.top) part.fill(0, await io.readFully(fd, part, run.offset));
          else await next.read(part, run.offset);
        }
      },
      async write(buf, offset, { fua }) {
        await io.writeFully(fd, buf, offset);
        map.mark(offset, buf.length);
        if (fua) await sync();
      },
      flush: sync,
      discard: zero,
      writeZeroes: (offset, length) => zero(offset, length),
    };
  },
});
