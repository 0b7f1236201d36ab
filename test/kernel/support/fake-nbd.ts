/**
 * An NBD server in the test process (node:net), memory-backed, that can corrupt one field of one
 * reply on request: what the fuzzing tests feed the client. It speaks the fixed newstyle
 * handshake (NBD_OPT_STRUCTURED_REPLY, NBD_OPT_GO with NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE)
 * and answers READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const SIMPLE = 0x67446698;
const STRUCTURED = 0x668e33ef;
const DONE = 1;

/** What the next READ reply gets wrong. */
export type Corruption =
  | 'simple-magic'
  | 'simple-handle'
  | 'structured-magic'
  | 'structured-handle'
  | 'chunk-type'
  | 'data-offset-before'
  | 'data-offset-after'
  | 'data-length-oversized'
  | 'hole-outside'
  | 'overlap'
  | 'done-early'
  | 'error-zero'
  | 'error-length'
  | 'error-offset-outside'
  | 'none-with-payload'
  | 'simple-data-in-structured'
  | 'close-mid-data';

export const STRUCTURED_CORRUPTIONS: Corruption[] = [
  'structured-magic',
  'structured-handle',
  'chunk-type',
  'data-offset-before',
  'data-offset-after',
  'data-length-oversized',
  'hole-outside',
  'overlap',
  'done-early',
  'error-zero',
  'error-length',
  'error-offset-outside',
  'none-with-payload',
  'simple-data-in-structured',
  'close-mid-data',
];
export const SIMPLE_CORRUPTIONS: Corruption[] = ['simple-magic', 'simple-handle', 'close-mid-data'];

export interface FakeServerOptions {
  size: number;
  /** Agree to structured replies (and use them for READ). */
  structured: boolean;
  /** Transmission flags; by default HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES. */
  flags?: number;
  /** The export's memory (the worker's SharedArrayBuffer); by default one of its own. */
  memory?: SharedArrayBuffer;
  /** Called after each completed handshake and each corruption sent. */
  onChange?(): void;
}

/** The default fill: byte i of the export is a function of i, so any misplaced byte shows. */
export function patternByte(i: number): number {
  return (i * 131 + (i >>> 9) * 7 + (i >>> 17)) & 0xff;
}

export class FakeNbdServer {
  readonly data: Buffer;
  /** Connections that completed the handshake. */
  connections = 0;
  /** Corruptions applied so far. */
  applied: Corruption[] = [];
  private pending: Corruption[] = [];
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(private readonly options: FakeServerOptions) {
    this.data = options.memory
      ? Buffer.from(options.memory, 0, options.size)
      : Buffer.alloc(options.size);
    for (let i = 0; i < options.size; i++) this.data[i] = patternByte(i);
    this.server = createServer((socket) => this.serve(socket));
  }

  listen(where: { port: number; host: string } | { path: string }): Promise<void> {
    return new Promise((resolve) => this.server.listen(where, resolve));
  }

