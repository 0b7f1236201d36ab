import { writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import type { TLSSocket } from 'node:tls';
import { UserError } from '../../errors.js';
import { close as closeFd, dup } from '../../sys.js';
import {
  CLISERV_MAGIC,
  encodeRequest,
  IHAVEOPT,
  NBD_CMD_DISC,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  REQUEST_BYTES,
} from './protocol.js';
import {
  attachTlsUlp,
  collectSecrets,
  directionState,
  installKeys,
  offloadableCipher,
  RecordTap,
} from './ktls.js';
import { startTls, type TlsConfig } from './tls.js';

const { ENOENT } = osConstants.errno;

/** Where the server is: TCP or a Unix socket. */
export type NbdAddress = { host: string; port: number } | { path: string };

export interface Export {
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  /** NBD_INFO_BLOCK_SIZE, when the server sent it. */
  blockSize?: { minimum: number; preferred: number; maximum: number };
  /** Whether the server agreed to NBD_OPT_STRUCTURED_REPLY. */
  structured: boolean;
  /** With TLS, the version negotiated ('TLSv1.3'). */
  tls?: string;
}

/** A handshake that failed for a reason a user can act on (vs. a broken connection). */
export class HandshakeRefused extends UserError {}

/** A protocol violation during the handshake. */
export class HandshakeError extends Error {}

export function describeAddress(address: NbdAddress): string {
  return 'path' in address ? `unix:${address.path}` : `${address.host}:${address.port}`;
}

/**
 * The bytes of a socket as reads of exact lengths; what Node buffered beyond them stays for the
 * next read, so that once the handshake ends we can tell that nothing was read ahead.
 */
class ExactReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private wake: (() => void) | undefined;
  private failure: Error | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.wake?.();
  };
  private readonly onEnd = () => this.fail(new HandshakeError('the server closed the connection'));
  private readonly onError = (err: Error) => this.fail(err);
  private readonly onClose = () => this.fail(new HandshakeError('the connection closed'));

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  /** Stops reading (the socket paused): another reader, or the transmission phase, takes over. */
  detach(): void {
    this.socket.pause();
    this.socket.removeListener('data', this.onData);
    this.socket.removeListener('end', this.onEnd);
    this.socket.removeListener('error', this.onError);
    this.socket.removeListener('close', this.onClose);
  }

  get pending(): number {
    return this.buffered;
  }

  async read(length: number): Promise<Buffer> {
    while (this.buffered < length) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > length ? [all.subarray(length)] : [];
    this.buffered -= length;
    return all.subarray(0, length);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.wake?.();
  }
}

function connectError(address: NbdAddress, err: NodeJS.ErrnoException): Error {
  const where = describeAddress(address);
  switch (err.code) {
    case 'ECONNREFUSED':
      return new HandshakeRefused(
        `nbd: connection to ${where} refused: is the NBD server running and listening there?`,
      );
    case 'ENOENT':
      return new HandshakeRefused(`nbd: no Unix socket ${'path' in address ? address.path : ''}`);
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new HandshakeRefused(
        `nbd: cannot resolve host ${'host' in address ? address.host : ''}`,
      );
    case 'EACCES':
      return new HandshakeRefused(`nbd: permission denied connecting to ${where}`);
    default:
      return err;
  }
}

function openSocket(address: NbdAddress, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = 'path' in address ? connect(address.path) : connect(address.port, address.host);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new HandshakeError(`connecting to ${describeAddress(address)} timed out`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(connectError(address, err));
    });
  });
}

function option(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(16);
  head.writeBigUInt64BE(IHAVEOPT, 0);
  head.writeUInt32BE(code, 8);
  head.writeUInt32BE(data.length, 12);
  return Buffer.concat([head, data]);
}

interface OptionReply {
  type: number;
  data: Buffer;
}

/** Option replies are small; anything beyond this is a broken server. */
const MAX_OPTION_REPLY = 1 << 20;

async function optionReply(reader: ExactReader, code: number): Promise<OptionReply> {
  const head = await reader.read(20);
  if (head.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) {
    throw new HandshakeError('bad option reply magic');
  }
  if (head.readUInt32BE(8) !== code) {
    throw new HandshakeError(`option reply for option ${head.readUInt32BE(8)}, not ${code}`);
  }
  const length = head.readUInt32BE(16);
  if (length > MAX_OPTION_REPLY) throw new HandshakeError(`option reply of ${length} bytes`);
  return { type: head.readUInt32BE(12), data: await reader.read(length) };
}

