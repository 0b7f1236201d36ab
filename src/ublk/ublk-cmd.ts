/**
 * The ublk kernel ABI (include/uapi/linux/ublk_cmd.h), in one place.
 *
 * Names mirror the header so each value can be checked against it: a group object is named by its
 * C prefix (`UBLK_F.ZONED` is `UBLK_F_ZONED`, `UBLK_U_CMD.ADD_DEV` is `UBLK_U_CMD_ADD_DEV`), and a
 * struct layout carries its C struct and member names. test/unit/ublk-abi.test.ts relies on both
 * conventions to check every number here against Linux 7.3's header, and against the system's
 * (older) header wherever that has the name too. The comments give the first kernel of what 6.1
 * lacks.
 *
 * The kernel's structs are host-endian; the codecs write little-endian, the byte order of every
 * host this project targets.
 */

const FIELD_RANGE = {
  u8: [0, 0xff],
  u16: [0, 0xffff],
  u32: [0, 0xffff_ffff],
  s32: [-0x8000_0000, 0x7fff_ffff],
  // A number holds integers exactly up to 2^53; every u64 field the ABI carries (addresses,
  // sectors, feature masks) stays below that. Constants above it are bigints.
  u64: [0, Number.MAX_SAFE_INTEGER],
} as const;

export type FieldType = keyof typeof FIELD_RANGE;

export interface Field {
  /** The C member, as `offsetof` takes it. */
  readonly c: string;
  readonly offset: number;
  readonly type: FieldType;
}

export interface StructLayout<K extends string = string> {
  /** The C struct tag. */
  readonly c: string;
  readonly size: number;
  /** Keyed by the TypeScript name; reserved and padding members are left out. */
  readonly fields: { readonly [P in K]: Field };
}

/** The decoded form of a struct: one number per field. */
export type StructValue<L extends StructLayout> = { [P in keyof L['fields']]: number };

const field =
  (type: FieldType) =>
  (c: string, offset: number): Field => ({ c, offset, type });
const u8 = field('u8');
const u16 = field('u16');
const u32 = field('u32');
const s32 = field('s32');
const u64 = field('u64');

function struct<K extends string>(
  c: string,
  size: number,
  fields: { [P in K]: Field },
): StructLayout<K> {
  return { c, size, fields };
}

/** Control command, at byte 48 (`sqe->cmd`) of a 128-byte SQE sent to /dev/ublk-control. */
export const CTRL_CMD = struct('ublksrv_ctrl_cmd', 32, {
  devId: u32('dev_id', 0),
  queueId: u16('queue_id', 4),
  len: u16('len', 6),
  addr: u64('addr', 8),
  data0: u64('data[0]', 16),
  // 6.3+, for GET_DEV_INFO2 and unprivileged devices; 6.1 has data[1] here, which nothing reads.
  devPathLen: u16('dev_path_len', 24),
});

export const DEV_INFO = struct('ublksrv_ctrl_dev_info', 64, {
  nrHwQueues: u16('nr_hw_queues', 0),
  queueDepth: u16('queue_depth', 2),
  state: u16('state', 4),
  // With UBLK_F.IO_DESC_SIZE (by 7.3): the size of one ublksrv_io_desc; padding before.
  ioDescSize: u16('io_desc_size', 6),
  maxIoBufBytes: u32('max_io_buf_bytes', 8),
  devId: u32('dev_id', 12),
  ublksrvPid: s32('ublksrv_pid', 16),
  flags: u64('flags', 24),
  // The kernel stores and returns it untouched: the server's own bits.
  ublksrvFlags: u64('ublksrv_flags', 32),
  // 6.3+; reserved (zero) before.
  ownerUid: u32('owner_uid', 40),
  ownerGid: u32('owner_gid', 44),
});

/** One IO request, written by the kernel into the read-only descriptor mapping, indexed by tag. */
export const IO_DESC = struct('ublksrv_io_desc', 24, {
  opFlags: u32('op_flags', 0),
  nrSectors: u32('nr_sectors', 4),
  // 6.6: the same word (a union), named for UBLK_IO_OP.REPORT_ZONES.
  nrZones: u32('nr_zones', 4),
  startSector: u64('start_sector', 8),
  addr: u64('addr', 16),
});