  /** The next READ reply gets this wrong; the one after it is right again. */
  corruptNextRead(kind: Corruption): void {
    this.pending.push(kind);
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private serve(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let input = Buffer.alloc(0);
    let wake: (() => void) | undefined;
    socket.on('data', (chunk: Buffer) => {
      input = Buffer.concat([input, chunk]);
      wake?.();
    });
    let ended = false;
    socket.on('close', () => {
      ended = true;
      wake?.();
    });
    const read = async (n: number): Promise<Buffer> => {
      while (input.length < n) {
        if (ended) throw new Error('closed');
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
      const out = input.subarray(0, n);
      input = input.subarray(n);
      return out;
    };
    this.session(socket, read).catch(() => socket.destroy());
  }

  private async session(socket: Socket, read: (n: number) => Promise<Buffer>): Promise<void> {
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBDMAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(3, 16); // FIXED_NEWSTYLE | NO_ZEROES
    socket.write(greeting);
    await read(4);
    let structured = false;
    const optReply = (opt: number, type: number, data = Buffer.alloc(0)) => {
      const head = Buffer.alloc(20);
      head.writeBigUInt64BE(REPLY_MAGIC, 0);
      head.writeUInt32BE(opt, 8);
      head.writeUInt32BE(type, 12);
      head.writeUInt32BE(data.length, 16);
      socket.write(Buffer.concat([head, data]));
    };
    for (;;) {
      const head = await read(16);
      if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new Error('bad option magic');
      const opt = head.readUInt32BE(8);
      await read(head.readUInt32BE(12));
      if (opt === 8) {
        structured = this.options.structured;
        optReply(opt, structured ? 1 : 2 ** 31 + 1);
      } else if (opt === 7) {
        const info = Buffer.alloc(12);
        info.writeUInt16BE(0, 0);
        info.writeBigUInt64BE(BigInt(this.options.size), 2);
        info.writeUInt16BE(this.options.flags ?? 1 | 4 | 8 | 32 | 64, 10);
        optReply(opt, 3, info);
        const bs = Buffer.alloc(14);
        bs.writeUInt16BE(3, 0);
        bs.writeUInt32BE(512, 2);
        bs.writeUInt32BE(4096, 6);
        bs.writeUInt32BE(32 * 2 ** 20, 10);
        optReply(opt, 3, bs);
        optReply(opt, 1);
        break;
      } else if (opt === 2) {
        optReply(opt, 1);
        socket.end();
        return;
      } else {
        optReply(opt, 2 ** 31 + 1);
      }
    }
    this.connections++;
    this.options.onChange?.();
    for (;;) {
      const req = await read(28);
      if (req.readUInt32BE(0) !== 0x25609513) throw new Error('bad request magic');
      const type = req.readUInt16BE(6);
      const handle = req.readBigUInt64BE(8);
      const offset = Number(req.readBigUInt64BE(16));
      const length = req.readUInt32BE(24);
      if (type === 2) {
        socket.end();
        return;
      }
      if (type === 1) {
        const payload = await read(length);
        payload.copy(this.data, offset);
      } else if (type === 4 || type === 6) {
        this.data.fill(0, offset, offset + length);
      }
      if (type !== 0) {
        socket.write(simpleReply(0, handle));
        continue;
      }
      const kind = this.pending.shift();
      if (kind) this.applied.push(kind);
      if (kind) this.options.onChange?.();
      const bytes = this.data.subarray(offset, offset + length);
      socket.write(
        structured ? structuredRead(handle, offset, bytes, kind) : simpleRead(handle, bytes, kind),
      );
      if (kind === 'close-mid-data') socket.destroy();
    }
  }
}

function simpleReply(error: number, handle: bigint, magic = SIMPLE): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(magic, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(handle, 8);
  return b;
}

function simpleRead(handle: bigint, bytes: Buffer, kind: Corruption | undefined): Buffer {
  if (kind === 'simple-magic') return Buffer.concat([simpleReply(0, handle, 0x67446699), bytes]);
  if (kind === 'simple-handle') return Buffer.concat([simpleReply(0, handle + 1000n), bytes]);
  if (kind === 'close-mid-data') {
    return Buffer.concat([simpleReply(0, handle), bytes.subarray(0, bytes.length >> 1)]);
  }
  return Buffer.concat([simpleReply(0, handle), bytes]);
}

function chunk(
  flags: number,
  type: number,
  handle: bigint,
  payload: Buffer,
  magic = STRUCTURED,
): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(magic, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeUInt32BE(payload.length, 16);
  return Buffer.concat([b, payload]);
}

function offsetData(offset: number, bytes: Buffer): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(offset), 0);
  return Buffer.concat([b, bytes]);
}

function hole(offset: number, size: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeBigUInt64BE(BigInt(offset), 0);
  b.writeUInt32BE(size, 8);
  return b;
}

function errorPayload(error: number, message: string, extraLength = 0): Buffer {
  const msg = Buffer.from(message);
  const b = Buffer.alloc(6 + msg.length + extraLength);
  b.writeUInt32BE(error, 0);
  b.writeUInt16BE(msg.length, 4);
  msg.copy(b, 6);
  return b;
}

/**
 * A correct READ reply is two data chunks (first half, second half), the second with DONE; each
 * corruption changes one thing of it (the pattern never has a zero half). A correct reply sends an
 * all-zero half as a hole, as servers do for unallocated ranges.
 */