function refusal(exportName: string, where: string, reply: OptionReply): Error {
  const message = reply.data.length > 0 ? ` (${reply.data.toString('utf8')})` : '';
  const name = exportName === '' ? 'the default export' : `export '${exportName}'`;
  switch (reply.type) {
    case NBD_REP_ERR_UNKNOWN:
      return new HandshakeRefused(`nbd: ${where} has no ${name}${message}: check --export_name`);
    case NBD_REP_ERR_TLS_REQD:
      return new HandshakeRefused(
        `nbd: ${where} requires TLS for ${name}: add --tls (with --tls_certificates DIR or --tls_ca FILE for its CA)`,
      );
    case NBD_REP_ERR_POLICY:
      return new HandshakeRefused(`nbd: ${where} refused access to ${name}${message}`);
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
      return new HandshakeRefused(`nbd: ${where} insists on block sizes for ${name}${message}`);
    case NBD_REP_ERR_SHUTDOWN:
      return new HandshakeError(`${where} is shutting down`);
    default:
      return new HandshakeRefused(
        `nbd: ${where} refused ${name}: error ${reply.type - NBD_REP_FLAG_ERROR}${message}`,
      );
  }
}

/** What a negotiation ends with: the export, and the stream transmission goes on (TLS or not). */
interface Negotiated {
  exported: Export;
  stream: Socket;
  reader: ExactReader;
  offload?: Offload;
}

/** With kernel TLS in view: what the handover needs (see ktls.ts). */
interface Offload {
  tap: RecordTap;
  secrets: Map<string, Buffer>;
}

/**
 * NBD_OPT_STARTTLS, then TLS on the socket: every later option, and transmission, is inside it.
 * The server sends nothing after its ACK until our TLS ClientHello, so Node holds no byte of the
 * socket's that the TLS layer should have had.
 */
async function upgrade(
  socket: Socket,
  reader: ExactReader,
  tls: TlsConfig,
  where: string,
  tapped: boolean,
): Promise<{ secure: TLSSocket; offload?: Offload }> {
  socket.write(option(NBD_OPT_STARTTLS));
  const reply = await optionReply(reader, NBD_OPT_STARTTLS);
  if (reply.type !== NBD_REP_ACK) {
    const why =
      reply.type === NBD_REP_ERR_UNSUP
        ? 'unsupported'
        : reply.type === NBD_REP_ERR_POLICY
          ? 'refused by policy'
          : `reply ${reply.type}`;
    throw new HandshakeRefused(
      `nbd: ${where} does not offer TLS (NBD_OPT_STARTTLS: ${why}): drop --tls, or enable TLS on the server`,
    );
  }
  if (reader.pending !== 0) throw new HandshakeError('the server sent data after STARTTLS');
  reader.detach();
  if (!tapped) return { secure: await startTls(socket, tls, where) };
  const offload = { tap: new RecordTap(socket), secrets: new Map<string, Buffer>() };
  const secure = await startTls(offload.tap, tls, where, (secure) =>
    collectSecrets(secure, offload.secrets),
  );
  return { secure, offload };
}

/**
 * The fixed newstyle handshake up to transmission: STARTTLS with `tls`, structured replies if the
 * server agrees, then NBD_OPT_GO with NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE
 * (NBD_OPT_EXPORT_NAME where GO is unsupported).
 */
