import { constants as osConstants } from 'node:os';
import { constants as sysConstants, mmap, munmap } from '../sys.js';
import type { IoResult, QueueHandlers, QueueIo } from '../targets/target.js';
import { IORING_FSYNC_DATASYNC, IoBuffer, Ring } from '../uring/index.js';
import {
  IoDescTable,
  UBLK_IO,
  UBLK_IO_F,
  UBLK_IO_OP,
  UBLK_IO_RES,
  UBLK_U_IO,
  ioDescMmapLength,
  ioDescMmapOffset,
  writeIoCmd,
} from './abi.js';

export interface QueueConfig {
  queueId: number;
  depth: number;
  /** Size of each tag's buffer: the device's max_io_buf_bytes. */
  bufferBytes: number;
  /** /dev/ublkcN, opened by the daemon's main thread (fds are per process). */
  charFd: number;
  /** The device was granted UBLK_F_CMD_IOCTL_ENCODE: IO commands use encoded opcodes. */
  encodedOpcodes: boolean;
}

const EIO = osConstants.errno.EIO;
const EOPNOTSUPP = osConstants.errno.EOPNOTSUPP;
const SECTOR = 512;
/** user_data below this is a tag's ublk command; from it up, a target IO's slot. */
const TARGET_IO_BASE = 1 << 16;

type Settle = (res: number) => void;

/**
 * One hardware queue's state machine, run by the thread that owns the queue (the kernel accepts a
 * queue's commands only from the task that fetched its tags).
 *
 * Each tag cycles FETCH_REQ -> request in the descriptor -> target handler -> COMMIT_AND_FETCH_REQ
 * with the result, until the kernel answers ABORT when the device stops. Every CQE of a wake-up is
 * handled, and every commit and target IO prepared meanwhile goes to the kernel in one
 * io_uring_enter.
 */
export class Queue {
  readonly io: QueueIo;
  /** Resolves once every tag was aborted and the queue's memory and ring are released. */
  readonly done: Promise<void>;

  private readonly ring: Ring;
  private readonly descs: IoDescTable;
  private readonly descMapping: ArrayBuffer;
  private readonly buffers: IoBuffer;
  private readonly views: Uint8Array[];
  private handlers!: QueueHandlers;
  private finishedTags = 0;
  private readonly targetIo: (Settle | undefined)[] = [];
  private readonly freeSlots: number[] = [];
  private flushScheduled = false;
  private resolveDone!: () => void;
  private readonly ops: { fetch: number; commit: number; getData: number };

  constructor(private readonly config: QueueConfig) {
    const { depth, bufferBytes, queueId, charFd } = config;
    this.ops = config.encodedOpcodes
      ? {
          fetch: UBLK_U_IO.FETCH_REQ,
          commit: UBLK_U_IO.COMMIT_AND_FETCH_REQ,
          getData: UBLK_U_IO.NEED_GET_DATA,
        }
      : {
          fetch: UBLK_IO.FETCH_REQ,
          commit: UBLK_IO.COMMIT_AND_FETCH_REQ,
          getData: UBLK_IO.NEED_GET_DATA,
        };
    // Room for every tag's command plus a few target IOs per tag without a full SQ.
    this.ring = Ring.create({ entries: Math.min(depth * 4, 4096) });
    const page = sysConstants.PAGE_SIZE;
    this.descMapping = mmap(
      charFd,
      ioDescMmapOffset(queueId, page),
      ioDescMmapLength(depth, page),
      false,
    ).buffer;
    this.descs = new IoDescTable(new Uint8Array(this.descMapping));
    this.buffers = IoBuffer.allocate(depth * bufferBytes);
    this.views = Array.from({ length: depth }, (_, tag) =>
      this.buffers.bytes.subarray(tag * bufferBytes, (tag + 1) * bufferBytes),
    );
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.io = {
      read: (fd, buf, offset) =>
        this.submitTargetIo((ud) =>
          this.ring.sq.prepRead(fd, this.addressOf(buf), buf.length, offset, ud),
        ),
      write: (fd, buf, offset) =>
        this.submitTargetIo((ud) =>
          this.ring.sq.prepWrite(fd, this.addressOf(buf), buf.length, offset, ud),
        ),
      fsync: (fd, opts) =>
        this.submitTargetIo((ud) =>
          this.ring.sq.prepFsync(fd, opts?.dataOnly ? IORING_FSYNC_DATASYNC : 0, ud),
        ),
      fallocate: (fd, mode, offset, length) =>
        this.submitTargetIo((ud) => this.ring.sq.prepFallocate(fd, mode, offset, length, ud)),
    };
  }

  /** Fetches every tag. The kernel's START_DEV (or END_USER_RECOVERY) waits for exactly this. */
  start(handlers: QueueHandlers): void {
    this.handlers = handlers;
    this.ring.startEventLoop(
      (userData, res) => this.onCqe(userData, res),
      () => this.flush(),
    );
    for (let tag = 0; tag < this.config.depth; tag++) this.sendIoCmd(this.ops.fetch, tag, -1);
    this.flush();
  }

  private onCqe(userData: number, res: number): void {
    if (userData >= TARGET_IO_BASE) {
      const slot = userData - TARGET_IO_BASE;
      const settle = this.targetIo[slot]!;
      this.targetIo[slot] = undefined;
      this.freeSlots.push(slot);
      settle(res);
    } else if (res === UBLK_IO_RES.OK) {
      this.handleRequest(userData);
    } else if (res === UBLK_IO_RES.NEED_GET_DATA) {
      this.sendIoCmd(this.ops.getData, userData, 0);
    } else {
      // ABORT: the device is stopping, and this tag is done.
      if (res !== UBLK_IO_RES.ABORT) {
        // A refused command leaves the tag out of service for good (and a refused FETCH would
        // keep START_DEV or END_USER_RECOVERY waiting forever): fail the queue thread, which ends
        // the daemon and lets the kernel's monitor take the device over (recovery, or DEAD).
        throw new Error(
          `ublk queue ${this.config.queueId} tag ${userData}: the kernel refused a command: ${res}`,
        );
      }
      this.finishedTags++;
    }
    if (this.finishedTags === this.config.depth) void this.shutdown();
  }

