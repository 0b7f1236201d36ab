// Checks src/ublk/abi.ts against the system's <linux/ublk_cmd.h>, compiled: every constant, struct
// size and field offset the header has, and the protocol sheet's numbers for what it predates. The
// lists come from abi.ts itself (its exports and layout tables), so nothing added there goes
// unchecked: a value with no reference in the header or below fails.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import * as abi from '../../src/ublk/abi.js';
import type { FieldType, StructLayout } from '../../src/ublk/abi.js';
import { evalCExpressions } from './support/cheader.js';

const INCLUDES = ['errno.h', 'linux/ioctl.h', 'linux/ublk_cmd.h'];

// What a 6.1 header lacks: /work/shared/ublk-protocol.md, and for the members of the newer params
// sections upstream include/uapi/linux/ublk_cmd.h. C expressions, so _IOR/_IOWR and sizeof come
// from the real headers rather than from a copy of the formula.
const NEWER_CONSTANTS: Readonly<Record<string, string>> = {
  UBLK_CMD_GET_DEV_INFO2: '0x12',
  UBLK_U_CMD_GET_QUEUE_AFFINITY: "_IOR('u', 0x01, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_GET_DEV_INFO: "_IOR('u', 0x02, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_ADD_DEV: "_IOWR('u', 0x04, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_DEL_DEV: "_IOWR('u', 0x05, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_START_DEV: "_IOWR('u', 0x06, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_STOP_DEV: "_IOWR('u', 0x07, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_SET_PARAMS: "_IOWR('u', 0x08, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_GET_PARAMS: "_IOR('u', 0x09, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_START_USER_RECOVERY: "_IOWR('u', 0x10, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_END_USER_RECOVERY: "_IOWR('u', 0x11, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_GET_DEV_INFO2: "_IOR('u', 0x12, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_GET_FEATURES: "_IOR('u', 0x13, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_DEL_DEV_ASYNC: "_IOR('u', 0x14, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_UPDATE_SIZE: "_IOWR('u', 0x15, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_QUIESCE_DEV: "_IOWR('u', 0x16, struct ublksrv_ctrl_cmd)",
  UBLK_U_CMD_TRY_STOP_DEV: "_IOWR('u', 0x17, struct ublksrv_ctrl_cmd)",
  UBLK_U_IO_FETCH_REQ: "_IOWR('u', 0x20, struct ublksrv_io_cmd)",
  UBLK_U_IO_COMMIT_AND_FETCH_REQ: "_IOWR('u', 0x21, struct ublksrv_io_cmd)",
  UBLK_U_IO_NEED_GET_DATA: "_IOWR('u', 0x22, struct ublksrv_io_cmd)",
  UBLK_F_UNPRIVILEGED_DEV: '1ULL << 5',
  UBLK_F_CMD_IOCTL_ENCODE: '1ULL << 6',
  UBLK_F_USER_COPY: '1ULL << 7',
  UBLK_F_ZONED: '1ULL << 8',
  UBLK_F_USER_RECOVERY_FAIL_IO: '1ULL << 9',
  UBLK_F_UPDATE_SIZE: '1ULL << 10',
  UBLK_F_AUTO_BUF_REG: '1ULL << 11',
  UBLK_F_QUIESCE: '1ULL << 12',
  UBLK_F_PER_IO_DAEMON: '1ULL << 13',
  UBLK_F_BUF_REG_OFF_DAEMON: '1ULL << 14',
  UBLK_F_BATCH_IO: '1ULL << 15',
  UBLK_F_SAFE_STOP_DEV: '1ULL << 17',
  UBLK_F_NO_AUTO_PART_SCAN: '1ULL << 18',
  UBLK_S_DEV_FAIL_IO: '3',
  UBLK_IO_OP_ZONE_OPEN: '10',
  UBLK_IO_OP_ZONE_CLOSE: '11',
  UBLK_IO_OP_ZONE_FINISH: '12',
  UBLK_IO_OP_ZONE_APPEND: '13',
  UBLK_IO_OP_ZONE_RESET_ALL: '14',
  UBLK_IO_OP_ZONE_RESET: '15',
  UBLK_IO_OP_REPORT_ZONES: '18',
  UBLK_PARAM_TYPE_DEVT: '1 << 2',
  UBLK_PARAM_TYPE_ZONED: '1 << 3',
  UBLK_PARAM_TYPE_DMA_ALIGN: '1 << 4',
  UBLK_PARAM_TYPE_SEGMENT: '1 << 5',
  UBLK_MAX_NR_QUEUES: '4096',
  UBLK_FEATURES_LEN: '8',
  // Not macros in any header; ublk_drv.c compares queue_id with (u16)-1 and treats a negative
  // dev_id as "allocate one".
  NO_QUEUE_ID: '(__u16)-1',
  AUTO_DEV_ID: '(__u32)-1',
};

const TYPE_SIZE: Readonly<Record<FieldType, number>> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

interface Slot {
  readonly offset: number;
  readonly size: number;
  readonly signed: boolean;
}
const slot = (offset: number, type: FieldType): Slot => ({
  offset,
  size: TYPE_SIZE[type],
  signed: type === 's32',
});

const NEWER_FIELDS: Readonly<Record<string, Slot>> = {
  'ublksrv_ctrl_cmd.dev_path_len': slot(24, 'u16'),
  'ublksrv_ctrl_dev_info.owner_uid': slot(40, 'u32'),
  'ublksrv_ctrl_dev_info.owner_gid': slot(44, 'u32'),
  'ublk_param_devt.char_major': slot(0, 'u32'),
  'ublk_param_devt.char_minor': slot(4, 'u32'),
  'ublk_param_devt.disk_major': slot(8, 'u32'),
  'ublk_param_devt.disk_minor': slot(12, 'u32'),
  'ublk_param_zoned.max_open_zones': slot(0, 'u32'),
  'ublk_param_zoned.max_active_zones': slot(4, 'u32'),
  'ublk_param_zoned.max_zone_append_sectors': slot(8, 'u32'),
  'ublk_param_dma_align.alignment': slot(0, 'u32'),
  'ublk_param_segment.seg_boundary_mask': slot(0, 'u64'),
  'ublk_param_segment.max_segment_size': slot(8, 'u32'),
  'ublk_param_segment.max_segments': slot(12, 'u16'),
};

const NEWER_STRUCT_SIZES: Readonly<Record<string, number>> = {
  ublk_param_devt: 16,
  ublk_param_zoned: 32,
  ublk_param_dma_align: 8,
  ublk_param_segment: 16,
};

// ublk_params member -> its offset per the sheet and the type bit that announces it.
const NEWER_SECTION_OFFSETS: Readonly<Record<string, number>> = {
  devt: 60,
  zoned: 76,
  dma: 108,
  seg: 120,
};
const SECTION_TYPE_BITS: Readonly<Record<string, string>> = {
  basic: 'UBLK_PARAM_TYPE_BASIC',
  discard: 'UBLK_PARAM_TYPE_DISCARD',
  devt: 'UBLK_PARAM_TYPE_DEVT',
  zoned: 'UBLK_PARAM_TYPE_ZONED',
  dma: 'UBLK_PARAM_TYPE_DMA_ALIGN',
  seg: 'UBLK_PARAM_TYPE_SEGMENT',
};

// The sheet's "encoded" columns, as printed there.
const SHEET_ENCODED: Readonly<Record<string, number>> = {
  UBLK_U_CMD_GET_QUEUE_AFFINITY: 0x80207501,
  UBLK_U_CMD_GET_DEV_INFO: 0x80207502,
  UBLK_U_CMD_ADD_DEV: 0xc0207504,
  UBLK_U_CMD_DEL_DEV: 0xc0207505,
  UBLK_U_CMD_START_DEV: 0xc0207506,
  UBLK_U_CMD_STOP_DEV: 0xc0207507,
  UBLK_U_CMD_SET_PARAMS: 0xc0207508,
  UBLK_U_CMD_GET_PARAMS: 0x80207509,
  UBLK_U_CMD_START_USER_RECOVERY: 0xc0207510,
  UBLK_U_CMD_END_USER_RECOVERY: 0xc0207511,
  UBLK_U_CMD_GET_DEV_INFO2: 0x80207512,
  UBLK_U_CMD_GET_FEATURES: 0x80207513,
  UBLK_U_CMD_DEL_DEV_ASYNC: 0x80207514,
  UBLK_U_CMD_UPDATE_SIZE: 0xc0207515,
  UBLK_U_CMD_QUIESCE_DEV: 0xc0207516,
  // Not in the sheet's table: the 7.3 header's _IOWR('u', 0x17, struct ublksrv_ctrl_cmd).
  UBLK_U_CMD_TRY_STOP_DEV: 0xc0207517,
  UBLK_U_IO_FETCH_REQ: 0xc0107520,
  UBLK_U_IO_COMMIT_AND_FETCH_REQ: 0xc0107521,
  UBLK_U_IO_NEED_GET_DATA: 0xc0107522,
};

/** abi.ts's numbers under their C names: a group object `UBLK_F` holds `UBLK_F_<key>`. */
function tsConstants(): Map<string, number> {
  const constants = new Map<string, number>();
  for (const [name, value] of Object.entries(abi)) {
    if (typeof value === 'number') {
      constants.set(name, value);
    } else if (isNumberGroup(value)) {
      for (const [key, v] of Object.entries(value)) constants.set(`${name}_${key}`, v);
    }
  }
  return constants;
}

function isNumberGroup(value: unknown): value is Record<string, number> {
  return (
    typeof value === 'object' &&
    value !== null &&
    Object.values(value).every((v) => typeof v === 'number')
  );
}

function isLayout(value: unknown): value is StructLayout {
  return typeof value === 'object' && value !== null && 'c' in value && 'fields' in value;
}

const LAYOUTS = Object.values(abi).filter(isLayout);
const SECTIONS = Object.values(abi.PARAM_SECTIONS);

interface Header {
  /** Object-like UBLK* macros. */
  readonly macros: ReadonlySet<string>;
  /** Struct tag -> member names (array subscripts dropped). */
  readonly structs: ReadonlyMap<string, ReadonlySet<string>>;
}

function preprocess(flag: string): string {
  return execFileSync('cc', ['-E', flag, '-x', 'c', '-'], {
    input: '#include <linux/ublk_cmd.h>\n',
    encoding: 'utf8',
  });
}

function readHeader(): Header {
  const macros = new Set(
    [...preprocess('-dM').matchAll(/^#define (UBLK\w*)\s/gm)].map((m) => m[1]),
  );
  const source = preprocess('-P');
  const structs = new Map<string, Set<string>>();
  for (const m of source.matchAll(/struct\s+(\w+)\s*\{/g)) {
    // Brace matching rather than a regex: newer headers nest anonymous unions.
    const start = m.index + m[0].length;
    let end = start;
    for (let depth = 1; depth > 0; end++) {
      if (source[end] === '{') depth++;
      else if (source[end] === '}') depth--;
    }
    const members = source
      .slice(start, end - 1)
      .replace(/[{}]/g, ' ')
      .split(';')
      .map((decl) => /(\w+)\s*(?:\[[^\]]*\])?\s*$/.exec(decl)?.[1])
      .filter((name): name is string => name !== undefined);
    structs.set(m[1], new Set(members));
  }
  return { macros, structs };
}

const memberBase = (member: string): string => member.replace(/\[.*$/, '');
const member = (struct: string, name: string) => `((struct ${struct} *)0)->${name}`;

const header = readHeader();
const hasMember = (struct: string, name: string): boolean =>
  header.structs.get(struct)?.has(memberBase(name)) ?? false;
const constants = tsConstants();

// One probe for everything; keys are prefixed by what they measure.
const exprs: Record<string, string> = {
  'align:ublk_params': '_Alignof(struct ublk_params)',
};
for (const name of constants.keys()) {
  const expr = header.macros.has(name) ? name : NEWER_CONSTANTS[name];
  if (expr !== undefined) exprs[`const:${name}`] = expr;
}
for (const layout of LAYOUTS) {
  if (header.structs.has(layout.c)) exprs[`sizeof:${layout.c}`] = `sizeof(struct ${layout.c})`;
  for (const f of Object.values(layout.fields)) {
    if (!hasMember(layout.c, f.c)) continue;
    const key = `${layout.c}.${f.c}`;
    exprs[`offset:${key}`] = `offsetof(struct ${layout.c}, ${f.c})`;
    exprs[`size:${key}`] = `sizeof(${member(layout.c, f.c)})`;
    exprs[`signed:${key}`] = `(__typeof__(${member(layout.c, f.c)}))-1 < 0`;
  }
}
for (const s of SECTIONS) {
  if (!hasMember(abi.PARAMS.c, s.c)) continue;
  exprs[`offset:ublk_params.${s.c}`] = `offsetof(struct ublk_params, ${s.c})`;
  exprs[`type:ublk_params.${s.c}`] =
    `__builtin_types_compatible_p(__typeof__(${member('ublk_params', s.c)}), struct ${s.layout.c})`;
}
const c = evalCExpressions(INCLUDES, exprs);

function cValue(key: string): number {
  const value = c.get(key);
  assert.ok(value !== undefined, `the C probe did not evaluate ${key}`);
  return Number(value);
}

test('abi.ts defines every UBLK constant the header defines', () => {
  const missing = [...header.macros].filter((name) => !constants.has(name));
  assert.deepEqual(missing, [], `add these to src/ublk/abi.ts`);
});

test('every abi.ts constant equals the header, or the sheet where the header predates it', () => {
  for (const [name, value] of constants) {
    assert.ok(`const:${name}` in exprs, `${name}: not in the header and no reference in the test`);
    assert.equal(value, cValue(`const:${name}`), name);
  }
});

test('encoded opcodes match the sheet', () => {
  for (const [name, value] of Object.entries(SHEET_ENCODED)) {
    assert.equal(constants.get(name), value, name);
  }
  const encoded = [...constants.keys()].filter((name) => /^UBLK_U_/.test(name));
  assert.deepEqual(encoded.sort(), Object.keys(SHEET_ENCODED).sort());
});

test('struct sizes match the header, or the sheet where the header predates them', () => {
  for (const layout of LAYOUTS) {
    // ublk_params grows with the kernel: checked against its sections below.
    if (layout === abi.PARAMS) continue;
    const expected = header.structs.has(layout.c)
      ? cValue(`sizeof:${layout.c}`)
      : NEWER_STRUCT_SIZES[layout.c];
    assert.equal(layout.size, expected, `sizeof(struct ${layout.c})`);
  }
});

test('field offsets, widths and signedness match the header, or the sheet', () => {
  for (const layout of LAYOUTS) {
    for (const f of Object.values(layout.fields)) {
      const key = `${layout.c}.${f.c}`;
      const actual = slot(f.offset, f.type);
      const expected = hasMember(layout.c, f.c)
        ? {
            offset: cValue(`offset:${key}`),
            size: cValue(`size:${key}`),
            signed: cValue(`signed:${key}`) === 1,
          }
        : NEWER_FIELDS[key];
      assert.ok(expected !== undefined, `${key}: not in the header and no reference in the test`);
      assert.deepEqual(actual, expected, key);
      assert.ok(f.offset + actual.size <= layout.size, `${key} overruns struct ${layout.c}`);
    }
  }
});

test('ublk_params sections: offsets, struct types, type bits and total size', () => {
  const align = cValue('align:ublk_params');
  const end = (sections: typeof SECTIONS) =>
    Math.max(...sections.map((s) => s.offset + s.layout.size));
  const roundUp = (n: number) => Math.ceil(n / align) * align;
  const inHeader = SECTIONS.filter((s) => hasMember(abi.PARAMS.c, s.c));
  for (const s of SECTIONS) {
    if (inHeader.includes(s)) {
      assert.equal(s.offset, cValue(`offset:ublk_params.${s.c}`), `offsetof ${s.c}`);
      assert.equal(cValue(`type:ublk_params.${s.c}`), 1, `${s.c} is a struct ${s.layout.c}`);
    } else {
      assert.equal(s.offset, NEWER_SECTION_OFFSETS[s.c], `offset of ${s.c}`);
    }
    const bit = SECTION_TYPE_BITS[s.c];
    assert.ok(bit !== undefined, `${s.c}: no type bit reference in the test`);
    assert.equal(s.type, cValue(`const:${bit}`), `type bit of ${s.c}`);
  }
  assert.equal(cValue('sizeof:ublk_params'), roundUp(end(inHeader)), 'sizeof(struct ublk_params)');
  assert.equal(abi.PARAMS.size, roundUp(end(SECTIONS)), 'PARAMS.size');
});

test('abi.ts models every struct and member the header declares, bar padding', () => {
  const modelled = new Map<string, Set<string>>();
  for (const layout of LAYOUTS) {
    modelled.set(layout.c, new Set(Object.values(layout.fields).map((f) => memberBase(f.c))));
  }
  for (const s of SECTIONS) modelled.get(abi.PARAMS.c)?.add(s.c);
  for (const [struct, members] of header.structs) {
    const ours = modelled.get(struct);
    assert.ok(ours !== undefined, `struct ${struct} is not modelled in src/ublk/abi.ts`);
    const missing = [...members].filter((m) => !/^(pad|reserved)\d*$/.test(m) && !ours.has(m));
    assert.deepEqual(missing, [], `struct ${struct}: members missing from src/ublk/abi.ts`);
  }
});
