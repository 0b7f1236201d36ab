import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { UserError } from '../../errors.js';
import type { Transport } from './transport.js';

const { EPIPE } = osConstants.errno;

/**
 * What a TLS connection needs, read in setup (so that every queue thread and every reconnect
 * uses the same, and the files are read once): PEM text, and the name the server's certificate
 * must carry.
 */
export interface TlsConfig {
  /** The CA that signed the server's certificate; the system's CAs without it. */
  ca?: string;
  /** A client certificate and its key, for servers that verify their peer. */
  cert?: string;
  key?: string;
  hostname: string;
}

export interface TlsArgs {
  tls?: boolean;
  tls_certificates?: string;
  tls_ca?: string;
  tls_cert?: string;
  tls_key?: string;
  tls_hostname?: string;
  no_ktls?: boolean;
}

/** The file names of a `--tls_certificates DIR`, as qemu's and nbdkit's (a client's side). */
const CA_FILE = 'ca-cert.pem';
const CERT_FILE = 'client-cert.pem';
const KEY_FILE = 'client-key.pem';

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new UserError(`nbd: cannot read the ${what} ${path}: ${(err as Error).message}`);
  }
}

/**
 * The TLS options as a TlsConfig, or undefined without `--tls`: `--tls_certificates DIR`
 * (ca-cert.pem, and client-cert.pem with client-key.pem where present) or the files one by one,
 * `--tls_hostname` the name to verify (by default `--host`; a Unix socket has none).
 */
export function loadTlsConfig(args: TlsArgs, host: string | undefined): TlsConfig | undefined {
  const files = ['tls_certificates', 'tls_ca', 'tls_cert', 'tls_key', 'tls_hostname'] as const;
  if (args.tls !== true) {
    const given = [...files, 'no_ktls' as const].find((name) => args[name] !== undefined);
    if (given) throw new UserError(`nbd: --${given} goes with --tls`);
    return undefined;
  }
  const hostname = args.tls_hostname ?? host;
  if (hostname === undefined || hostname === '') {
    throw new UserError(
      'nbd: --tls over a Unix socket needs --tls_hostname NAME, the name in the server certificate',
    );
  }
  const dir = args.tls_certificates;
  if (dir !== undefined) {
    const single = files.slice(1, 4).find((name) => args[name] !== undefined);
    if (single) throw new UserError(`nbd: give --tls_certificates DIR or --${single}, not both`);
    const certPath = join(dir, CERT_FILE);
    const keyPath = join(dir, KEY_FILE);
    const hasCert = existsSync(certPath);
    if (hasCert !== existsSync(keyPath)) {
      throw new UserError(`nbd: ${dir} has only one of ${CERT_FILE} and ${KEY_FILE}`);
    }
    return {
      ca: readPem(join(dir, CA_FILE), 'CA certificate'),
      cert: hasCert ? readPem(certPath, 'client certificate') : undefined,
      key: hasCert ? readPem(keyPath, 'client key') : undefined,
      hostname,
    };
  }
  if ((args.tls_cert === undefined) !== (args.tls_key === undefined)) {
    throw new UserError('nbd: --tls_cert and --tls_key go together');
  }
  return {
    ca: args.tls_ca === undefined ? undefined : readPem(args.tls_ca, 'CA certificate'),
    cert: args.tls_cert === undefined ? undefined : readPem(args.tls_cert, 'client certificate'),
    key: args.tls_key === undefined ? undefined : readPem(args.tls_key, 'client key'),
    hostname,
  };
}

/**
 * The TLS handshake on a socket that has just had NBD_OPT_STARTTLS acknowledged; resolves with the
 * TLS socket once the server's certificate is verified (`onSecure` has it before the handshake
 * starts). A failed verification is the user's to fix (a wrong CA or name), so it rejects with a
 * UserError.
 */
export function startTls(
  socket: Duplex,
  config: TlsConfig,
  where: string,
  onSecure?: (secure: TLSSocket) => void,
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = tlsConnect({
      socket,
      host: config.hostname,
      // SNI carries names only; an address is verified against the certificate all the same.
      servername: isIP(config.hostname) ? undefined : config.hostname,
      ca: config.ca,
      cert: config.cert,
      key: config.key,
      minVersion: 'TLSv1.2',
    });
    onSecure?.(secure);
    const onError = (err: Error) =>
      reject(new UserError(`nbd: TLS with ${where} failed: ${err.message}`));
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.removeListener('error', onError);
      resolve(secure);
    });
  });
}

/**
 * The transmission phase over Node's TLS: the queue thread's event loop does the socket IO and
 * OpenSSL the records, so no send or recv is ring IO (the queue then waits in the event loop,
 * see Queue.run). Received plaintext waits in Node's chunks until the client asks for it.
 */
export class TlsStream implements Transport {
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already taken. */
  private taken = 0;
  private waiting: { into: Uint8Array; resolve(n: number): void } | undefined;
  /** 0 at the end of the stream, -errno after an error: what recv returns from then on. */
  private ended: number | undefined;
  private leaving = false;

  constructor(private readonly socket: TLSSocket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      const waiting = this.waiting;
      if (!waiting) return;
      this.waiting = undefined;
      waiting.resolve(this.take(waiting.into));
    });
    socket.on('end', () => this.end(0));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.end(-((typeof err.errno === 'number' && Math.abs(err.errno)) || osConstants.errno.EIO));
    });
    socket.on('close', () => this.end(0));
    socket.resume(); // the handshake's reader left it paused
  }

  recv(into: Uint8Array): Promise<number> {
    if (this.chunks.length > 0) return Promise.resolve(this.take(into));
    if (this.ended !== undefined) return Promise.resolve(this.ended);
    return new Promise((resolve) => (this.waiting = { into, resolve }));
  }

  send(bytes: Uint8Array): Promise<number> {
    if (this.ended !== undefined) return Promise.resolve(-EPIPE);
    // A copy: the caller reuses its buffer once this settles, OpenSSL encrypts later.
    if (this.socket.write(Buffer.from(bytes))) return Promise.resolve(bytes.length);
    return new Promise((resolve) => {
      const settle = (n: number) => {
        this.socket.removeListener('drain', drained).removeListener('close', closed);
        resolve(n);
      };
      const drained = () => settle(bytes.length);
      const closed = () => settle(-EPIPE);
      this.socket.once('drain', drained).once('close', closed);
    });
  }

  shutdown(): void {
    if (!this.leaving) this.socket.destroy();
    this.end(0);
  }

  close(): void {
    if (!this.leaving) this.socket.destroy();
  }

  /** Sent with TLS's own goodbye (close_notify) after it; the socket closes once they are out. */
  goodbye(bytes: Uint8Array): void {
    this.leaving = true;
    this.socket.end(Buffer.from(bytes));
  }

  private take(into: Uint8Array): number {
    let n = 0;
    while (n < into.length && this.chunks.length > 0) {
      const chunk = this.chunks[0];
      const count = Math.min(into.length - n, chunk.length - this.taken);
      into.set(chunk.subarray(this.taken, this.taken + count), n);
      n += count;
      this.taken += count;
      if (this.taken === chunk.length) {
        this.chunks.shift();
        this.taken = 0;
      }
    }
    return n;
  }

  private end(result: number): void {
    this.ended ??= result;
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.resolve(this.ended);
  }
}
