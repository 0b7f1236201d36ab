import { closeSync, openSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { QueueIo, RequestData } from '../define.js';
import { closeConnection, type Connection, type Export } from './handshake.js';
import {
  encodeRequest,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_BIT,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  readUint64,
  REQUEST_BYTES,
  SIMPLE_REPLY_BYTES,
  STRUCTURED_REPLY_BYTES,
  wireErrno,
} from './protocol.js';
import { TlsStream } from './tls.js';
import { RingSocket, type PagesTransport, type Transport } from './transport.js';

const { EIO } = osConstants.errno;

/** Room for a batch of request headers and small writes: one SEND carries them all. */
const SEND_STAGE_BYTES = 256 * 1024;
/** Replies are received into this, then copied out; bigger payloads go straight to their buffer. */
const RECV_STAGE_BYTES = 256 * 1024;
/** A payload at least this big, with nothing of it staged yet, is received into its buffer. */
const DIRECT_RECV_BYTES = 32 * 1024;
/** The largest error message a server may send (the protocol caps strings at 4096 bytes). */
const MAX_ERROR_MESSAGE = 4096;
/** What the sender starts from (see pump). */
const RESOLVED = Promise.resolve();
/** An error chunk's largest payload: errno, message length, message, and an offset. */
const MAX_ERROR_CHUNK = 6 + MAX_ERROR_MESSAGE + 8;

export interface Request {
  type: number;
  flags: number;
  offset: number;
  length: number;
  /** READ: where the data goes; WRITE: the data. */
  buf?: Uint8Array;
  /** Zero copy: the request's pages instead of `buf`, reached only by ring IO. */
  data?: RequestData;
  handle: number;
  /** READ with structured replies: the byte ranges the chunks filled so far, [start, end). */
  covered: [number, number][];
  /** An error chunk's errno, reported when the reply is done. */
  error: number;
  resolve(): void;
  reject(err: Error): void;
}

export interface ClientOptions {
  io: QueueIo;
  /** Opens and negotiates a new connection. */
  connect(): Promise<Connection>;
  /** What the first connection found; every later one must offer the same. */
  expected: Export;
  /** How long after a connection broke requests wait for a new one before failing with EIO. */
  reconnectTimeoutMs: number;
  log(line: string): void;
  /** A test aid: one line per event (connected, dropped ...) to this function. */
  trace?(event: string): void;
}

/** A reply that breaks the protocol: the connection cannot be trusted any more. */
class ProtocolError extends Error {}

function requestError(errno: number, what: string): Error {
  return Object.assign(new Error(`nbd ${what}: server error ${errno}`), { errno });
}

/** An established connection's state. */
interface Session {
  transport: Transport;
  structured: boolean;
  /** Requests sent (or being sent) whose reply is not complete, by handle. */
  inFlight: Map<number, Request>;
  broken: boolean;
  /** IO of this session still running: the transport closes when both are done. */
  sending: boolean;
  receiving: boolean;
  closed: boolean;
  /** Resolves once the transport is closed: no IO of the session uses the stages then. */
  settled: Promise<void>;
  markSettled(): void;
}

/**
 * One NBD connection of one queue, its socket IO on the queue's ring: requests are multiplexed
 * by handle, a single sender batches their headers (and small payloads) into one SEND, a single
 * receiver parses replies from one RECV stream. When the connection breaks or the server says
 * something that breaks the protocol, the connection is dropped and every request without a
 * complete reply is sent again on a new one: a request completes only after its reply, so no
 * acknowledged write is lost. Past the reconnect bound requests fail with EIO.
 */
export class NbdClient {
  private session: Session | undefined;
  private readonly queued: Request[] = [];
  private nextHandle = 1;
  private readonly sendStage: Uint8Array;
  private readonly sendView: DataView;
  private readonly recvStage: Uint8Array;
  private readonly recvView: DataView;
  /** Unparsed received bytes are recvStage[recvStart, recvEnd). */
  private recvStart = 0;
  private recvEnd = 0;
  private senderScheduled = false;
  private reconnecting: Promise<void> | undefined;
  /** Past the bound: requests fail at once until a connection succeeds again. */
  private failed = false;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;
  /**
   * Zero copy (requests come with `data`): the receiver never reads past the reply header it
   * needs, since a payload must go from the socket to its request's pages, not through the stage.
   * (Copy mode reads as much as came, and copies the payloads: RECVs of headers only, payloads
   * straight to their buffers, were slower; docs/performance.md#decisions, "Tried and not kept".)
   */
  private exact = false;
  /** Zero copy: /dev/zero, whose reads fill a hole chunk's range of a request's pages. */
  private zeroFd = -1;

  constructor(
    private readonly options: ClientOptions,
    first: Connection,
  ) {
    this.sendStage = options.io.allocate(SEND_STAGE_BYTES);
    this.sendView = new DataView(this.sendStage.buffer);
    this.recvStage = options.io.allocate(RECV_STAGE_BYTES);
    this.recvView = new DataView(this.recvStage.buffer);
    this.adopt(first);
  }

  /** Sends a request and resolves once its (complete, valid) reply came. */
  request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    buf?: Uint8Array,
    data?: RequestData,
  ) {
    // Before the first request with pages no READ was sent: nothing staged is a payload.
    if (data) this.exact = true;
    return new Promise<void>((resolve, reject) => {
      if (this.failed || this.closed) {
        reject(requestError(EIO, 'server unreachable'));
        return;
      }
      const handle = this.nextHandle;
      // 32 bits on the wire (encodeRequest): a request in flight while 2^32 others pass is none.
      this.nextHandle = handle === 0xffffffff ? 1 : handle + 1;
      this.queued.push({
        type,
        flags,
        offset,
        length,
        buf,
        data,
        handle,
        covered: [],
        error: 0,
        resolve,
        reject,
      });
      this.pump();
    });
  }

  /**
   * Ends the session politely (NBD_CMD_DISC) and lets go of the socket; no request is pending.
   */
  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.zeroFd >= 0) closeSync(this.zeroFd);
    const session = this.session;
    if (!session || session.broken) return;
    const disc = new Uint8Array(REQUEST_BYTES);
    encodeRequest(new DataView(disc.buffer), 0, 0, NBD_CMD_DISC, 0, 0, 0);
    session.transport.goodbye(disc);
    this.drop(session, undefined);
  }

  private adopt(connection: Connection): void {
    let markSettled!: () => void;
    const settled = new Promise<void>((resolve) => (markSettled = resolve));
    this.session = {
      transport: connection.tls
        ? new TlsStream(connection.tls)
        : new RingSocket(this.options.io, connection.fd, connection.tlsRecords?.by === 'kernel'),
      structured: connection.export.structured,
      inFlight: new Map(),
      broken: false,
      sending: false,
      receiving: false,
      closed: false,
      settled,
      markSettled,
    };
    this.recvStart = this.recvEnd = 0;
    this.failed = false;
    this.options.trace?.('connected');
  }

  /**
   * Starts the sender and the receiver if there is work for them. The sender starts from a
   * microtask: the queue hands a batch's requests to the handlers one after another in the same
   * turn, so that they all go out in its first SEND rather than the first one alone.
   */
  private pump(): void {
    const session = this.session;
    if (!session || session.broken) return;
    if (!session.sending && !this.senderScheduled && this.queued.length > 0) {
      this.senderScheduled = true;
      // Not queueMicrotask: Node makes an AsyncResource for each call of it (it shows in a CPU
      // profile of the queue thread).
      void RESOLVED.then(this.startSender);
    }
    if (!session.receiving && session.inFlight.size > 0) {
      session.receiving = true;
      this.receiveLoop(session).catch((err: unknown) => this.drop(session, err));
    }
  }

  private readonly startSender = (): void => {
    this.senderScheduled = false;
    const session = this.session;
    if (!session || session.broken || session.sending || this.queued.length === 0) return;
    session.sending = true;
    this.sendLoop(session).catch((err: unknown) => this.drop(session, err));
  };

  private async sendLoop(session: Session): Promise<void> {
    try {
      while (this.queued.length > 0 && !session.broken) {
        let staged = 0;
        let large: Request | undefined;
        while (this.queued.length > 0) {
          const next = this.queued[0];
          const payload = next.type === NBD_CMD_WRITE ? next.length : 0;
          if (next.data && payload > 0) {
            if (staged + REQUEST_BYTES > SEND_STAGE_BYTES) break;
            large = next; // last: its header staged, its payload sent from its pages
          } else if (staged + REQUEST_BYTES + payload > SEND_STAGE_BYTES) {
            if (staged > 0) break;
            large = next; // alone: its header staged, its payload sent from its own buffer
          }
          this.queued.shift();
          session.inFlight.set(next.handle, next);
          encodeRequest(
            this.sendView,
            staged,
            next.flags,
            next.type,
            next.handle,
            next.offset,
            next.length,
          );
          staged += REQUEST_BYTES;
          if (large) break;
          if (payload > 0) {
            this.sendStage.set(next.buf!.subarray(0, payload), staged);
            staged += payload;
          }
        }
        // Replies may come before the send completes: the receiver runs from now.
        this.pump();
        // Without a large payload to follow, the staged bytes are whole requests: answered.
        await this.sendAll(session, this.sendStage.subarray(0, staged), !large);
        if (large?.data) await this.sendPages(session, large.data);
        else if (large) await this.sendAll(session, large.buf!.subarray(0, large.length), true);
      }
    } finally {
      session.sending = false;
      this.settleSession(session);
    }
  }

  private async sendAll(session: Session, bytes: Uint8Array, answered: boolean): Promise<void> {
    for (let done = 0; done < bytes.length;) {
      if (session.broken) return;
      const n = await session.transport.send(bytes.subarray(done), answered);
      if (n <= 0) throw new Error(n === 0 ? 'send made no progress' : `send: errno ${-n}`);
      done += n;
    }
  }

  private async sendPages(session: Session, data: RequestData): Promise<void> {
    const transport = pagesOf(session);
    for (let done = 0; done < data.length;) {
      if (session.broken) return;
      const n = await transport.sendData(data, done, data.length - done);
      if (n <= 0) throw new Error(n === 0 ? 'send made no progress' : `send: errno ${-n}`);
      done += n;
    }
  }

  /** Receives the next `length` bytes of the stream into the READ's pages at `start`. */
  private async receivePages(session: Session, data: RequestData, start: number, length: number) {
    const transport = pagesOf(session);
    for (let done = 0; done < length;) {
      if (session.broken) throw new Error('connection dropped');
      const n = await transport.recvData(data, start + done, length - done);
      if (n === 0) throw new Error('the server closed the connection');
      if (n < 0) throw new Error(`recv: errno ${-n}`);
      done += n;
    }
  }

  /** Zero copy: zeros into the READ's pages at [start, start + length), read from /dev/zero. */
  private async zeroPages(data: RequestData, start: number, length: number): Promise<void> {
    if (this.zeroFd < 0) this.zeroFd = openSync('/dev/zero', 'r');
    for (let done = 0; done < length;) {
      const n = await this.options.io.recvData(this.zeroFd, data, start + done, length - done);
      if (n <= 0) throw new Error(`read of /dev/zero: ${n === 0 ? 'end of file' : `errno ${-n}`}`);
      done += n;
    }
  }

  /** Whether `length` unparsed bytes are staged: the parser awaits only when they are not. */
  private has(length: number): boolean {
    return this.recvEnd - this.recvStart >= length;
  }

  /**
   * One RECV more into the stage, of bytes up to the `length`th unparsed one if exact (else as
   * many as came); `certain`: that many will come, so the RECV waits for all of them.
   */
  private async fill(session: Session, length: number, certain: boolean): Promise<void> {
    if (this.recvStart > 0) {
      this.recvStage.copyWithin(0, this.recvStart, this.recvEnd);
      this.recvEnd -= this.recvStart;
      this.recvStart = 0;
    }
    if (session.broken) throw new Error('connection dropped');
    const n = await session.transport.recv(
      this.recvStage.subarray(this.recvEnd, this.exact ? length : RECV_STAGE_BYTES),
      this.exact && certain,
    );
    if (n === 0) throw new Error('the server closed the connection');
    if (n < 0) throw new Error(`recv: errno ${-n}`);
    this.recvEnd += n;
  }

  /** Moves the next `dst.length` bytes of the stream to `dst`; undefined if all were staged. */
  private receiveInto(session: Session, dst: Uint8Array): Promise<void> | undefined {
    const staged = Math.min(dst.length, this.recvEnd - this.recvStart);
    dst.set(this.recvStage.subarray(this.recvStart, this.recvStart + staged));
    this.recvStart += staged;
    return staged === dst.length ? undefined : this.receiveRest(session, dst, staged);
  }

  private async receiveRest(session: Session, dst: Uint8Array, done: number): Promise<void> {
    while (done < dst.length) {
      const left = dst.length - done;
      if (left >= DIRECT_RECV_BYTES) {
        if (session.broken) throw new Error('connection dropped');
        // The payload's length is known: one completion for all of it, not one per segment.
        const n = await session.transport.recv(dst.subarray(done), true);
        if (n === 0) throw new Error('the server closed the connection');
        if (n < 0) throw new Error(`recv: errno ${-n}`);
        done += n;
      } else {
        if (!this.has(1)) await this.fill(session, 1, false);
        const n = Math.min(left, this.recvEnd - this.recvStart);
        dst.set(this.recvStage.subarray(this.recvStart, this.recvStart + n), done);
        this.recvStart += n;
        done += n;
      }
    }
  }

  private async receiveLoop(session: Session): Promise<void> {
    try {
      while (session.inFlight.size > 0 && !session.broken) {
        // A RECV brings several replies at once under load: the
        // ones staged whole are parsed without an await, a promise or a microtask hop each.
        const wanted = this.wantedBytes(session);
        // Until a reply's magic is staged, how many bytes it has is a guess (see wantedBytes).
        if (!this.has(wanted)) await this.fill(session, wanted, this.has(4));
        else {
          const payload = this.parseReply(session);
          if (payload) await payload;
        }
      }
    } finally {
      session.receiving = false;
      this.settleSession(session);
    }
    this.pump();
  }

  /**
   * How many bytes of the next reply must be staged before parseReply takes it: all of it,
   * except a payload that goes to its buffer or pages directly (large, or zero copy).
   */
  private wantedBytes(session: Session): number {
    if (!this.has(4)) {
      if (!this.exact) return 4;
      // No payload starts in a reply's first 16 bytes, nor with structured replies (which a
      // READ must get then) in the first 28: a data chunk's header and offset, else a reply
      // without data and at least 16 bytes of the next one's header. One RECV for a chunk's
      // header and offset, not one for 16 bytes and one for the 12 after them.
      return session.structured ? STRUCTURED_REPLY_BYTES + 8 : SIMPLE_REPLY_BYTES;
    }
    const at = this.recvStart;
    const magic = this.recvView.getUint32(at);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      if (!this.has(SIMPLE_REPLY_BYTES)) return SIMPLE_REPLY_BYTES;
      const request = session.inFlight.get(readUint64(this.recvView, at + 8));
      // With structured replies, parseReply refuses a simple one to a READ from its 16 bytes.
      const withData =
        !session.structured &&
        request?.type === NBD_CMD_READ &&
        this.recvView.getUint32(at + 4) === 0;
      return withData && stagedPayload(request, request.length)
        ? SIMPLE_REPLY_BYTES + request.length
        : SIMPLE_REPLY_BYTES;
    }
    // parseReply refuses what is not a reply, or a reply to no request, from what is staged.
    if (magic !== NBD_STRUCTURED_REPLY_MAGIC || !session.structured) return 4;
    if (!this.has(8)) return STRUCTURED_REPLY_BYTES;
    const type = this.recvView.getUint16(at + 6);
    // Exact: the chunk's fixed part comes in the same RECV as its header, one round trip less.
    if (!this.has(STRUCTURED_REPLY_BYTES)) return STRUCTURED_REPLY_BYTES + fixedChunkBytes(type);
    const length = this.recvView.getUint32(at + 16);
    const request = session.inFlight.get(readUint64(this.recvView, at + 8));
    if (!request) return STRUCTURED_REPLY_BYTES;
    if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
      return length > 8 && stagedPayload(request, length - 8)
        ? STRUCTURED_REPLY_BYTES + length
        : STRUCTURED_REPLY_BYTES + 8;
    }
    if (type === NBD_REPLY_TYPE_OFFSET_HOLE) return STRUCTURED_REPLY_BYTES + 12;
    // An error chunk of a bad length, or another type, is refused from its header.
    const error = (type & NBD_REPLY_TYPE_ERROR_BIT) !== 0 && length <= MAX_ERROR_CHUNK;
    return error ? STRUCTURED_REPLY_BYTES + length : STRUCTURED_REPLY_BYTES;
  }

  private lookup(session: Session, handle: number): Request {
    const request = session.inFlight.get(handle);
    if (!request) throw new ProtocolError(`reply for unknown handle ${handle}`);
    return request;
  }

  private finish(session: Session, request: Request): void {
    session.inFlight.delete(request.handle);
    if (request.error !== 0) request.reject(requestError(request.error, opName(request.type)));
    else request.resolve();
  }

  /**
   * Takes the next reply, of which wantedBytes are staged, and completes its request; a promise
   * only while a payload is received into its buffer or pages.
   */
  private parseReply(session: Session): Promise<void> | undefined {
    const magic = this.recvView.getUint32(this.recvStart);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const at = this.recvStart;
      const error = this.recvView.getUint32(at + 4);
      const request = this.lookup(session, readUint64(this.recvView, at + 8));
      this.recvStart += SIMPLE_REPLY_BYTES;
      if (error !== 0) request.error = wireErrno(error);
      else if (request.type === NBD_CMD_READ) {
        // With structured replies negotiated a READ's data must come in chunks.
        if (session.structured) throw new ProtocolError('simple reply with data to a READ');
        const payload = this.receivePayload(session, request, 0, request.length);
        if (payload) return payload.then(() => this.finish(session, request));
      }
      this.finish(session, request);
      return undefined;
    }
    if (magic !== NBD_STRUCTURED_REPLY_MAGIC || !session.structured) {
      throw new ProtocolError(`bad reply magic 0x${magic.toString(16)}`);
    }
    const at = this.recvStart;
    const flags = this.recvView.getUint16(at + 4);
    const type = this.recvView.getUint16(at + 6);
    const request = this.lookup(session, readUint64(this.recvView, at + 8));
    const length = this.recvView.getUint32(at + 16);
    this.recvStart += STRUCTURED_REPLY_BYTES;
    const done = (flags & NBD_REPLY_FLAG_DONE) !== 0;
    let payload: Promise<void> | undefined;
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0 || !done)
          throw new ProtocolError('NBD_REPLY_TYPE_NONE with a payload or not last');
        break;
      case NBD_REPLY_TYPE_OFFSET_DATA: {
        if (request.type !== NBD_CMD_READ) throw new ProtocolError('data chunk for a non-READ');
        if (length <= 8 || length - 8 > request.length) {
          throw new ProtocolError(
            `data chunk of ${length} bytes for a ${request.length}-byte READ`,
          );
        }
        const start = this.chunkStart(
          request,
          readUint64(this.recvView, this.recvStart),
          length - 8,
        );
        this.recvStart += 8;
        payload = this.receivePayload(session, request, start, length - 8);
        break;
      }
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (request.type !== NBD_CMD_READ) throw new ProtocolError('hole chunk for a non-READ');
        if (length !== 12) throw new ProtocolError(`hole chunk of ${length} bytes`);
        const size = this.recvView.getUint32(this.recvStart + 8);
        const start = this.chunkStart(request, readUint64(this.recvView, this.recvStart), size);
        this.recvStart += 12;
        if (request.data) payload = this.zeroPages(request.data, start, size);
        else request.buf!.fill(0, start, start + size);
        break;
      }
      default: {
        if ((type & NBD_REPLY_TYPE_ERROR_BIT) === 0) {
          throw new ProtocolError(`unexpected reply chunk type ${type}`);
        }
        if (length < 6 || length > MAX_ERROR_CHUNK) {
          throw new ProtocolError(`error chunk of ${length} bytes`);
        }
        const error = this.recvView.getUint32(this.recvStart);
        const messageLength = this.recvView.getUint16(this.recvStart + 4);
        const tail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
        if (error === 0) throw new ProtocolError('error chunk with error 0');
        if (
          (type === NBD_REPLY_TYPE_ERROR || type === NBD_REPLY_TYPE_ERROR_OFFSET) &&
          6 + messageLength + tail !== length
        ) {
          throw new ProtocolError('error chunk length does not match its message');
        }
        if (type === NBD_REPLY_TYPE_ERROR_OFFSET) {
          const offset = readUint64(this.recvView, this.recvStart + 6 + messageLength);
          if (offset < request.offset || offset >= request.offset + request.length) {
            throw new ProtocolError('error offset outside the request');
          }
        }
        this.recvStart += length;
        request.error ||= wireErrno(error);
        break;
      }
    }
    if (!done) return payload;
    if (payload) return payload.then(() => this.finishChunked(session, request));
    this.finishChunked(session, request);
    return undefined;
  }

  /** A structured reply's last chunk came: a READ's chunks must have covered all of it. */
  private finishChunked(session: Session, request: Request): void {
    if (request.type === NBD_CMD_READ && request.error === 0 && !fullyCovered(request)) {
      throw new ProtocolError('READ reply done before all of its data came');
    }
    this.finish(session, request);
  }

  /** A READ's payload bytes to its buffer or pages; undefined if they were all staged. */
  private receivePayload(
    session: Session,
    request: Request,
    start: number,
    length: number,
  ): Promise<void> | undefined {
    if (request.data) return this.receivePages(session, request.data, start, length);
    return this.receiveInto(session, request.buf!.subarray(start, start + length));
  }

  /** Where a chunk of `size` bytes at `offset` lands in the READ's buffer, after checking it. */
  private chunkStart(request: Request, offset: number, size: number): number {
    const start = offset - request.offset;
    if (start < 0 || start + size > request.length || size === 0) {
      throw new ProtocolError('chunk outside the request');
    }
    for (const [a, b] of request.covered) {
      if (start < b && a < start + size) throw new ProtocolError('overlapping chunks');
    }
    request.covered.push([start, start + size]);
    return start;
  }

  /**
   * Drops a session: shutting the transport down wakes its pending IO; once that ended the
   * transport is closed. The requests without a complete reply go first in line for the next connection.
   */
  private drop(session: Session, err: unknown): void {
    if (session.broken) return;
    session.broken = true;
    session.transport.shutdown();
    this.settleSession(session);
    if (this.closed && err === undefined) return;
    const unanswered = [...session.inFlight.values()].sort((a, b) => a.handle - b.handle);
    session.inFlight.clear();
    for (const request of unanswered) {
      request.covered = [];
      request.error = 0;
    }
    this.queued.unshift(...unanswered);
    const why = err instanceof Error ? err.message : String(err);
    this.options.log(
      `nbd: connection dropped (${why}); ${unanswered.length} request(s) will be sent again on a new connection`,
    );
    this.options.trace?.(`dropped ${err instanceof ProtocolError ? 'protocol' : 'io'}: ${why}`);
    this.reconnect();
  }

  private settleSession(session: Session): void {
    if (!session.broken || session.sending || session.receiving || session.closed) return;
    session.transport.close();
    session.closed = true;
    session.markSettled();
  }

  private reconnect(): void {
    if (this.reconnecting || this.closed) return;
    const deadline = Date.now() + this.options.reconnectTimeoutMs;
    const old = this.session;
    this.reconnecting = (async () => {
      // The old session's last RECV and SEND use the stages until they end (shutdown ends them).
      await old?.settled;
      let pause = 50;
      while (!this.closed) {
        try {
          const connection = await this.options.connect();
          if (this.closed) {
            closeConnection(connection);
            return;
          }
          if (!sameExport(connection.export, this.options.expected)) {
            closeConnection(connection);
            throw new Error('the export changed (size or flags) across the reconnect');
          }
          this.adopt(connection);
          if (this.failed) this.options.log('nbd: reconnected; IO is served again');
          return;
        } catch (err) {
          if (Date.now() >= deadline && !this.failed) {
            this.fail(`${(err as Error).message}`);
          }
          if (this.failed) {
            // Keep trying in the background, slowly, so that a server that returns later is used.
            await new Promise((resolve) => (this.retryTimer = setTimeout(resolve, 1000)));
            continue;
          }
          await new Promise((resolve) => (this.retryTimer = setTimeout(resolve, pause)));
          pause = Math.min(pause * 2, 1000);
        }
      }
    })().finally(() => {
      this.reconnecting = undefined;
      this.pump();
    });
  }

  /** Past the bound: everything waiting fails with EIO, and so does what comes next. */
  private fail(why: string): void {
    this.failed = true;
    const waiting = this.queued.splice(0);
    this.options.log(
      `nbd: no connection to the server within --reconnect_timeout ${this.options.reconnectTimeoutMs / 1000} s (${why}): failing ${waiting.length} request(s) and new IO with EIO`,
    );
    for (const request of waiting) request.reject(requestError(EIO, 'server unreachable'));
  }
}

