import { createDecipheriv, createHmac } from 'node:crypto';
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { setsockopt } from '../../sys.js';
import {
  SOL_TCP,
  SOL_TLS,
  TCP_ULP,
  TLS_1_3_VERSION,
  TLS_CIPHER_AES_GCM_128,
  TLS_CIPHER_AES_GCM_256,
  TLS_CIPHER_CHACHA20_POLY1305,
  TLS_RX,
  TLS_TX,
  TLS12_CRYPTO_INFO_AES_GCM_128,
  TLS12_CRYPTO_INFO_AES_GCM_256,
  TLS12_CRYPTO_INFO_CHACHA20_POLY1305,
} from '../../uring/index.js';

/**
 * Kernel TLS (kTLS) for a connection whose TLS 1.3 handshake Node made: the kernel then encrypts
 * what the ring sends and decrypts what it receives, so that the transmission phase is the same
 * ring SEND/RECV as a plain socket's. The kernel needs each direction's key, IV and record
 * sequence number. Node gives the traffic secrets (its `keylog` event), from which the key and IV
 * follow (RFC 8446 7.3); the sequence numbers it does not give, so the handshake runs over a
 * RecordTap that sees every record: the records under the application keys are those from the
 * first one that decrypts with them.
 */

interface Cipher {
  /** Node's cipher name, its hash, the key length; the kernel's cipher and its struct. */
  node: 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';
  hash: 'sha256' | 'sha384';
  keyBytes: number;
  type: number;
  layout: {
    size: number;
    version: number;
    cipherType: number;
    iv: number;
    key: number;
    salt: number;
    recSeq: number;
  };
}

/** The TLS 1.3 cipher suites the kernel offloads, by their standard names. */
const CIPHERS: Record<string, Cipher> = {
  TLS_AES_128_GCM_SHA256: {
    node: 'aes-128-gcm',
    hash: 'sha256',
    keyBytes: 16,
    type: TLS_CIPHER_AES_GCM_128,
    layout: TLS12_CRYPTO_INFO_AES_GCM_128,
  },
  TLS_AES_256_GCM_SHA384: {
    node: 'aes-256-gcm',
    hash: 'sha384',
    keyBytes: 32,
    type: TLS_CIPHER_AES_GCM_256,
    layout: TLS12_CRYPTO_INFO_AES_GCM_256,
  },
  TLS_CHACHA20_POLY1305_SHA256: {
    node: 'chacha20-poly1305',
    hash: 'sha256',
    keyBytes: 32,
    type: TLS_CIPHER_CHACHA20_POLY1305,
    layout: TLS12_CRYPTO_INFO_CHACHA20_POLY1305,
  },
};

const RECORD_HEADER_BYTES = 5;
const CONTENT_APPLICATION_DATA = 23;
const TAG_BYTES = 16;
const IV_BYTES = 12;
/** The encrypted records of a handshake and an NBD negotiation are few: keep at most this many. */
const MAX_RECORDS = 256;

/**
 * Attaches the kernel's TLS layer to a connected TCP socket, without keys yet (the socket stays
 * plain until TLS_TX and TLS_RX): 0, or -errno where the kernel has no TLS (ENOENT: no `tls`
 * module).
 */
export function attachTlsUlp(fd: number): number {
  return setsockopt(fd, SOL_TCP, TCP_ULP, Buffer.from('tls'));
}

/** One direction's encrypted records (content type 23), whole, as they passed. */
class RecordLog {
  readonly records: Buffer[] = [];
  overflowed = false;
  private partial = Buffer.alloc(0);

  add(chunk: Buffer): void {
    let bytes = this.partial.length > 0 ? Buffer.concat([this.partial, chunk]) : chunk;
    while (bytes.length >= RECORD_HEADER_BYTES) {
      const total = RECORD_HEADER_BYTES + bytes.readUInt16BE(3);
      if (bytes.length < total) break;
      if (bytes[0] === CONTENT_APPLICATION_DATA) {
        if (this.records.length < MAX_RECORDS)
          this.records.push(Buffer.from(bytes.subarray(0, total)));
        else this.overflowed = true;
      }
      bytes = bytes.subarray(total);
    }
    this.partial = Buffer.from(bytes);
  }

  /** Whether the stream is at a record boundary. */
  get atBoundary(): boolean {
    return this.partial.length === 0;
  }
}

/**
 * The raw socket as a Duplex for tls.connect, logging the records each way. `release` ends the
 * forwarding: what Node's TLS layer writes after it goes nowhere, so that once the kernel has the
 * keys Node's socket can be destroyed without a byte of it (a close_notify) on the wire.
 */
export class RecordTap extends Duplex {
  readonly sent = new RecordLog();
  readonly received = new RecordLog();
  private released = false;
  private logging = true;

  constructor(private readonly raw: Socket) {
    super();
    raw.on('data', (chunk: Buffer) => {
      if (this.released) return;
      if (this.logging) this.received.add(chunk);
      if (!this.push(chunk)) raw.pause();
    });
    raw.on('end', () => this.push(null));
    raw.on('error', (err) => this.destroy(err));
    raw.on('close', () => this.destroy());
  }

  override _read(): void {
    if (!this.released) this.raw.resume();
  }

  override _write(
    chunk: Buffer,
    _encoding: BufferEncoding,
    done: (err?: Error | null) => void,
  ): void {
    if (this.released) return done();
    if (this.logging) this.sent.add(chunk);
    this.raw.write(chunk, done);
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    if (!this.released) this.raw.destroy();
    done(err);
  }