/** IO command, at byte 48 (`sqe->cmd`) of a 64-byte SQE sent to /dev/ublkcN. */
export const IO_CMD = struct('ublksrv_io_cmd', 16, {
  qId: u16('q_id', 0),
  tag: u16('tag', 2),
  result: s32('result', 4),
  addr: u64('addr', 8),
  // 6.6: the same word (a union): the LBA a ZONE_APPEND landed at, in its commit.
  zoneAppendLba: u64('zone_append_lba', 8),
});

/**
 * UBLK_F.AUTO_BUF_REG (6.16): where the kernel registers a request's pages, carried in the `addr`
 * of FETCH_REQ and COMMIT_AND_FETCH_REQ: bits 0-15 index, 16-23 flags, the rest reserved (zero).
 */
export const AUTO_BUF_REG = struct('ublk_auto_buf_reg', 8, {
  index: u16('index', 0),
  flags: u8('flags', 2),
});

/** UBLK_F.BATCH_IO (7.0): the command of PREP_IO_CMDS, COMMIT_IO_CMDS and FETCH_IO_CMDS. */
export const BATCH_IO = struct('ublk_batch_io', 16, {
  qId: u16('q_id', 0),
  flags: u16('flags', 2),
  nrElem: u16('nr_elem', 4),
  /** 8, plus 8 for each optional member UBLK_BATCH_F announces. */
  elemBytes: u8('elem_bytes', 6),
});

/** The mandatory head of each element of a batch command's buffer. */
export const ELEM_HEADER = struct('ublk_elem_header', 8, {
  tag: u16('tag', 0),
  /** The buffer index of an incoming request (UBLK_F.AUTO_BUF_REG only). */
  bufIndex: u16('buf_index', 2),
  /** The request's result (commit only). */
  result: s32('result', 4),
});

/** UBLK_F.SHMEM_ZC (by 7.3): what UBLK_U_CMD.REG_BUF's `addr` points at. */
export const SHMEM_BUF_REG = struct('ublk_shmem_buf_reg', 24, {
  addr: u64('addr', 0),
  /** Bytes, page-aligned. */
  len: u64('len', 8),
  /** UBLK_SHMEM_BUF bits. */
  flags: u32('flags', 16),
});

/**
 * The `ublk_params` header. The size is that of the newest layout modelled here (7.3's, through
 * the integrity section); older kernels have a shorter struct (64 bytes on 6.1) and copy only
 * min(len, their size).
 */
export const PARAMS = struct('ublk_params', 152, {
  len: u32('len', 0),
  types: u32('types', 4),
});

export const PARAM_BASIC = struct('ublk_param_basic', 32, {
  attrs: u32('attrs', 0),
  logicalBsShift: u8('logical_bs_shift', 4),
  physicalBsShift: u8('physical_bs_shift', 5),
  ioOptShift: u8('io_opt_shift', 6),
  ioMinShift: u8('io_min_shift', 7),
  maxSectors: u32('max_sectors', 8),
  chunkSectors: u32('chunk_sectors', 12),
  devSectors: u64('dev_sectors', 16),
  virtBoundaryMask: u64('virt_boundary_mask', 24),
});

export const PARAM_DISCARD = struct('ublk_param_discard', 20, {
  discardAlignment: u32('discard_alignment', 0),
  discardGranularity: u32('discard_granularity', 4),
  maxDiscardSectors: u32('max_discard_sectors', 8),
  maxWriteZeroesSectors: u32('max_write_zeroes_sectors', 12),
  maxDiscardSegments: u16('max_discard_segments', 16),
});

export const PARAM_DEVT = struct('ublk_param_devt', 16, {
  charMajor: u32('char_major', 0),
  charMinor: u32('char_minor', 4),
  diskMajor: u32('disk_major', 8),
  diskMinor: u32('disk_minor', 12),
});

export const PARAM_ZONED = struct('ublk_param_zoned', 32, {
  maxOpenZones: u32('max_open_zones', 0),
  maxActiveZones: u32('max_active_zones', 4),
  maxZoneAppendSectors: u32('max_zone_append_sectors', 8),
});

export const PARAM_DMA_ALIGN = struct('ublk_param_dma_align', 8, {
  alignment: u32('alignment', 0),
});

export const PARAM_SEGMENT = struct('ublk_param_segment', 16, {
  segBoundaryMask: u64('seg_boundary_mask', 0),
  maxSegmentSize: u32('max_segment_size', 8),
  maxSegments: u16('max_segments', 12),
});

