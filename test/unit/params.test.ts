import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UserError } from '../../src/errors.js';
import { UBLK_ATTR } from '../../src/ublk/ublk-cmd.js';
import { paramsFor } from '../../src/ublk/control/params.js';

test('defaults: 512-byte blocks, no attrs, no discard section', () => {
  const p = paramsFor(2 ** 30, {}, 524288, 4096);
  assert.deepEqual(p.basic, {
    attrs: 0,
    logicalBsShift: 9,
    physicalBsShift: 9,
    ioMinShift: 9,
    ioOptShift: 9,
    maxSectors: 1024,
    devSectors: 2 ** 21,
  });
  assert.equal(p.discard, undefined);
});

test('capabilities become attrs and a single-segment discard section', () => {
  const p = paramsFor(
    2 ** 30,
    {
      logicalBlockSize: 4096,
      readOnly: true,
      rotational: true,
      volatileCache: true,
      fua: true,
      discard: true,
      writeZeroes: { maxBytes: 2 ** 20 },
      maxIoBytes: 65536,
    },
    524288,
    4096,
  );
  assert.equal(
    p.basic?.attrs,
    UBLK_ATTR.READ_ONLY | UBLK_ATTR.ROTATIONAL | UBLK_ATTR.VOLATILE_CACHE | UBLK_ATTR.FUA,
  );
  assert.equal(p.basic?.logicalBsShift, 12);
  assert.equal(p.basic?.maxSectors, 128);
  assert.deepEqual(p.discard, {
    discardAlignment: 0,
    discardGranularity: 4096,
    maxDiscardSectors: 0xffffffff,
    maxWriteZeroesSectors: 2048,
    maxDiscardSegments: 1,
  });
});

test('what the kernel would refuse is refused in words', () => {
  for (const [size, caps] of [
    [0, {}],
    [1000, {}],
    [4096 * 3 + 512, { logicalBlockSize: 4096 }],
    [2 ** 20, { logicalBlockSize: 256 }],
    [2 ** 20, { logicalBlockSize: 8192 }],
    [2 ** 20, { logicalBlockSize: 3000 }],
    [2 ** 20, { logicalBlockSize: 4096, physicalBlockSize: 512 }],
  ] as const) {
    assert.throws(() => paramsFor(size, caps, 524288, 4096), UserError, JSON.stringify(caps));
  }
});