  /** Node's TLS goes on over the tap: the records need not be kept any more. */
  stopLogging(): void {
    this.logging = false;
  }

  /** Stops the forwarding in both directions; the raw socket stays open, paused. */
  release(): void {
    this.released = true;
    this.raw.pause();
  }
}

/** The traffic secrets of a TLS socket, by label, as its `keylog` lines give them. */
export function collectSecrets(socket: TLSSocket, into: Map<string, Buffer>): void {
  socket.on('keylog', (line: Buffer) => {
    const [label, , secret] = line.toString('latin1').trim().split(' ');
    if (label && secret) into.set(label, Buffer.from(secret, 'hex'));
  });
}

/** HKDF-Expand-Label(secret, label, "", length) of RFC 8446 7.1, for lengths of one hash block. */
export function expandLabel(hash: string, secret: Buffer, label: string, length: number): Buffer {
  const full = Buffer.from(`tls13 ${label}`, 'latin1');
  const info = Buffer.alloc(2 + 1 + full.length + 1 + 1);
  info.writeUInt16BE(length, 0);
  info[2] = full.length;
  full.copy(info, 3);
  info[3 + full.length] = 0; // empty context
  info[4 + full.length] = 1; // HKDF-Expand's counter: T(1)
  return createHmac(hash, secret).update(info).digest().subarray(0, length);
}

function nonce(iv: Buffer, seq: number): Buffer {
  const out = Buffer.from(iv);
  const big = BigInt(seq);
  for (let i = 0; i < 8; i++) out[IV_BYTES - 1 - i] ^= Number((big >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** Whether a record (header and all) decrypts under key and IV as record `seq`. */
export function decrypts(cipher: Cipher, key: Buffer, iv: Buffer, seq: number, record: Buffer) {
  if (record.length < RECORD_HEADER_BYTES + TAG_BYTES) return false;
  const body = record.subarray(RECORD_HEADER_BYTES, record.length - TAG_BYTES);
  try {
    const options = { authTagLength: TAG_BYTES };
    const decipher =
      cipher.node === 'chacha20-poly1305'
        ? createDecipheriv(cipher.node, key, nonce(iv, seq), options)
        : createDecipheriv(cipher.node, key, nonce(iv, seq), options);
    decipher.setAAD(record.subarray(0, RECORD_HEADER_BYTES), { plaintextLength: body.length });
    decipher.setAuthTag(record.subarray(record.length - TAG_BYTES));
    decipher.update(body);
    decipher.final();
    return true;
  } catch {
    return false;
  }
}

/** One direction's state for the kernel: the cipher, key, IV and the next record's number. */
export interface DirectionState {
  cipher: Cipher;
  key: Buffer;
  iv: Buffer;
  seq: number;
}

/**
 * A direction's state after the handshake and negotiation, or a reason it cannot be known. Its
 * records under the application key are the last ones; the first of them is the first record
 * that decrypts as record 0.
 */
export function directionState(
  cipher: Cipher,
  secret: Buffer | undefined,
  log: RecordLog,
): DirectionState | string {
  if (!secret) return 'no traffic secret was logged';
  if (log.overflowed) return 'too many records to count';
  if (!log.atBoundary) return 'a record is still in flight';
  const key = expandLabel(cipher.hash, secret, 'key', cipher.keyBytes);
  const iv = expandLabel(cipher.hash, secret, 'iv', IV_BYTES);
  const first = log.records.findIndex((record) => decrypts(cipher, key, iv, 0, record));
  if (first < 0) return 'no record decrypts with the derived key';
  return { cipher, key, iv, seq: log.records.length - first };
}

/** struct tls12_crypto_info_* for a direction (TLS 1.3: the salt is the IV's first 4 bytes). */
export function cryptoInfo(state: DirectionState): Buffer {
  const { layout, type } = state.cipher;
  const info = Buffer.alloc(layout.size);
  info.writeUInt16LE(TLS_1_3_VERSION, layout.version);
  info.writeUInt16LE(type, layout.cipherType);
  const saltBytes = layout.recSeq - layout.salt;
  state.iv.copy(info, layout.salt, 0, saltBytes);
  state.iv.copy(info, layout.iv, saltBytes);
  state.key.copy(info, layout.key);
  info.writeBigUInt64BE(BigInt(state.seq), layout.recSeq);
  return info;
}

/** The cipher of a TLS 1.3 connection if the kernel can offload it, else why not. */
export function offloadableCipher(socket: TLSSocket): Cipher | string {
  if (socket.getProtocol() !== 'TLSv1.3')
    return `kernel TLS is used with TLS 1.3, not ${socket.getProtocol()}`;
  const name = socket.getCipher().standardName;
  return CIPHERS[name] ?? `the kernel does not offload ${name}`;
}

/**
 * Hands both directions to the kernel: 0, or the -errno of the first setsockopt that failed and
 * which one (after a failed TLS_TX nothing changed; after a failed TLS_RX the socket is unusable).
 */
export function installKeys(
  fd: number,
  tx: DirectionState,
  rx: DirectionState,
): { res: number; direction?: 'TLS_TX' | 'TLS_RX' } {
  let res = setsockopt(fd, SOL_TLS, TLS_TX, cryptoInfo(tx));
  if (res < 0) return { res, direction: 'TLS_TX' };
  res = setsockopt(fd, SOL_TLS, TLS_RX, cryptoInfo(rx));
  return res < 0 ? { res, direction: 'TLS_RX' } : { res: 0 };
}

export type { Cipher, RecordLog };