async function negotiate(
  raw: Socket,
  exportName: string,
  where: string,
  tls: TlsConfig | undefined,
  tapped = false,
): Promise<Negotiated> {
  let socket = raw;
  let offload: Offload | undefined;
  let reader = new ExactReader(socket);
  const greeting = await reader.read(18);
  if (greeting.readBigUInt64BE(0) !== NBDMAGIC) {
    throw new HandshakeRefused(`nbd: ${where} is not an NBD server (no NBDMAGIC)`);
  }
  if (greeting.readBigUInt64BE(8) === CLISERV_MAGIC) {
    throw new HandshakeRefused(`nbd: ${where} speaks the oldstyle protocol; use a newstyle server`);
  }
  if (greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new HandshakeError('bad greeting magic');
  const serverFlags = greeting.readUInt16BE(16);
  if ((serverFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) {
    throw new HandshakeRefused(`nbd: ${where} does not speak fixed newstyle negotiation`);
  }
  const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  socket.write(clientFlags);
  let version: string | undefined;
  if (tls) {
    const upgraded = await upgrade(socket, reader, tls, where, tapped);
    const secure = upgraded.secure;
    offload = upgraded.offload;
    version = secure.getProtocol() ?? undefined;
    socket = secure;
    reader = new ExactReader(socket);
  }

  socket.write(option(NBD_OPT_STRUCTURED_REPLY));
  const sr = await optionReply(reader, NBD_OPT_STRUCTURED_REPLY);
  const structured = sr.type === NBD_REP_ACK;
  if (!structured && (sr.type & NBD_REP_FLAG_ERROR) === 0) {
    throw new HandshakeError(`unexpected reply ${sr.type} to NBD_OPT_STRUCTURED_REPLY`);
  }

  const name = Buffer.from(exportName, 'utf8');
  const go = Buffer.alloc(4 + name.length + 2 + 4);
  go.writeUInt32BE(name.length, 0);
  name.copy(go, 4);
  go.writeUInt16BE(2, 4 + name.length);
  go.writeUInt16BE(NBD_INFO_EXPORT, 6 + name.length);
  go.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 8 + name.length);
  socket.write(option(NBD_OPT_GO, go));
  let size: number | undefined;
  let flags = 0;
  let blockSize: Export['blockSize'];
  for (;;) {
    const reply = await optionReply(reader, NBD_OPT_GO);
    if (reply.type === NBD_REP_ACK) break;
    if (reply.type === NBD_REP_ERR_UNSUP) {
      // A server older than NBD_OPT_GO: EXPORT_NAME ends the handshake with size and flags.
      socket.write(option(NBD_OPT_EXPORT_NAME, name));
      const tail = await reader.read(10 + (noZeroes ? 0 : 124));
      size = Number(tail.readBigUInt64BE(0));
      flags = tail.readUInt16BE(8);
      break;
    }
    if ((reply.type & NBD_REP_FLAG_ERROR) !== 0) throw refusal(exportName, where, reply);
    if (reply.type !== NBD_REP_INFO || reply.data.length < 2) continue;
    const info = reply.data.readUInt16BE(0);
    if (info === NBD_INFO_EXPORT && reply.data.length === 12) {
      size = Number(reply.data.readBigUInt64BE(2));
      flags = reply.data.readUInt16BE(10);
    } else if (info === NBD_INFO_BLOCK_SIZE && reply.data.length === 14) {
      blockSize = {
        minimum: reply.data.readUInt32BE(2),
        preferred: reply.data.readUInt32BE(6),
        maximum: reply.data.readUInt32BE(10),
      };
    }
  }
  if (size === undefined) throw new HandshakeError('the server sent no NBD_INFO_EXPORT');
  if (!Number.isSafeInteger(size)) throw new HandshakeError(`export size ${size} out of range`);
  if ((flags & NBD_FLAG_HAS_FLAGS) === 0) flags = 0;
  // Transmission has begun; the server sends nothing until asked, so Node must hold nothing.
  if (reader.pending !== 0) throw new HandshakeError('the server sent data after the handshake');
  return {
    exported: { size, flags, blockSize, structured, tls: version },
    stream: socket,
    reader,
    offload,
  };
}

/**
 * A connection in transmission phase: our own descriptor of the socket for the ring (plain, or
 * with the kernel doing TLS), or Node's TLS socket, and the export.
 */
export interface Connection {
  /** -1 with TLS in Node. */
  fd: number;
  tls?: TLSSocket;
  export: Export;
  /** With TLS: who encrypts the records, and why not the kernel when it does not. */
  tlsRecords?: { by: 'kernel' } | { by: 'node'; why: string };
}

/** Lets go of a connection no client took. */
export function closeConnection(connection: Connection): void {
  if (connection.tls) connection.tls.destroy();
  else closeFd(connection.fd);
}

function nodeFd(socket: Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: number } })._handle;
  if (typeof handle?.fd !== 'number' || handle.fd < 0) {
    throw new Error('nbd: cannot get the socket descriptor from Node');
  }
  return handle.fd;
}

/** Why the kernel cannot take this connection's TLS records, or undefined once its layer is on. */
function kernelTlsRefusal(socket: Socket, address: NbdAddress): string | undefined {
  if ('path' in address) return 'kernel TLS is for TCP sockets, not Unix sockets';
  const res = attachTlsUlp(nodeFd(socket));
  if (res === 0) return undefined;
  return -res === ENOENT
    ? 'this kernel has no TLS layer (modprobe tls)'
    : `the kernel refused its TLS layer (errno ${-res})`;
}

