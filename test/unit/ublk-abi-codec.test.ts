// The codecs of src/ublk/ublk-cmd.ts on known bytes; their layouts are checked against the C header in
// ublk-abi.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  CTRL_CMD,
  DEV_INFO,
  IO_CMD,
  IO_DESC,
  IoDescTable,
  NO_QUEUE_ID,
  PARAMS,
  PARAM_BASIC,
  UBLK_ATTR,
  UBLK_F,
  UBLK_IO_F,
  UBLK_IO_OP,
  UBLK_PARAM_TYPE,
  decodeParams,
  decodeStruct,
  deviceStateName,
  encodeParams,
  encodeStruct,
  featureNames,
  ioDescMmapLength,
  ioDescMmapOffset,
  writeIoCmd,
} from '../../src/ublk/ublk-cmd.js';
import type { StructValue } from '../../src/ublk/ublk-cmd.js';

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
const view = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);

test('ublksrv_ctrl_cmd encodes to the known little-endian bytes', () => {
  const bytes = new Uint8Array(CTRL_CMD.size).fill(0xee);
  encodeStruct(
    CTRL_CMD,
    { devId: 3, queueId: NO_QUEUE_ID, len: 64, addr: 0x7f12_3456_7890, data0: 4242 },
    bytes,
  );
  assert.equal(
    hex(bytes),
    '03000000' + 'ffff' + '4000' + '90785634127f0000' + '9210000000000000' + '00'.repeat(8),
  );
});

test('ublksrv_ctrl_dev_info round-trips, including a negative pid and flags above 2^32', () => {
  const info: StructValue<typeof DEV_INFO> = {
    nrHwQueues: 4,
    queueDepth: 128,
    state: 1,
    ioDescSize: 24,
    maxIoBufBytes: 512 * 1024,
    devId: 7,
    ublksrvPid: -1,
    flags: UBLK_F.USER_RECOVERY + 2 ** 40,
    ublksrvFlags: 2 ** 52 + 1,
    ownerUid: 1000,
    ownerGid: 100,
  };
  const bytes = new Uint8Array(DEV_INFO.size);
  encodeStruct(DEV_INFO, info, bytes);
  assert.deepEqual(decodeStruct(DEV_INFO, bytes), info);
  assert.equal(hex(bytes.subarray(16, 20)), 'ffffffff');
  assert.equal(hex(bytes.subarray(24, 32)), '0800000000010000');
});

test('encodeStruct zeroes what it does not set and refuses values the C type cannot hold', () => {
  const bytes = new Uint8Array(PARAM_BASIC.size + 4).fill(0xaa);
  encodeStruct(PARAM_BASIC, { logicalBsShift: 9 }, bytes, 2);
  assert.equal(hex(bytes), 'aaaa' + '00000000' + '09' + '00'.repeat(27) + 'aaaa');
  for (const bad of [
    { logicalBsShift: 4096 },
    { maxSectors: -1 },
    { chunkSectors: 1.5 },
    { devSectors: 2 ** 60 },
  ]) {
    assert.throws(() => encodeStruct(PARAM_BASIC, bad, bytes), RangeError, JSON.stringify(bad));
  }
});

test('writeIoCmd writes what encodeStruct(IO_CMD) writes, at the SQE command offset only', () => {
  const sqe = new Uint8Array(64).fill(0xaa);
  writeIoCmd(view(sqe), 48, 2, 4095, -5, 0x7f00_dead_b000);
  const expected = new Uint8Array(IO_CMD.size);
  encodeStruct(IO_CMD, { qId: 2, tag: 4095, result: -5, addr: 0x7f00_dead_b000 }, expected);
  assert.equal(hex(sqe.subarray(48)), hex(expected));
  assert.equal(hex(expected), '0200' + 'ff0f' + 'fbffffff' + '00b0adde007f0000');
  assert.ok(sqe.subarray(0, 48).every((b) => b === 0xaa));
});

