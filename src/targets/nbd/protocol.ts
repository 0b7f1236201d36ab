/**
 * The NBD protocol's numbers and wire layouts, as the NBD project's protocol document
 * (doc/proto.md) defines them. All integers on the wire are big-endian.
 */

// Handshake.
export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
/** What an oldstyle server sends after NBDMAGIC. */
export const CLISERV_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;

// Handshake flags (16 bits, from the server) and client flags (32 bits).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;

// Option reply types; errors have bit 31 set.
export const NBD_REP_ACK = 1;
export const NBD_REP_INFO = 3;
export const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;

// NBD_REP_INFO types.
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission flags (16 bits).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

// Requests.
export const NBD_REQUEST_MAGIC = 0x25609513;
export const REQUEST_BYTES = 28;
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;

// Replies.
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const SIMPLE_REPLY_BYTES = 16;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const STRUCTURED_REPLY_BYTES = 20;
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_ERROR_BIT + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_ERROR_BIT + 2;

/** The document's error values, which are Linux's errno numbers; anything else is EINVAL's peer EIO. */
const WIRE_ERRNOS = new Set([1, 5, 12, 22, 28, 75, 95, 108]);
const EIO = 5;

/** A server's error value as the errno to fail the request with. */
export function wireErrno(value: number): number {
  return WIRE_ERRNOS.has(value) ? value : EIO;
}

/** Writes a request header at `at` in `view`. */
export function encodeRequest(
  view: DataView,
  at: number,
  flags: number,
  type: number,
  handle: number,
  offset: number,
  length: number,
): void {
  view.setUint32(at, NBD_REQUEST_MAGIC);
  view.setUint16(at + 4, flags);
  view.setUint16(at + 6, type);
  // Two 32-bit halves each, not BigInt: no allocation per request (handles are 32-bit).
  view.setUint32(at + 8, 0);
  view.setUint32(at + 12, handle);
  view.setUint32(at + 16, Math.floor(offset / 2 ** 32));
  view.setUint32(at + 20, offset >>> 0);
  view.setUint32(at + 24, length);
}

/**
 * A 64-bit wire integer as a number, without a BigInt: exact up to 2^53, beyond that rounded, but
 * still beyond every offset and handle a request can have, which is all the callers compare with.
 */
export function readUint64(view: DataView, at: number): number {
  return view.getUint32(at) * 2 ** 32 + view.getUint32(at + 4);
}

/** A transmission flag's name, for messages and `ublk list`. */
export function describeFlags(flags: number): string[] {
  const names: [number, string][] = [
    [NBD_FLAG_READ_ONLY, 'read_only'],
    [NBD_FLAG_SEND_FLUSH, 'flush'],
    [NBD_FLAG_SEND_FUA, 'fua'],
    [NBD_FLAG_ROTATIONAL, 'rotational'],
    [NBD_FLAG_SEND_TRIM, 'trim'],
    [NBD_FLAG_SEND_WRITE_ZEROES, 'write_zeroes'],
    [NBD_FLAG_CAN_MULTI_CONN, 'multi_conn'],
  ];
  return names.filter(([bit]) => (flags & bit) !== 0).map(([, name]) => name);
}
