/**
 * The socket part of a queue's QueueIo on a real io_uring in event-loop mode, for running a
 * target's ring-IO client (the nbd target's) without ublk.
 */
import { IoBuffer, MSG_NOSIGNAL, MSG_WAITALL, Ring } from '../../../src/uring/index.js';
import type { QueueIo, RequestData } from '../../../src/ublk/target/contract.js';

export class RingSocketIo {
  readonly io: QueueIo;
  private readonly ring = Ring.create({ entries: 256 });
  private readonly settle = new Map<number, (res: number) => void>();
  private readonly memory = new Map<ArrayBufferLike, IoBuffer>();
  /** Stand-ins for lent request pages, by index: plain ring memory the stand-in reads and writes. */
  private readonly lent: IoBuffer[] = [];
  private next = 1;

  constructor() {
    this.ring.startEventLoop((userData, res) => {
      const done = this.settle.get(userData)!;
      this.settle.delete(userData);
      done(res);
    });
    const unsupported = () => {
      throw new Error('not in this stand-in');
    };
    this.io = {
      read: unsupported,
      write: unsupported,
      readFully: unsupported,
      writeFully: unsupported,
      fsync: unsupported,
      fallocate: unsupported,
      send: (fd, buf, waitAll) =>
        this.op((ud) =>
          this.ring.sq.prepSend(
            fd,
            this.address(buf),
            buf.length,
            waitAll ? MSG_NOSIGNAL | MSG_WAITALL : MSG_NOSIGNAL,
            ud,
          ),
        ),
      recv: (fd, buf, waitAll) =>
        this.op((ud) =>
          this.ring.sq.prepRecv(fd, this.address(buf), buf.length, waitAll ? MSG_WAITALL : 0, ud),
        ),
      // Plain READ/WRITE at offset 0 into the stand-in's pages, as the queue's fixed forms do.
      sendData: (fd, data, start, length) =>
        this.op((ud) =>
          this.ring.sq.prepWrite(fd, this.lentAddress(data, start, length), length, 0, ud),
        ),
      recvData: (fd, data, start, length) =>
        this.op((ud) =>
          this.ring.sq.prepRead(fd, this.lentAddress(data, start, length), length, 0, ud),
        ),
      allocate: (length) => {
        const m = IoBuffer.allocate(length);
        this.memory.set(m.bytes.buffer, m);
        return m.bytes;
      },
    };
  }

  /** Ring memory for request buffers (as the queue's IO buffer is). */
  buffer(length: number): Uint8Array {
    return this.io.allocate(length);
  }

  /** A request's pages as zero copy lends them, and a view of them for checking. */
  pages(length: number): { data: RequestData; bytes: Uint8Array } {
    const m = IoBuffer.allocate(length);
    this.lent.push(m);
    return { data: { index: this.lent.length - 1, length }, bytes: m.bytes };
  }

  close(): void {
    this.ring.stopEventLoop();
    this.ring.close();
    for (const m of [...this.memory.values(), ...this.lent]) m.free();
  }

  private lentAddress(data: RequestData, start: number, length: number): number {
    if (start + length > data.length) throw new Error('outside the request');
    return this.lent[data.index].address + start;
  }

  private op(prep: (userData: number) => boolean): Promise<number> {
    const ud = this.next++;
    const promise = new Promise<number>((resolve) => this.settle.set(ud, resolve));
    if (!prep(ud)) throw new Error('SQ full');
    this.ring.submit();
    return promise;
  }

  private address(buf: Uint8Array): number {
    const m = this.memory.get(buf.buffer);
    if (!m) throw new Error('not ring memory');
    return m.address + buf.byteOffset;
  }
}