/** With UBLK_F.INTEGRITY (by 7.3): the metadata of each logical block. */
export const PARAM_INTEGRITY = struct('ublk_param_integrity', 16, {
  /** LBMD_PI_CAP_* of linux/fs.h. */
  flags: u32('flags', 0),
  /** 0: no limit. */
  maxIntegritySegments: u16('max_integrity_segments', 4),
  intervalExp: u8('interval_exp', 6),
  /** Non-zero whenever the section is sent. */
  metadataSize: u8('metadata_size', 7),
  piOffset: u8('pi_offset', 8),
  /** LBMD_PI_CSUM_* of linux/fs.h. */
  csumType: u8('csum_type', 9),
  tagSize: u8('tag_size', 10),
});

/** 6.15: the smallest seg_boundary_mask + 1 and max_segment_size the kernel takes. */
export const UBLK_MIN_SEGMENT_SIZE = 4096;

/** Parameter types: `ublk_params.types` bits, one per section. */
export const UBLK_PARAM_TYPE = {
  BASIC: 1 << 0,
  DISCARD: 1 << 1,
  DEVT: 1 << 2, // 6.3
  ZONED: 1 << 3, // 6.6
  DMA_ALIGN: 1 << 4, // 6.15
  SEGMENT: 1 << 5, // 6.15
  INTEGRITY: 1 << 6, // by 7.3, needs UBLK_F.INTEGRITY
} as const;

interface ParamSection {
  /** The `ublk_params` member. */
  readonly c: string;
  readonly offset: number;
  /** Its UBLK_PARAM_TYPE bit. */
  readonly type: number;
  readonly layout: StructLayout;
}

export const PARAM_SECTIONS = {
  basic: { c: 'basic', offset: 8, type: UBLK_PARAM_TYPE.BASIC, layout: PARAM_BASIC },
  discard: { c: 'discard', offset: 40, type: UBLK_PARAM_TYPE.DISCARD, layout: PARAM_DISCARD },
  devt: { c: 'devt', offset: 60, type: UBLK_PARAM_TYPE.DEVT, layout: PARAM_DEVT },
  zoned: { c: 'zoned', offset: 76, type: UBLK_PARAM_TYPE.ZONED, layout: PARAM_ZONED },
  dma: { c: 'dma', offset: 108, type: UBLK_PARAM_TYPE.DMA_ALIGN, layout: PARAM_DMA_ALIGN },
  segment: { c: 'seg', offset: 120, type: UBLK_PARAM_TYPE.SEGMENT, layout: PARAM_SEGMENT },
  integrity: {
    c: 'integrity',
    offset: 136,
    type: UBLK_PARAM_TYPE.INTEGRITY,
    layout: PARAM_INTEGRITY,
  },
} as const satisfies Record<string, ParamSection>;

type Sections = typeof PARAM_SECTIONS;

export type UblkParams = {
  [K in keyof Sections]?: StructValue<Sections[K]['layout']>;
};

/** What SET_PARAMS takes: devt is the kernel's to fill, and 6.3+ reject it with -EINVAL. */
export type UblkParamsInput = {
  [K in Exclude<keyof Sections, 'devt'>]?: Partial<StructValue<Sections[K]['layout']>>;
};

// Linux _IOC(dir, type, nr, size) with the generic (x86, arm) bit layout.
const IOC_WRITE = 1;
const IOC_READ = 2;
const UBLK_IOC_TYPE = 0x75; // 'u'

function ioc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (UBLK_IOC_TYPE << 8) | nr) >>> 0;
}
const ctrlRead = (nr: number) => ioc(IOC_READ, nr, CTRL_CMD.size);
const ctrlReadWrite = (nr: number) => ioc(IOC_READ | IOC_WRITE, nr, CTRL_CMD.size);
const ioReadWrite = (nr: number) => ioc(IOC_READ | IOC_WRITE, nr, IO_CMD.size);
const batchReadWrite = (nr: number) => ioc(IOC_READ | IOC_WRITE, nr, BATCH_IO.size);

/**
 * Legacy control opcodes: the only form 6.1 accepts, while kernels built without
 * CONFIG_BLKDEV_UBLK_LEGACY_OPCODES accept only UBLK_U_CMD.
 */