  private handleRequest(tag: number): void {
    const op = this.descs.op(tag);
    const length = this.descs.nrSectors(tag) * SECTOR;
    const offset = this.descs.startSector(tag) * SECTOR;
    let result: IoResult | Promise<IoResult>;
    try {
      result = this.dispatch(tag, op, offset, length);
    } catch (err) {
      this.commit(tag, errnoResult(err));
      return;
    }
    if (result instanceof Promise) {
      result.then(
        (value) => this.commit(tag, checkedResult(op, length, value)),
        (err: unknown) => this.commit(tag, errnoResult(err)),
      );
    } else {
      this.commit(tag, checkedResult(op, length, result));
    }
  }

  private dispatch(
    tag: number,
    op: number,
    offset: number,
    length: number,
  ): IoResult | Promise<IoResult> {
    const h = this.handlers;
    switch (op) {
      case UBLK_IO_OP.READ:
        return h.read(this.view(tag, length), offset);
      case UBLK_IO_OP.WRITE:
        return h.write(this.view(tag, length), offset, {
          fua: (this.descs.opFlags(tag) & UBLK_IO_F.FUA) !== 0,
        });
      case UBLK_IO_OP.FLUSH:
        return h.flush ? h.flush() : -EOPNOTSUPP;
      case UBLK_IO_OP.DISCARD:
        return h.discard ? h.discard(offset, length) : -EOPNOTSUPP;
      case UBLK_IO_OP.WRITE_ZEROES:
        return h.writeZeroes
          ? h.writeZeroes(offset, length, {
              noUnmap: (this.descs.opFlags(tag) & UBLK_IO_F.NOUNMAP) !== 0,
            })
          : -EOPNOTSUPP;
      default:
        return -EOPNOTSUPP;
    }
  }

  /** The tag's buffer cut to the request, reusing the previous view when the length repeats. */
  private view(tag: number, length: number): Uint8Array {
    let view = this.views[tag];
    if (view.length !== length) {
      const start = tag * this.config.bufferBytes;
      view = this.buffers.bytes.subarray(start, start + length);
      this.views[tag] = view;
    }
    return view;
  }

  /** Commits made while handling a batch go out with it (afterDrain); later ones are batched. */
  private commit(tag: number, result: number): void {
    this.sendIoCmd(this.ops.commit, tag, result);
    this.scheduleFlush();
  }

  private sendIoCmd(cmdOp: number, tag: number, result: number): void {
    let cmd = this.ring.sq.prepUringCmd(this.config.charFd, cmdOp, tag);
    if (!cmd) {
      this.flush();
      cmd = this.ring.sq.prepUringCmd(this.config.charFd, cmdOp, tag)!;
    }
    const address = this.buffers.address + tag * this.config.bufferBytes;
    writeIoCmd(cmd, 0, this.config.queueId, tag, result, address);
  }

  private submitTargetIo(prep: (userData: number) => boolean): Promise<number> {
    const slot = this.freeSlots.pop() ?? this.targetIo.length;
    return new Promise<number>((resolve) => {
      if (!prep(TARGET_IO_BASE + slot)) {
        this.flush();
        if (!prep(TARGET_IO_BASE + slot)) throw new Error('io_uring submission queue full');
      }
      this.targetIo[slot] = resolve;
      this.scheduleFlush();
    });
  }

  private addressOf(buf: Uint8Array): number {
    if (buf.buffer !== this.buffers.bytes.buffer) {
      throw new TypeError('target IO must use the request buffer or a slice of it');
    }
    return this.buffers.address + buf.byteOffset;
  }

  /**
   * Work prepared outside a drain (by async handlers settling, or their ring IO) is submitted from a
   * microtask, so that every completion of the same promise wave shares one io_uring_enter.
   * Inside a drain, the flush after it covers everything, and this one finds nothing to do.
   */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    const res = this.ring.submit();
    if (res < 0) throw new Error(`io_uring_enter failed: ${res}`);
  }

  private async shutdown(): Promise<void> {
    if (this.finishedTags !== this.config.depth || this.targetIo.some((s) => s)) return;
    this.finishedTags = -1; // once
    try {
      await this.handlers.close?.();
    } finally {
      this.ring.close();
      munmap(this.descMapping);
      this.buffers.free();
      this.resolveDone();
    }
  }
}

/** A handler's value as the kernel wants it: bytes for READ/WRITE, 0 for the others. */
function checkedResult(op: number, length: number, value: IoResult): number {
  if (value === undefined) return op === UBLK_IO_OP.READ || op === UBLK_IO_OP.WRITE ? length : 0;
  if (!Number.isInteger(value) || value > length) return -EIO;
  if (value < 0) return value;
  return op === UBLK_IO_OP.READ || op === UBLK_IO_OP.WRITE ? value : 0;
}

/** A thrown error's errno (positive as in our errors, negative as in Node's), else EIO. */
function errnoResult(err: unknown): number {
  const errno = (err as { errno?: unknown } | null)?.errno;
  return typeof errno === 'number' && errno !== 0 ? -Math.abs(errno) : -EIO;
}