function structuredRead(
  handle: bigint,
  offset: number,
  bytes: Buffer,
  kind: Corruption | undefined,
): Buffer {
  const half = bytes.length >> 1;
  const first = () => chunk(0, 1, handle, offsetData(offset, bytes.subarray(0, half)));
  const second = (flags = DONE) =>
    chunk(flags, 1, handle, offsetData(offset + half, bytes.subarray(half)));
  switch (kind) {
    case undefined: {
      const part = (flags: number, start: number, end: number) =>
        bytes.subarray(start, end).every((b) => b === 0)
          ? chunk(flags, 2, handle, hole(offset + start, end - start))
          : chunk(flags, 1, handle, offsetData(offset + start, bytes.subarray(start, end)));
      return Buffer.concat([part(0, 0, half), part(DONE, half, bytes.length)]);
    }
    case 'structured-magic':
      return Buffer.concat([
        chunk(0, 1, handle, offsetData(offset, bytes.subarray(0, half)), 0x668e33ee),
        second(),
      ]);
    case 'structured-handle':
      return Buffer.concat([
        first(),
        chunk(DONE, 1, handle ^ 0x100000n, offsetData(offset + half, bytes.subarray(half))),
      ]);
    case 'chunk-type':
      return Buffer.concat([
        first(),
        chunk(DONE, 7, handle, offsetData(offset + half, bytes.subarray(half))),
      ]);
    case 'data-offset-before':
      return Buffer.concat([
        chunk(0, 1, handle, offsetData(offset - 512, bytes.subarray(0, half))),
        second(),
      ]);
    case 'data-offset-after':
      return Buffer.concat([
        first(),
        chunk(DONE, 1, handle, offsetData(offset + half + 512, bytes.subarray(half))),
      ]);
    case 'data-length-oversized':
      return Buffer.concat([
        first(),
        chunk(
          DONE,
          1,
          handle,
          offsetData(offset + half, Buffer.concat([bytes.subarray(half), bytes])),
        ),
      ]);
    case 'hole-outside':
      return Buffer.concat([first(), chunk(DONE, 2, handle, hole(offset + half, bytes.length))]);
    case 'overlap':
      return Buffer.concat([
        first(),
        chunk(DONE, 1, handle, offsetData(offset + half - 512, bytes.subarray(half - 512))),
      ]);
    case 'done-early':
      return chunk(DONE, 1, handle, offsetData(offset, bytes.subarray(0, half)));
    case 'error-zero':
      return Buffer.concat([
        first(),
        chunk(DONE, 2 ** 15 + 1, handle, errorPayload(0, 'no error')),
      ]);
    case 'error-length':
      return Buffer.concat([
        first(),
        chunk(DONE, 2 ** 15 + 1, handle, errorPayload(5, 'short', 3)),
      ]);
    case 'error-offset-outside': {
      const p = errorPayload(5, 'bad', 8);
      p.writeBigUInt64BE(BigInt(offset + bytes.length), p.length - 8);
      return Buffer.concat([first(), chunk(DONE, 2 ** 15 + 2, handle, p)]);
    }
    case 'none-with-payload':
      return Buffer.concat([first(), second(0), chunk(DONE, 0, handle, Buffer.alloc(4))]);
    case 'simple-data-in-structured':
      return Buffer.concat([simpleReply(0, handle), bytes]);
    case 'close-mid-data':
      return Buffer.concat([first(), second().subarray(0, 40)]);
    default:
      throw new Error(`no such corruption ${String(kind)}`);
  }
}

/**
 * A FakeNbdServer in a worker thread, for tests whose own thread blocks in spawnSync (`ublk add`,
 * dd) while the server must answer. The export's bytes and the counters are shared memory, so
 * the test reads them synchronously.
 */
export class FakeNbdThread {
  readonly data: Buffer;
  private readonly counters: Int32Array;
  private readonly worker: Worker;
  private readonly ready: Promise<void>;

  constructor(
    options: Omit<FakeServerOptions, 'memory' | 'onChange'>,
    listen: { port: number; host: string },
  ) {
    const memory = new SharedArrayBuffer(options.size);
    const counters = new SharedArrayBuffer(8);
    this.data = Buffer.from(memory);
    this.counters = new Int32Array(counters);
    this.worker = new Worker(new URL('./fake-nbd-worker.js', import.meta.url), {
      workerData: { options, listen, memory, counters },
    });
    this.ready = new Promise((resolve, reject) => {
      this.worker.once('message', () => resolve());
      this.worker.once('error', reject);
    });
  }

  listening(): Promise<void> {
    return this.ready;
  }

  get connections(): number {
    return Atomics.load(this.counters, 0);
  }

  /** How many corruptions were sent. */
  get applied(): number {
    return Atomics.load(this.counters, 1);
  }

  corruptNextRead(kind: Corruption): Promise<void> {
    return new Promise((resolve) => {
      this.worker.once('message', () => resolve());
      this.worker.postMessage({ corrupt: kind });
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