export const UBLK_CMD = {
  GET_QUEUE_AFFINITY: 0x01,
  GET_DEV_INFO: 0x02,
  ADD_DEV: 0x04,
  DEL_DEV: 0x05,
  START_DEV: 0x06,
  STOP_DEV: 0x07,
  SET_PARAMS: 0x08,
  GET_PARAMS: 0x09,
  START_USER_RECOVERY: 0x10,
  END_USER_RECOVERY: 0x11,
  GET_DEV_INFO2: 0x12,
} as const;

/** ioctl-encoded control opcodes (6.4+); the commands after GET_DEV_INFO2 exist only this way. */
export const UBLK_U_CMD = {
  GET_QUEUE_AFFINITY: ctrlRead(UBLK_CMD.GET_QUEUE_AFFINITY),
  GET_DEV_INFO: ctrlRead(UBLK_CMD.GET_DEV_INFO),
  ADD_DEV: ctrlReadWrite(UBLK_CMD.ADD_DEV),
  DEL_DEV: ctrlReadWrite(UBLK_CMD.DEL_DEV),
  START_DEV: ctrlReadWrite(UBLK_CMD.START_DEV),
  STOP_DEV: ctrlReadWrite(UBLK_CMD.STOP_DEV),
  SET_PARAMS: ctrlReadWrite(UBLK_CMD.SET_PARAMS),
  GET_PARAMS: ctrlRead(UBLK_CMD.GET_PARAMS),
  START_USER_RECOVERY: ctrlReadWrite(UBLK_CMD.START_USER_RECOVERY),
  END_USER_RECOVERY: ctrlReadWrite(UBLK_CMD.END_USER_RECOVERY),
  GET_DEV_INFO2: ctrlRead(UBLK_CMD.GET_DEV_INFO2),
  GET_FEATURES: ctrlRead(0x13), // 6.5
  DEL_DEV_ASYNC: ctrlRead(0x14), // 6.9
  UPDATE_SIZE: ctrlReadWrite(0x15), // 6.16
  QUIESCE_DEV: ctrlReadWrite(0x16), // 6.16
  /** STOP_DEV unless the disk is open (-EBUSY then); UBLK_F.SAFE_STOP_DEV. */
  TRY_STOP_DEV: ctrlReadWrite(0x17), // by 7.3
  /** Registers a ublk_shmem_buf_reg; the result is the buffer's index. UBLK_F.SHMEM_ZC. */
  REG_BUF: ctrlReadWrite(0x18), // by 7.3
  /** data[0] = the index REG_BUF returned. */
  UNREG_BUF: ctrlReadWrite(0x19), // by 7.3
} as const;

/** Legacy IO opcodes, the only form 6.1 accepts. */
export const UBLK_IO = {
  FETCH_REQ: 0x20,
  COMMIT_AND_FETCH_REQ: 0x21,
  NEED_GET_DATA: 0x22,
} as const;

/** ioctl-encoded IO opcodes (6.4+); the commands after NEED_GET_DATA exist only this way. */
export const UBLK_U_IO = {
  FETCH_REQ: ioReadWrite(UBLK_IO.FETCH_REQ),
  COMMIT_AND_FETCH_REQ: ioReadWrite(UBLK_IO.COMMIT_AND_FETCH_REQ),
  NEED_GET_DATA: ioReadWrite(UBLK_IO.NEED_GET_DATA),
  /** Zero copy: puts request (q_id, tag)'s pages at index `addr` of the ring's buffer table. */
  REGISTER_IO_BUF: ioReadWrite(0x23), // 6.15
  UNREGISTER_IO_BUF: ioReadWrite(0x24), // 6.15
  // UBLK_F.BATCH_IO (7.0); these carry a ublk_batch_io rather than a ublksrv_io_cmd.
  PREP_IO_CMDS: batchReadWrite(0x25),
  /** Its result is the bytes of the buffer consumed: a commit can be partial. */
  COMMIT_IO_CMDS: batchReadWrite(0x26),
  /** Multishot (IORING_URING_CMD_MULTISHOT) over a provided buffer ring: lists of u16 tags. */
  FETCH_IO_CMDS: batchReadWrite(0x27),
} as const;

