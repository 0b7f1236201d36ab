/**
 * The io_uring ABI this project uses, from <linux/io_uring.h> (plus the poll and fallocate flags
 * its opcodes take). test/unit/uring-abi.test.ts checks every value here against Linux 7.3's
 * header (and <sys/socket.h>, <netinet/tcp.h> and <linux/tls.h> for the socket flags and kernel
 * TLS), so nothing io_uring-related may be defined anywhere else.
 */

// Opcodes (enum io_uring_op).
export const IORING_OP_NOP = 0;
export const IORING_OP_FSYNC = 3;
export const IORING_OP_READ_FIXED = 4;
export const IORING_OP_WRITE_FIXED = 5;
export const IORING_OP_POLL_ADD = 6;
export const IORING_OP_TIMEOUT = 11;
export const IORING_OP_FALLOCATE = 17;
export const IORING_OP_READ = 22;
export const IORING_OP_WRITE = 23;
export const IORING_OP_SEND = 26;
export const IORING_OP_RECV = 27;
export const IORING_OP_URING_CMD = 46;

// io_uring_setup(2) flags.
export const IORING_SETUP_CQSIZE = 1 << 3;
export const IORING_SETUP_SQE128 = 1 << 10;
export const IORING_SETUP_CQE32 = 1 << 11;
/** Task work without interrupting the task (5.19+). */
export const IORING_SETUP_COOP_TASKRUN = 1 << 8;
/** Only the creating thread submits (6.0+). */
export const IORING_SETUP_SINGLE_ISSUER = 1 << 12;
/** Task work runs only when the task waits for completions (6.1+, with SINGLE_ISSUER). */
export const IORING_SETUP_DEFER_TASKRUN = 1 << 13;

// io_uring_params.features.
export const IORING_FEAT_SINGLE_MMAP = 1 << 0;

// io_uring_enter(2) flags.
export const IORING_ENTER_GETEVENTS = 1 << 0;
export const IORING_ENTER_EXT_ARG = 1 << 3;

// io_uring_register(2) opcodes.
export const IORING_REGISTER_EVENTFD = 4;
export const IORING_UNREGISTER_EVENTFD = 5;
export const IORING_REGISTER_BUFFERS2 = 15;
/** A provided buffer ring (5.19+): buffers the kernel picks for IOSQE_BUFFER_SELECT requests. */
export const IORING_REGISTER_PBUF_RING = 22;

// io_uring_buf_reg.flags.
/** Buffers are consumed a CQE's bytes at a time, not whole (6.12+). */
export const IOU_PBUF_RING_INC = 2;

// io_uring_rsrc_register.flags.
export const IORING_RSRC_REGISTER_SPARSE = 1 << 0;

// mmap(2) offsets of the ring regions.
export const IORING_OFF_SQ_RING = 0;
export const IORING_OFF_CQ_RING = 0x8000000;
export const IORING_OFF_SQES = 0x10000000;

// sqe->flags.
export const IOSQE_IO_LINK = 1 << 2;
/** As IOSQE_IO_LINK, but the next SQE runs whatever this one's result. */
export const IOSQE_IO_HARDLINK = 1 << 3;
/** The request takes its buffer from provided-buffer group `sqe->buf_group`. */
export const IOSQE_BUFFER_SELECT = 1 << 5;
/** No CQE when the request succeeds (5.17+): a failure still posts one. */
export const IOSQE_CQE_SKIP_SUCCESS = 1 << 6;

// sqe->uring_cmd_flags.
/** A driver command that posts CQEs until it ends (with IORING_CQE_F_MORE on all but the last). */
export const IORING_URING_CMD_MULTISHOT = 1 << 1;

// cqe->flags.
export const IORING_CQE_F_MORE = 1 << 1;

// SQ ring flags word.
export const IORING_SQ_CQ_OVERFLOW = 1 << 1;

// sqe->fsync_flags.
export const IORING_FSYNC_DATASYNC = 1 << 0;

// sqe->poll32_events (<linux/poll.h>).
export const POLLIN = 0x1;

// sqe->msg_flags of SEND and RECV (<sys/socket.h>).
/** A send to a peer that closed fails with EPIPE instead of raising SIGPIPE. */
export const MSG_NOSIGNAL = 0x4000;
/** The kernel retries a short stream receive (or send) until the length is reached. */
export const MSG_WAITALL = 0x100;

// IORING_OP_FALLOCATE mode (<linux/falloc.h>).
export const FALLOC_FL_KEEP_SIZE = 0x1;
export const FALLOC_FL_PUNCH_HOLE = 0x2;
export const FALLOC_FL_ZERO_RANGE = 0x10;

// statfs f_type of the file systems whose files live in memory (<linux/magic.h>): io_uring hands
// their reads and writes to io-wq workers (no FMODE_NOWAIT), see forwarded-io.ts.
export const TMPFS_MAGIC = 0x01021994;
export const RAMFS_MAGIC = 0x858458f6;