/**
 * Connects and negotiates in Node (the handshake is a few round trips, once per connection), then
 * hands the socket over as a descriptor of our own for the ring: Node's socket is closed, which
 * does not end the connection while our descriptor is open. With TLS, the kernel takes the keys
 * where it can (`kernelTls`, see ktls.ts) and the ring does the socket IO as without TLS;
 * otherwise Node's TLS socket is the connection (see tls.ts).
 */
export async function openConnection(
  address: NbdAddress,
  exportName: string,
  timeoutMs: number,
  tls?: TlsConfig,
  kernelTls = false,
): Promise<Connection> {
  const socket = await openSocket(address, timeoutMs);
  const where = describeAddress(address);
  const timer = setTimeout(
    () => socket.destroy(new HandshakeError(`handshake with ${where} timed out`)),
    timeoutMs,
  );
  let handedOver = false;
  try {
    let why = tls && !kernelTls ? 'kernel TLS is off (--no_ktls)' : undefined;
    if (tls && kernelTls) why = kernelTlsRefusal(socket, address);
    const negotiated = await negotiate(socket, exportName, where, tls, why === undefined);
    const { exported, stream, reader, offload } = negotiated;
    // Requests are small and each waits for its reply: Nagle's algorithm would hold a header
    // back until the previous segment is acknowledged (a delayed ACK: up to 40 ms).
    if (!('path' in address)) socket.setNoDelay(true);
    reader.detach();
    if (stream === socket) return { fd: dup(nodeFd(socket)), export: exported };
    const secure = stream as TLSSocket;
    if (offload) {
      const fd = dup(nodeFd(socket));
      why = toKernel(secure, offload, socket, fd);
      if (why === undefined) {
        secure.destroy();
        return { fd, export: exported, tlsRecords: { by: 'kernel' } };
      }
      closeFd(fd);
      offload.tap.stopLogging();
    }
    // Until the client listens: an error then must not be an uncaught one.
    stream.on('error', () => undefined);
    handedOver = true;
    return { fd: -1, tls: secure, export: exported, tlsRecords: { by: 'node', why: why! } };
  } finally {
    clearTimeout(timer);
    if (!handedOver) socket.destroy();
  }
}

/**
 * Gives the kernel the keys and record numbers of both directions on `fd`, the socket's own
 * descriptor, and stops Node's TLS from touching the socket: undefined, or why not (the
 * connection is then as it was, with Node doing TLS). Nothing is in flight either way: the
 * negotiation has just ended with the server's last reply.
 */
function toKernel(
  secure: TLSSocket,
  offload: Offload,
  raw: Socket,
  fd: number,
): string | undefined {
  const cipher = offloadableCipher(secure);
  if (typeof cipher === 'string') return cipher;
  const { tap, secrets } = offload;
  const tx = directionState(cipher, secrets.get('CLIENT_TRAFFIC_SECRET_0'), tap.sent);
  if (typeof tx === 'string') return `sending: ${tx}`;
  const rx = directionState(cipher, secrets.get('SERVER_TRAFFIC_SECRET_0'), tap.received);
  if (typeof rx === 'string') return `receiving: ${rx}`;
  // Node must not read what the kernel decrypts from now on.
  raw.pause();
  const { res, direction } = installKeys(fd, tx, rx);
  if (direction === 'TLS_TX') {
    raw.resume();
    return `the kernel refused the sending keys (errno ${-res})`;
  }
  if (direction === 'TLS_RX') {
    // The sending side is the kernel's already: this connection can be used by neither.
    throw new HandshakeError(`the kernel refused the receiving TLS keys (errno ${-res})`);
  }
  tap.release();
  return undefined;
}

/**
 * Learns what the export is, for setup: connects as a queue would, then ends the session with
 * NBD_CMD_DISC as the protocol asks.
 */
export async function probeExport(
  address: NbdAddress,
  exportName: string,
  timeoutMs: number,
  tls?: TlsConfig,
  kernelTls = false,
): Promise<Connection> {
  const connection = await openConnection(address, exportName, timeoutMs, tls, kernelTls);
  const disc = Buffer.alloc(REQUEST_BYTES);
  encodeRequest(new DataView(disc.buffer, disc.byteOffset), 0, 0, NBD_CMD_DISC, 0, 0, 0);
  if (connection.tls) {
    const secure = connection.tls;
    await new Promise<void>((resolve) => secure.end(disc, resolve));
    secure.destroy();
  } else {
    try {
      writeSync(connection.fd, disc);
    } finally {
      closeFd(connection.fd);
    }
  }
  return connection;
}