/** CQE results of FETCH_REQ and COMMIT_AND_FETCH_REQ. */
export const UBLK_IO_RES = {
  /** Descriptor `tag` now holds a request. */
  OK: 0,
  /** A WRITE waits for UBLK_IO.NEED_GET_DATA with the buffer (UBLK_F.NEED_GET_DATA only). */
  NEED_GET_DATA: 1,
  /** -ENODEV: the device is going away; do not fetch this tag again. */
  ABORT: -19,
} as const;

/** mmap offset of the descriptor area of /dev/ublkcN. */
export const UBLKSRV_CMD_BUF_OFFSET = 0;
/** pread/pwrite offset of the request buffers of /dev/ublkcN (UBLK_F.USER_COPY). */
export const UBLKSRV_IO_BUF_OFFSET = 0x8000_0000;

// A USER_COPY offset beyond UBLKSRV_IO_BUF_OFFSET is q_id << QID_OFF | tag << TAG_OFF | the byte
// offset in the request (6.5). The fields and their widths:
export const UBLK_IO_BUF = { OFF: 0, BITS: 25, BITS_MASK: 2 ** 25 - 1 } as const;
export const UBLK_TAG = { OFF: 25, BITS: 16, BITS_MASK: 0xffff } as const;
export const UBLK_QID = { OFF: 41, BITS: 12, BITS_MASK: 0xfff } as const;
export const UBLKSRV_IO_BUF_TOTAL = { BITS: 53, SIZE: 1n << 53n } as const;
/** By 7.3: this bit in a USER_COPY offset copies the request's integrity data instead (bigint). */
export const UBLK_INTEGRITY_FLAG_OFF = 62;
export const UBLKSRV_IO_INTEGRITY_FLAG = 1n << 62n;
export const UBLK_MAX_QUEUE_DEPTH = 4096;
export const UBLK_MAX_NR_QUEUES = 4096;
/** The exact buffer length GET_FEATURES takes: one u64 mask. */
export const UBLK_FEATURES_LEN = 8;

/** `ublksrv_ctrl_cmd.queue_id` of a command that is not about one queue (ADD_DEV insists on it). */
export const NO_QUEUE_ID = 0xffff;
/** `dev_id` asking ADD_DEV to pick a free device number. */
export const AUTO_DEV_ID = 0xffff_ffff;

/**
 * Feature flags of `ublksrv_ctrl_dev_info.flags`, with the first kernel that honours each.
 * A kernel clears the bits it does not know, so read the flags back after ADD_DEV.
 */
export const UBLK_F = {
  SUPPORT_ZERO_COPY: 1 << 0, // works from 6.15; 6.1 clears it
  URING_CMD_COMP_IN_TASK: 1 << 1, // 6.0, forced when ublk_drv is a module
  NEED_GET_DATA: 1 << 2, // 6.0
  USER_RECOVERY: 1 << 3, // 6.1
  USER_RECOVERY_REISSUE: 1 << 4, // 6.1
  UNPRIVILEGED_DEV: 1 << 5, // 6.3
  CMD_IOCTL_ENCODE: 1 << 6, // 6.4
  USER_COPY: 1 << 7, // 6.5
  ZONED: 1 << 8, // 6.6
  USER_RECOVERY_FAIL_IO: 1 << 9, // 6.13
  UPDATE_SIZE: 1 << 10, // 6.16
  AUTO_BUF_REG: 1 << 11, // 6.16
  QUIESCE: 1 << 12, // 6.16
  PER_IO_DAEMON: 1 << 13, // 6.16
  BUF_REG_OFF_DAEMON: 1 << 14, // 6.17
  BATCH_IO: 1 << 15, // 7.0
  INTEGRITY: 1 << 16, // by 7.3 (as 16..20), needs USER_COPY
  SAFE_STOP_DEV: 1 << 17, // UBLK_U_CMD.TRY_STOP_DEV
  NO_AUTO_PART_SCAN: 1 << 18,
  SHMEM_ZC: 1 << 19, // UBLK_U_CMD.REG_BUF
  IO_DESC_SIZE: 1 << 20, // DEV_INFO.ioDescSize
} as const;

/** `ublksrv_ctrl_dev_info.state`. */
export const UBLK_S_DEV = {
  DEAD: 0,
  LIVE: 1,
  QUIESCED: 2,
  FAIL_IO: 3, // 6.13
} as const;

