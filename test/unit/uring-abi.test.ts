import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as abi from '../../src/uring/abi.js';
import { evalCExpressions } from './support/cheader.js';
import { linux73IncludeDir } from './support/linux73-headers.js';

const HEADERS = [
  'linux/io_uring.h',
  'linux/poll.h',
  'linux/falloc.h',
  'linux/magic.h',
  'sys/socket.h',
  'netinet/tcp.h',
  'linux/tls.h',
];
/** Linux 7.3's UAPI headers before the system's (6.1 here, which lacks the newer flags). */
const INCLUDE_DIRS = [linux73IncludeDir('linux/io_uring.h')];

// Every constant, checked against the C expression that defines it. Constants the header does
// not name (SQE128/CQE32 sizes, the opcode-flags union) are checked through the definitions
// they derive from.
const scalars: Record<string, string> = {
  IORING_OP_NOP: 'IORING_OP_NOP',
  IORING_OP_FSYNC: 'IORING_OP_FSYNC',
  IORING_OP_READ_FIXED: 'IORING_OP_READ_FIXED',
  IORING_OP_WRITE_FIXED: 'IORING_OP_WRITE_FIXED',
  IORING_OP_POLL_ADD: 'IORING_OP_POLL_ADD',
  IORING_OP_TIMEOUT: 'IORING_OP_TIMEOUT',
  IORING_OP_FALLOCATE: 'IORING_OP_FALLOCATE',
  IORING_OP_READ: 'IORING_OP_READ',
  IORING_OP_WRITE: 'IORING_OP_WRITE',
  IORING_OP_URING_CMD: 'IORING_OP_URING_CMD',
  IORING_OP_SEND: 'IORING_OP_SEND',
  IORING_OP_RECV: 'IORING_OP_RECV',
  MSG_NOSIGNAL: 'MSG_NOSIGNAL',
  TMPFS_MAGIC: 'TMPFS_MAGIC',
  RAMFS_MAGIC: 'RAMFS_MAGIC',
  MSG_WAITALL: 'MSG_WAITALL',
  IORING_SETUP_CQSIZE: 'IORING_SETUP_CQSIZE',
  IORING_SETUP_SQE128: 'IORING_SETUP_SQE128',
  IORING_SETUP_CQE32: 'IORING_SETUP_CQE32',
  IORING_SETUP_COOP_TASKRUN: 'IORING_SETUP_COOP_TASKRUN',
  IORING_SETUP_SINGLE_ISSUER: 'IORING_SETUP_SINGLE_ISSUER',
  IORING_SETUP_DEFER_TASKRUN: 'IORING_SETUP_DEFER_TASKRUN',
  IORING_FEAT_SINGLE_MMAP: 'IORING_FEAT_SINGLE_MMAP',
  IORING_ENTER_GETEVENTS: 'IORING_ENTER_GETEVENTS',
  IORING_ENTER_EXT_ARG: 'IORING_ENTER_EXT_ARG',
  IORING_REGISTER_EVENTFD: 'IORING_REGISTER_EVENTFD',
  IORING_UNREGISTER_EVENTFD: 'IORING_UNREGISTER_EVENTFD',
  IORING_REGISTER_BUFFERS2: 'IORING_REGISTER_BUFFERS2',
  IORING_REGISTER_PBUF_RING: 'IORING_REGISTER_PBUF_RING',
  IOU_PBUF_RING_INC: 'IOU_PBUF_RING_INC',
  IOSQE_BUFFER_SELECT: 'IOSQE_BUFFER_SELECT',
  IORING_URING_CMD_MULTISHOT: 'IORING_URING_CMD_MULTISHOT',
  IORING_RSRC_REGISTER_SPARSE: 'IORING_RSRC_REGISTER_SPARSE',
  IORING_OFF_SQ_RING: 'IORING_OFF_SQ_RING',
  IORING_OFF_CQ_RING: 'IORING_OFF_CQ_RING',
  IORING_OFF_SQES: 'IORING_OFF_SQES',
  IOSQE_IO_LINK: 'IOSQE_IO_LINK',
  IOSQE_CQE_SKIP_SUCCESS: 'IOSQE_CQE_SKIP_SUCCESS',
  IOSQE_IO_HARDLINK: 'IOSQE_IO_HARDLINK',
  IORING_CQE_F_MORE: 'IORING_CQE_F_MORE',
  IORING_SQ_CQ_OVERFLOW: 'IORING_SQ_CQ_OVERFLOW',
  IORING_FSYNC_DATASYNC: 'IORING_FSYNC_DATASYNC',
  POLLIN: 'POLLIN',
  FALLOC_FL_KEEP_SIZE: 'FALLOC_FL_KEEP_SIZE',
  FALLOC_FL_PUNCH_HOLE: 'FALLOC_FL_PUNCH_HOLE',
  FALLOC_FL_ZERO_RANGE: 'FALLOC_FL_ZERO_RANGE',
  SOL_TCP: 'SOL_TCP',
  SOL_TLS: 'SOL_TLS',
  TCP_ULP: 'TCP_ULP',
  TLS_TX: 'TLS_TX',
  TLS_RX: 'TLS_RX',
  TLS_1_3_VERSION: 'TLS_1_3_VERSION',
  TLS_CIPHER_AES_GCM_128: 'TLS_CIPHER_AES_GCM_128',
  TLS_CIPHER_AES_GCM_256: 'TLS_CIPHER_AES_GCM_256',
  TLS_CIPHER_CHACHA20_POLY1305: 'TLS_CIPHER_CHACHA20_POLY1305',
};

