import { writeSync } from 'node:fs';
import { close as closeFd, shutdown as shutdownFd } from '../../sys.js';
import type { QueueIo, RequestData } from '../define.js';

/** The byte stream of a connection's transmission phase, as the client uses it. */
export interface Transport {
  /**
   * Bytes sent, possibly fewer than given, or -errno. `answered`: the bytes end whole requests,
   * whose replies follow, so the ring may finish the send without waking the queue for it.
   */
  send(bytes: Uint8Array, answered?: boolean): Promise<number>;
  /**
   * Bytes received into `into` (0 at the end of the stream) or -errno; with `waitAll` the
   * transport may wait until `into` is full (the ring does: one completion for a payload).
   */
  recv(into: Uint8Array, waitAll?: boolean): Promise<number>;
  /** Ends the connection at once: a pending send or recv ends too. */
  shutdown(): void;
  /** Lets go of it, once no send or recv is pending. */
  close(): void;
  /** NBD_CMD_DISC's bytes at the end, best effort: the queue no longer reaps its ring then. */
  goodbye(bytes: Uint8Array): void;
}

/** A transport that also moves bytes between the socket and a request's lent pages. */
export interface PagesTransport extends Transport {
  sendData(data: RequestData, start: number, length: number): Promise<number>;
  recvData(data: RequestData, start: number, length: number): Promise<number>;
}

const SHUT_RDWR = 2;

/**
 * A socket, plain or with the kernel doing TLS: our own descriptor of it, every send and recv on
 * the queue's io_uring.
 */
export class RingSocket implements PagesTransport {
  constructor(
    private readonly io: QueueIo,
    private readonly fd: number,
    /** The kernel does TLS on it: its sendmsg refuses MSG_WAITALL. */
    private readonly kernelTls: boolean,
  ) {}

  send(bytes: Uint8Array, answered?: boolean): Promise<number> {
    return this.io.send(this.fd, bytes, answered === true && !this.kernelTls);
  }

  recv(into: Uint8Array, waitAll?: boolean): Promise<number> {
    return this.io.recv(this.fd, into, waitAll);
  }

  sendData(data: RequestData, start: number, length: number): Promise<number> {
    return this.io.sendData(this.fd, data, start, length);
  }

  recvData(data: RequestData, start: number, length: number): Promise<number> {
    return this.io.recvData(this.fd, data, start, length);
  }

  shutdown(): void {
    try {
      shutdownFd(this.fd, SHUT_RDWR);
    } catch {
      // already gone
    }
  }

  close(): void {
    closeFd(this.fd);
  }

  /** By write(2): an idle socket takes the 28 bytes at once. */
  goodbye(bytes: Uint8Array): void {
    try {
      writeSync(this.fd, bytes);
    } catch {
      // the server went away: nothing to say goodbye to
    }
  }
}