/** struct io_uring_sqe: byte offsets and sizes. */
export const IO_URING_SQE = {
  size: 64,
  /** With IORING_SETUP_SQE128. */
  size128: 128,
  opcode: 0,
  flags: 1,
  fd: 4,
  off: 8,
  /** IORING_OP_URING_CMD's command opcode, in the same union as `off`. */
  cmdOp: 8,
  addr: 16,
  len: 24,
  /** The per-opcode flags union: rw_flags, fsync_flags, poll32_events, msg_flags, uring_cmd_flags. */
  opFlags: 28,
  userData: 32,
  /**
   * READ_FIXED/WRITE_FIXED: the index in the ring's registered buffer table; with
   * IOSQE_BUFFER_SELECT, the same u16 is the provided-buffer group.
   */
  bufIndex: 40,
  /** IORING_OP_URING_CMD's command bytes: 16 of them, 80 with IORING_SETUP_SQE128. */
  cmd: 48,
} as const;

/** struct io_uring_rsrc_register, IORING_REGISTER_BUFFERS2's argument. */
export const IO_URING_RSRC_REGISTER = {
  size: 32,
  nr: 0,
  flags: 4,
} as const;

/** struct io_uring_buf_reg, IORING_REGISTER_PBUF_RING's argument. */
export const IO_URING_BUF_REG = {
  size: 40,
  ringAddr: 0,
  ringEntries: 8,
  bgid: 12,
  flags: 14,
} as const;

/** struct io_uring_buf: one entry of a provided buffer ring. */
export const IO_URING_BUF = {
  size: 16,
  addr: 0,
  len: 8,
  bid: 12,
} as const;

/** struct io_uring_buf_ring: the ring's tail (u16) shares the first entry's reserved field. */
export const IO_URING_BUF_RING = {
  tail: 14,
} as const;

/** struct io_uring_cqe: byte offsets and sizes. */
export const IO_URING_CQE = {
  size: 16,
  /** With IORING_SETUP_CQE32. */
  size32: 32,
  userData: 0,
  res: 8,
  flags: 12,
} as const;

/** struct io_uring_params: byte offsets and size. */
export const IO_URING_PARAMS = {
  size: 120,
  sqEntries: 0,
  cqEntries: 4,
  flags: 8,
  features: 20,
  sqOff: 40,
  cqOff: 80,
} as const;

/** struct io_sqring_offsets (at IO_URING_PARAMS.sqOff): offsets of each field. */
export const IO_SQRING_OFFSETS = {
  head: 0,
  tail: 4,
  ringMask: 8,
  flags: 16,
  array: 24,
} as const;

/** struct io_cqring_offsets (at IO_URING_PARAMS.cqOff): offsets of each field. */
export const IO_CQRING_OFFSETS = {
  head: 0,
  tail: 4,
  ringMask: 8,
  cqes: 20,
} as const;

/** struct io_uring_getevents_arg, io_uring_enter's argument with IORING_ENTER_EXT_ARG. */
export const IO_URING_GETEVENTS_ARG = {
  size: 24,
  /** Address of a struct __kernel_timespec: the wait's relative timeout. */
  ts: 16,
} as const;

/** struct __kernel_timespec. */
export const KERNEL_TIMESPEC = {
  size: 16,
  tvSec: 0,
  tvNsec: 8,
} as const;

// Kernel TLS (<linux/tls.h>) on a socket whose SENDs and RECVs are ring IO: the kernel encrypts
// and decrypts the records, so the ring's socket IO stays plain SEND/RECV.
/** setsockopt levels (<sys/socket.h>). */
export const SOL_TCP = 6;
export const SOL_TLS = 282;
/** Attaches an upper layer protocol ("tls") to a connected TCP socket (<netinet/tcp.h>). */
export const TCP_ULP = 31;
/** SOL_TLS options: the keys and sequence numbers of the sending and the receiving direction. */
export const TLS_TX = 1;
export const TLS_RX = 2;
export const TLS_1_3_VERSION = 0x0304;
export const TLS_CIPHER_AES_GCM_128 = 51;
export const TLS_CIPHER_AES_GCM_256 = 52;
export const TLS_CIPHER_CHACHA20_POLY1305 = 54;

/** struct tls12_crypto_info_aes_gcm_128: TLS_TX's and TLS_RX's argument for that cipher. */
export const TLS12_CRYPTO_INFO_AES_GCM_128 = {
  size: 40,
  version: 0,
  cipherType: 2,
  iv: 4,
  key: 12,
  salt: 28,
  recSeq: 32,
} as const;

/** struct tls12_crypto_info_aes_gcm_256. */
export const TLS12_CRYPTO_INFO_AES_GCM_256 = {
  size: 56,
  version: 0,
  cipherType: 2,
  iv: 4,
  key: 12,
  salt: 44,
  recSeq: 48,
} as const;

/** struct tls12_crypto_info_chacha20_poly1305: the whole 12-byte IV, no salt. */
export const TLS12_CRYPTO_INFO_CHACHA20_POLY1305 = {
  size: 56,
  version: 0,
  cipherType: 2,
  iv: 4,
  key: 16,
  salt: 48,
  recSeq: 48,
} as const;