const cryptoInfo = (struct: string): Record<string, string> => ({
  size: `sizeof(${struct})`,
  version: `offsetof(${struct}, info.version)`,
  cipherType: `offsetof(${struct}, info.cipher_type)`,
  iv: `offsetof(${struct}, iv)`,
  key: `offsetof(${struct}, key)`,
  salt: `offsetof(${struct}, salt)`,
  recSeq: `offsetof(${struct}, rec_seq)`,
});

const sameOffset = (struct: string, fields: string[]): string => {
  const first = `offsetof(${struct}, ${fields[0]})`;
  const same = fields.map((f) => `offsetof(${struct}, ${f}) == ${first}`).join(' && ');
  return `(${same}) ? ${first} : -1`;
};

const SQE = 'struct io_uring_sqe';
const structs: Record<string, Record<string, string>> = {
  IO_URING_SQE: {
    size: `sizeof(${SQE})`,
    size128: `2 * sizeof(${SQE})`,
    opcode: `offsetof(${SQE}, opcode)`,
    flags: `offsetof(${SQE}, flags)`,
    fd: `offsetof(${SQE}, fd)`,
    off: `offsetof(${SQE}, off)`,
    cmdOp: `offsetof(${SQE}, cmd_op)`,
    addr: `offsetof(${SQE}, addr)`,
    len: `offsetof(${SQE}, len)`,
    opFlags: sameOffset(SQE, [
      'rw_flags',
      'fsync_flags',
      'poll32_events',
      'msg_flags',
      'uring_cmd_flags',
    ]),
    userData: `offsetof(${SQE}, user_data)`,
    bufIndex: sameOffset(SQE, ['buf_index', 'buf_group']),
    cmd: `offsetof(${SQE}, cmd)`,
  },
  IO_URING_RSRC_REGISTER: {
    size: 'sizeof(struct io_uring_rsrc_register)',
    nr: 'offsetof(struct io_uring_rsrc_register, nr)',
    flags: 'offsetof(struct io_uring_rsrc_register, flags)',
  },
  IO_URING_BUF_REG: {
    size: 'sizeof(struct io_uring_buf_reg)',
    ringAddr: 'offsetof(struct io_uring_buf_reg, ring_addr)',
    ringEntries: 'offsetof(struct io_uring_buf_reg, ring_entries)',
    bgid: 'offsetof(struct io_uring_buf_reg, bgid)',
    flags: 'offsetof(struct io_uring_buf_reg, flags)',
  },
  IO_URING_BUF: {
    size: 'sizeof(struct io_uring_buf)',
    addr: 'offsetof(struct io_uring_buf, addr)',
    len: 'offsetof(struct io_uring_buf, len)',
    bid: 'offsetof(struct io_uring_buf, bid)',
  },
  IO_URING_BUF_RING: {
    tail: 'offsetof(struct io_uring_buf_ring, tail)',
  },
  IO_URING_CQE: {
    size: 'sizeof(struct io_uring_cqe)',
    size32: 'sizeof(struct io_uring_cqe) + 2 * sizeof(__u64)',
    userData: 'offsetof(struct io_uring_cqe, user_data)',
    res: 'offsetof(struct io_uring_cqe, res)',
    flags: 'offsetof(struct io_uring_cqe, flags)',
  },
  IO_URING_PARAMS: {
    size: 'sizeof(struct io_uring_params)',
    sqEntries: 'offsetof(struct io_uring_params, sq_entries)',
    cqEntries: 'offsetof(struct io_uring_params, cq_entries)',
    flags: 'offsetof(struct io_uring_params, flags)',
    features: 'offsetof(struct io_uring_params, features)',
    sqOff: 'offsetof(struct io_uring_params, sq_off)',
    cqOff: 'offsetof(struct io_uring_params, cq_off)',
  },
  IO_SQRING_OFFSETS: {
    head: 'offsetof(struct io_sqring_offsets, head)',
    tail: 'offsetof(struct io_sqring_offsets, tail)',
    ringMask: 'offsetof(struct io_sqring_offsets, ring_mask)',
    flags: 'offsetof(struct io_sqring_offsets, flags)',
    array: 'offsetof(struct io_sqring_offsets, array)',
  },
  IO_CQRING_OFFSETS: {
    head: 'offsetof(struct io_cqring_offsets, head)',
    tail: 'offsetof(struct io_cqring_offsets, tail)',
    ringMask: 'offsetof(struct io_cqring_offsets, ring_mask)',
    cqes: 'offsetof(struct io_cqring_offsets, cqes)',
  },
  IO_URING_GETEVENTS_ARG: {
    size: 'sizeof(struct io_uring_getevents_arg)',
    ts: 'offsetof(struct io_uring_getevents_arg, ts)',
  },
  KERNEL_TIMESPEC: {
    size: 'sizeof(struct __kernel_timespec)',
    tvSec: 'offsetof(struct __kernel_timespec, tv_sec)',
    tvNsec: 'offsetof(struct __kernel_timespec, tv_nsec)',
  },
  TLS12_CRYPTO_INFO_AES_GCM_128: cryptoInfo('struct tls12_crypto_info_aes_gcm_128'),
  TLS12_CRYPTO_INFO_AES_GCM_256: cryptoInfo('struct tls12_crypto_info_aes_gcm_256'),
  TLS12_CRYPTO_INFO_CHACHA20_POLY1305: cryptoInfo('struct tls12_crypto_info_chacha20_poly1305'),
};

