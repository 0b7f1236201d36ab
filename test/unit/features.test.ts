import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UBLK_F, UBLK_F_NO_AUTO_PART_SCAN, UBLK_F_SAFE_STOP_DEV } from '../../src/ublk/abi.js';
import { describeFeature, flagsOf, hasFlag, missingFeature } from '../../src/ublk/features.js';
import { UserError } from '../../src/errors.js';

test('hasFlag and flagsOf read the u64 mask past bit 31', () => {
  const mask = 2 ** 40 + UBLK_F_SAFE_STOP_DEV + UBLK_F.USER_RECOVERY;
  assert.ok(hasFlag(mask, 2 ** 40));
  assert.ok(hasFlag(mask, UBLK_F_SAFE_STOP_DEV));
  assert.ok(!hasFlag(mask, UBLK_F_NO_AUTO_PART_SCAN));
  assert.deepEqual(flagsOf(mask), [UBLK_F.USER_RECOVERY, UBLK_F_SAFE_STOP_DEV, 2 ** 40]);
  assert.deepEqual(flagsOf(0), []);
});

test('a missing feature is named with the first kernel that has it, in one line', () => {
  assert.equal(describeFeature(UBLK_F.QUIESCE), 'QUIESCE (Linux 6.16+)');
  assert.equal(describeFeature(UBLK_F_NO_AUTO_PART_SCAN), 'NO_AUTO_PART_SCAN (Linux 7.0+)');
  assert.equal(describeFeature(UBLK_F.NEED_GET_DATA), 'NEED_GET_DATA', 'a flag every kernel has');
  const err = missingFeature('del --safe', UBLK_F_SAFE_STOP_DEV);
  assert.ok(err instanceof UserError);
  assert.equal(
    err.message,
    "del --safe needs UBLK_F_SAFE_STOP_DEV (Linux 7.0+), which this kernel's ublk driver lacks",
  );
});