test('IoDescTable reads a descriptor as decodeStruct(IO_DESC) does', () => {
  const depth = 4;
  const mapping = new Uint8Array(depth * IO_DESC.size);
  const tag = 3;
  const desc = {
    opFlags: UBLK_IO_OP.WRITE | UBLK_IO_F.FUA,
    nrSectors: 8,
    startSector: 2 ** 40 + 5,
    addr: 0x7f00_0000_1000,
  };
  encodeStruct(IO_DESC, desc, mapping, tag * IO_DESC.size);
  // nr_zones is nr_sectors under another name (a union).
  assert.deepEqual(decodeStruct(IO_DESC, mapping, tag * IO_DESC.size), { ...desc, nrZones: 8 });
  const table = new IoDescTable(mapping);
  assert.equal(table.opFlags(tag), desc.opFlags);
  assert.equal(table.op(tag), UBLK_IO_OP.WRITE);
  assert.equal(table.nrSectors(tag), 8);
  assert.equal(table.startSector(tag), 2 ** 40 + 5);
  assert.equal(table.addr(tag), 0x7f00_0000_1000);
  assert.equal(table.op(tag - 1), UBLK_IO_OP.READ);
});

test('encodeParams sets len and types, places sections, and decodeParams reads them back', () => {
  const params = {
    basic: {
      attrs: UBLK_ATTR.VOLATILE_CACHE | UBLK_ATTR.FUA,
      logicalBsShift: 9,
      physicalBsShift: 12,
      ioOptShift: 12,
      ioMinShift: 9,
      maxSectors: 1024,
      chunkSectors: 0,
      devSectors: 2 ** 33,
      virtBoundaryMask: 0,
    },
    discard: {
      discardAlignment: 0,
      discardGranularity: 4096,
      maxDiscardSectors: 2048,
      maxWriteZeroesSectors: 2048,
      maxDiscardSegments: 1,
    },
  };
  const bytes = encodeParams(params);
  assert.equal(bytes.length, PARAMS.size);
  assert.deepEqual(decodeStruct(PARAMS, bytes), {
    len: PARAMS.size,
    types: UBLK_PARAM_TYPE.BASIC | UBLK_PARAM_TYPE.DISCARD,
  });
  assert.equal(hex(bytes.subarray(8, 16)), '0c000000' + '090c0c09');
  assert.equal(hex(bytes.subarray(56, 60)), '0100' + '0000');
  assert.deepEqual(decodeParams(bytes), params);
});

test('a GET_PARAMS request is a bare header; a short reply decodes what it holds', () => {
  assert.equal(hex(encodeParams({})), '98000000' + '00000000' + '00'.repeat(144));
  // 6.1 copies 64 bytes back; a devt bit that fell outside them is ignored rather than misread.
  const reply = encodeParams({ basic: { logicalBsShift: 9, physicalBsShift: 9 } }, 64);
  view(reply).setUint32(4, UBLK_PARAM_TYPE.BASIC | UBLK_PARAM_TYPE.DEVT, true);
  assert.deepEqual(Object.keys(decodeParams(reply)), ['basic']);
  assert.throws(() => encodeParams({ zoned: { maxOpenZones: 1 } }, 64), RangeError);
});

test('a devt section in a reply decodes', () => {
  const reply = encodeParams({}, 76);
  const v = view(reply);
  v.setUint32(4, UBLK_PARAM_TYPE.DEVT, true);
  [242, 0, 259, 1].forEach((n, i) => v.setUint32(60 + 4 * i, n, true));
  assert.deepEqual(decodeParams(reply), {
    devt: { charMajor: 242, charMinor: 0, diskMajor: 259, diskMinor: 1 },
  });
});

test('descriptor mmap offsets stride by the maximum depth, whatever the page size', () => {
  assert.equal(ioDescMmapOffset(0, 4096), 0);
  assert.equal(ioDescMmapOffset(1, 4096), 4096 * 24);
  assert.equal(ioDescMmapOffset(3, 65536), 3 * 131072);
  assert.equal(ioDescMmapLength(128, 4096), 4096);
  assert.equal(ioDescMmapLength(4096, 65536), 131072);
});

test('feature and state names for display', () => {
  assert.deepEqual(featureNames(UBLK_F.USER_RECOVERY + UBLK_F.ZONED + 2 ** 40), [
    'USER_RECOVERY',
    'ZONED',
    'bit40',
  ]);
  assert.deepEqual(featureNames(0), []);
  assert.equal(deviceStateName(2), 'QUIESCED');
  assert.equal(deviceStateName(9), 'unknown(9)');
});