/** abi.ts flattened to 'NAME' and 'STRUCT.field' keys. */
function flatten(): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, value] of Object.entries(abi)) {
    if (typeof value === 'number') out.set(name, value);
    else for (const [field, v] of Object.entries(value)) out.set(`${name}.${field}`, v);
  }
  return out;
}

function expressions(): Record<string, string> {
  const all: Record<string, string> = { ...scalars };
  for (const [name, fields] of Object.entries(structs)) {
    for (const [field, expr] of Object.entries(fields)) all[`${name}.${field}`] = expr;
  }
  return all;
}

test('every abi.ts value has a C definition to be checked against', () => {
  assert.deepEqual([...flatten().keys()].sort(), Object.keys(expressions()).sort());
});

test("abi.ts matches Linux 7.3's headers", () => {
  const exprs = expressions();
  const c = evalCExpressions(HEADERS, exprs, INCLUDE_DIRS);
  for (const [name, value] of flatten()) {
    assert.equal(
      BigInt(value),
      c.get(name),
      `${name} = ${value}, but ${exprs[name]} = ${c.get(name)}`,
    );
  }
});

test('the SQE128 command area is the 80 bytes from cmd to the end of a doubled SQE', () => {
  const c = evalCExpressions(HEADERS, {
    cmd64: `sizeof(${SQE}) - offsetof(${SQE}, cmd)`,
    cmd128: `2 * sizeof(${SQE}) - offsetof(${SQE}, cmd)`,
  });
  assert.equal(c.get('cmd64'), 16n);
  assert.equal(c.get('cmd128'), 80n);
  assert.equal(abi.IO_URING_SQE.size - abi.IO_URING_SQE.cmd, 16);
  assert.equal(abi.IO_URING_SQE.size128 - abi.IO_URING_SQE.cmd, 80);
});