/** The op in the low 8 bits of `ublksrv_io_desc.op_flags`. */
export const UBLK_IO_OP = {
  READ: 0,
  WRITE: 1,
  FLUSH: 2,
  DISCARD: 3,
  WRITE_SAME: 4, // never sent
  WRITE_ZEROES: 5,
  // Zoned devices, 6.6+.
  ZONE_OPEN: 10,
  ZONE_CLOSE: 11,
  ZONE_FINISH: 12,
  ZONE_APPEND: 13,
  ZONE_RESET_ALL: 14,
  ZONE_RESET: 15,
  REPORT_ZONES: 18,
} as const;

/** Request flags, in place in `ublksrv_io_desc.op_flags` (not shifted down). */
export const UBLK_IO_F = {
  FAILFAST_DEV: 1 << 8,
  FAILFAST_TRANSPORT: 1 << 9,
  FAILFAST_DRIVER: 1 << 10,
  META: 1 << 11,
  FUA: 1 << 13,
  NOUNMAP: 1 << 15,
  SWAP: 1 << 16,
  /** 6.16: auto registration failed under UBLK_AUTO_BUF_REG.FALLBACK; register by hand. */
  NEED_REG_BUF: 1 << 17,
  /** By 7.3: the request has an integrity buffer. */
  INTEGRITY: 1 << 18,
  /** By 7.3: `addr` is a UBLK_SHMEM_ZC index and offset into a REG_BUF buffer. */
  SHMEM_ZC: 1 << 19,
} as const;

/** `ublk_auto_buf_reg.flags`. */
export const UBLK_AUTO_BUF_REG = {
  /** A failed registration delivers the request with UBLK_IO_F.NEED_REG_BUF instead of failing it. */
  FALLBACK: 1 << 0,
  F_MASK: 1 << 0,
} as const;

/** `ublk_batch_io.flags`: the optional u64 members each element carries after its header. */
export const UBLK_BATCH_F = {
  HAS_ZONE_LBA: 1 << 0,
  HAS_BUF_ADDR: 1 << 1,
  AUTO_BUF_REG_FALLBACK: 1 << 2,
} as const;

/** `ublk_shmem_buf_reg.flags`. */
export const UBLK_SHMEM_BUF = {
  /** Pin without FOLL_WRITE, so a write-sealed memfd can be registered. */
  READ_ONLY: 1 << 0,
} as const;

/** `ublksrv_io_desc.addr` under UBLK_IO_F.SHMEM_ZC: buffer index << IDX_OFF | byte offset. */
export const UBLK_SHMEM_ZC = { OFF_MASK: 0xffff_ffff, IDX_OFF: 32, IDX_MASK: 0xffff } as const;

/** `ublk_param_basic.attrs`. */
export const UBLK_ATTR = {
  READ_ONLY: 1 << 0,
  ROTATIONAL: 1 << 1,
  VOLATILE_CACHE: 1 << 2,
  FUA: 1 << 3,
} as const;

const TWO_POW_32 = 0x1_0000_0000;

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function readField(view: DataView, at: number, type: FieldType): number {
  switch (type) {
    case 'u8':
      return view.getUint8(at);
    case 'u16':
      return view.getUint16(at, true);
    case 'u32':
      return view.getUint32(at, true);
    case 's32':
      return view.getInt32(at, true);
    case 'u64':
      return view.getUint32(at, true) + view.getUint32(at + 4, true) * TWO_POW_32;
  }
}

function writeField(view: DataView, at: number, type: FieldType, value: number): void {
  switch (type) {
    case 'u8':
      return view.setUint8(at, value);
    case 'u16':
      return view.setUint16(at, value, true);
    case 'u32':
      return view.setUint32(at, value, true);
    case 's32':
      return view.setInt32(at, value, true);
    case 'u64':
      view.setUint32(at, value >>> 0, true);
      return view.setUint32(at + 4, Math.floor(value / TWO_POW_32), true);
  }
}

/** Reads every field of `layout` at `offset` of `bytes`. */
export function decodeStruct<L extends StructLayout>(
  layout: L,
  bytes: Uint8Array,
  offset = 0,
): StructValue<L> {
  const view = viewOf(bytes);
  const value: Record<string, number> = {};
  for (const [name, f] of Object.entries<Field>(layout.fields)) {
    value[name] = readField(view, offset + f.offset, f.type);
  }
  return value as StructValue<L>;
}