/** The transport of a session whose requests come with pages: it must reach them by ring IO. */
function pagesOf(session: Session): PagesTransport {
  const { transport } = session;
  if (!('sendData' in transport)) {
    throw new Error('zero copy needs the socket on the ring, not TLS records in Node');
  }
  return transport as PagesTransport;
}

/** Whether a READ's payload of `length` bytes goes through the stage, not straight to its buffer. */
function stagedPayload(request: Request | undefined, length: number): request is Request {
  return request !== undefined && !request.data && length < DIRECT_RECV_BYTES;
}

/** The bytes of a chunk's payload before its data: its offset, and a hole's size. */
function fixedChunkBytes(type: number): number {
  if (type === NBD_REPLY_TYPE_OFFSET_DATA) return 8;
  return type === NBD_REPLY_TYPE_OFFSET_HOLE ? 12 : 0;
}

function fullyCovered(request: Request): boolean {
  let total = 0;
  for (const [a, b] of request.covered) total += b - a;
  return total === request.length; // chunks never overlap (checked on arrival)
}

export function sameExport(a: Export, b: Export): boolean {
  return a.size === b.size && a.flags === b.flags && a.structured === b.structured;
}

function opName(type: number): string {
  return (
    ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write zeroes'][type] ?? `command ${type}`
  );
}