/**
 * Writes `layout` at `offset` of `bytes`: missing fields, reserved members and padding become zero.
 * Throws RangeError for a value its C type cannot hold, rather than letting it wrap.
 */
export function encodeStruct<L extends StructLayout>(
  layout: L,
  value: Partial<StructValue<L>>,
  bytes: Uint8Array,
  offset = 0,
): void {
  // Stale bytes must not leak into reserved members: newer kernels give some of them meaning.
  bytes.fill(0, offset, offset + layout.size);
  const view = viewOf(bytes);
  const given = value as Readonly<Record<string, number | undefined>>;
  for (const [name, f] of Object.entries<Field>(layout.fields)) {
    const v = given[name];
    if (v === undefined) continue;
    const [min, max] = FIELD_RANGE[f.type];
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new RangeError(`${layout.c}.${f.c}: ${v} does not fit ${f.type}`);
    }
    writeField(view, offset + f.offset, f.type, v);
  }
}

const SECTION_ENTRIES = Object.entries(PARAM_SECTIONS) as [keyof Sections, ParamSection][];

/**
 * A SET_PARAMS buffer, or with no sections a GET_PARAMS one. `len` defaults to the full size
 * known here, which every kernel accepts: it copies min(len, its own size) and drops the type bits
 * it does not know, so 6.1 just ignores the newer sections.
 */
export function encodeParams(params: UblkParamsInput, len: number = PARAMS.size): Uint8Array {
  const given = params as Readonly<Record<string, Partial<Record<string, number>> | undefined>>;
  const present = SECTION_ENTRIES.filter(([name]) => given[name] !== undefined);
  const bytes = new Uint8Array(len);
  const types = present.reduce((acc, [, s]) => acc | s.type, 0);
  encodeStruct(PARAMS, { len, types }, bytes);
  for (const [name, s] of present) {
    if (s.offset + s.layout.size > len) {
      throw new RangeError(`ublk_params.${s.c} does not fit in len ${len}`);
    }
    encodeStruct(s.layout, given[name] ?? {}, bytes, s.offset);
  }
  return bytes;
}

/**
 * The sections of a GET_PARAMS reply that its `types` names and `bytes` holds. The reply's `len` is
 * not trusted: 6.1 echoes the len of the last SET_PARAMS, not what it copied.
 */
export function decodeParams(bytes: Uint8Array): UblkParams {
  const { types } = decodeStruct(PARAMS, bytes);
  const params: Record<string, unknown> = {};
  for (const [name, s] of SECTION_ENTRIES) {
    if ((types & s.type) !== 0 && s.offset + s.layout.size <= bytes.length) {
      params[name] = decodeStruct(s.layout, bytes, s.offset);
    }
  }
  return params as UblkParams;
}

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/**
 * mmap offset of queue `qId`'s descriptors on /dev/ublkcN. The stride is fixed by
 * UBLK_MAX_QUEUE_DEPTH whatever the device's depth: the kernel finds the queue by dividing by it.
 */
export function ioDescMmapOffset(qId: number, pageSize: number): number {
  return UBLKSRV_CMD_BUF_OFFSET + qId * roundUp(UBLK_MAX_QUEUE_DEPTH * IO_DESC.size, pageSize);
}

/** mmap length of one queue's descriptors: the kernel insists on exactly this. */
export function ioDescMmapLength(queueDepth: number, pageSize: number): number {
  return roundUp(queueDepth * IO_DESC.size, pageSize);
}

const DESC_WORDS = IO_DESC.size / 4;
const DESC_OP_FLAGS = IO_DESC.fields.opFlags.offset / 4;
const DESC_NR_SECTORS = IO_DESC.fields.nrSectors.offset / 4;
const DESC_START_SECTOR = IO_DESC.fields.startSector.offset / 4;
const DESC_ADDR = IO_DESC.fields.addr.offset / 4;
const OP_MASK = 0xff; // ublksrv_get_op()

/**
 * Reads descriptors straight out of one queue's mapping, for the per-IO path: no allocation and no
 * bounds checks, so `tag` must be below the queue depth.
 */
export class IoDescTable {
  private readonly words: Uint32Array;

  /** `mapping` covers the queue's descriptor mmap (page-aligned, so word-aligned). */
  constructor(mapping: Uint8Array) {
    this.words = new Uint32Array(mapping.buffer, mapping.byteOffset, mapping.byteLength >>> 2);
  }

  /** The raw op_flags word: test UBLK_IO_F bits against it. */
  opFlags(tag: number): number {
    return this.words[tag * DESC_WORDS + DESC_OP_FLAGS];
  }

  /** A UBLK_IO_OP value. */
  op(tag: number): number {
    return this.words[tag * DESC_WORDS + DESC_OP_FLAGS] & OP_MASK;
  }

  /** Request length in 512-byte sectors (zones to report, for REPORT_ZONES). */
  nrSectors(tag: number): number {
    return this.words[tag * DESC_WORDS + DESC_NR_SECTORS];
  }

  startSector(tag: number): number {
    const i = tag * DESC_WORDS + DESC_START_SECTOR;
    return this.words[i] + this.words[i + 1] * TWO_POW_32;
  }

  /** The request's buffer in the server (the one FETCH_REQ gave); copy mode only. */
  addr(tag: number): number {
    const i = tag * DESC_WORDS + DESC_ADDR;
    return this.words[i] + this.words[i + 1] * TWO_POW_32;
  }
}

const IO_CMD_Q_ID = IO_CMD.fields.qId.offset;
const IO_CMD_TAG = IO_CMD.fields.tag.offset;
const IO_CMD_RESULT = IO_CMD.fields.result.offset;
const IO_CMD_ADDR = IO_CMD.fields.addr.offset;

/**
 * Writes a `ublksrv_io_cmd` at `offset` of `view` (an SQE's byte 48), for the per-IO path: no
 * allocation and no range checks. `addr` is the tag's buffer for FETCH_REQ, else usually 0.
 */
export function writeIoCmd(
  view: DataView,
  offset: number,
  qId: number,
  tag: number,
  result: number,
  addr: number,
): void {
  view.setUint16(offset + IO_CMD_Q_ID, qId, true);
  view.setUint16(offset + IO_CMD_TAG, tag, true);
  view.setInt32(offset + IO_CMD_RESULT, result, true);
  view.setUint32(offset + IO_CMD_ADDR, addr >>> 0, true);
  view.setUint32(offset + IO_CMD_ADDR + 4, Math.floor(addr / TWO_POW_32), true);
}

const BATCH_Q_ID = BATCH_IO.fields.qId.offset;
const BATCH_FLAGS = BATCH_IO.fields.flags.offset;
const BATCH_NR_ELEM = BATCH_IO.fields.nrElem.offset;
const BATCH_ELEM_BYTES = BATCH_IO.fields.elemBytes.offset;

/**
 * Writes a `ublk_batch_io` at `offset` of `view` (an SQE's byte 48), for the per-batch path: no
 * allocation and no range checks. The SQE's command area is zeroed, so the reserved members are.
 */
export function writeBatchIo(
  view: DataView,
  offset: number,
  qId: number,
  flags: number,
  nrElem: number,
  elemBytes: number,
): void {
  view.setUint16(offset + BATCH_Q_ID, qId, true);
  view.setUint16(offset + BATCH_FLAGS, flags, true);
  view.setUint16(offset + BATCH_NR_ELEM, nrElem, true);
  view.setUint8(offset + BATCH_ELEM_BYTES, elemBytes);
}

const FEATURE_NAMES = new Map<number, string>(
  Object.entries(UBLK_F).map(([name, bit]) => [bit, name]),
);
const STATE_NAMES = new Map<number, string>(
  Object.entries(UBLK_S_DEV).map(([name, state]) => [state, name]),
);

/** The UBLK_F names of the bits set in `flags`; a bit unknown here shows as `bit<N>`. */
export function featureNames(flags: number): string[] {
  const names: string[] = [];
  // Arithmetic rather than bit operators, which would cut the u64 mask to 32 bits.
  for (let bit = 0, rest = flags; rest >= 1; bit++, rest = Math.floor(rest / 2)) {
    if (rest % 2 === 1) names.push(FEATURE_NAMES.get(2 ** bit) ?? `bit${bit}`);
  }
  return names;
}

/** The UBLK_S_DEV name of a device state, or `unknown(<n>)`. */
export function deviceStateName(state: number): string {
  return STATE_NAMES.get(state) ?? `unknown(${state})`;
}
