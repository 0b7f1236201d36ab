import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatFeatures } from '../../src/cli/features.js';
import { UserError } from '../../src/errors.js';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';
import {
  describeFeature,
  flagsOf,
  hasFlag,
  missingFeature,
} from '../../src/ublk/control/feature-flags.js';

// What a 7.3 kernel's GET_FEATURES returns: bits 0..20.
const LINUX_7_3 = 0x1fffff;

test('features names every bit 7.3 reports, ublksrv-style, one line each', () => {
  const lines = formatFeatures(LINUX_7_3).trimEnd().split('\n');
  assert.equal(lines[0], 'ublk_drv features: 0x1fffff');
  const names = lines.slice(1).map((line) => {
    const m = /^\t(\S+) *: 0x([0-9a-f]+)$/.exec(line);
    assert.ok(m, `a feature line: ${JSON.stringify(line)}`);
    return [m[1], parseInt(m[2], 16)] as const;
  });
  assert.deepEqual(
    names.map(([, value]) => value),
    Array.from({ length: 21 }, (_, bit) => 2 ** bit),
  );
  assert.deepEqual(
    names.map(([name]) => name),
    [
      'ZERO_COPY',
      'COMP_IN_TASK',
      'GET_DATA',
      'USER_RECOVERY',
      'RECOVERY_REISSUE',
      'UNPRIVILEGED_DEV',
      'CMD_IOCTL_ENCODE',
      'USER_COPY',
      'ZONED',
      'RECOVERY_FAIL_IO',
      'UPDATE_SIZE',
      'AUTO_ZC',
      'QUIESCE',
      'PER_IO_DAEMON',
      'BUF_REG_OFF_DAEMON',
      'BATCH_IO',
      'INTEGRITY',
      'SAFE_STOP_DEV',
      'NO_AUTO_PART_SCAN',
      'SHMEM_ZC',
      'IO_DESC_SIZE',
    ],
  );
});

test('features pads names to 20 columns as ublksrv does, and calls a bit beyond 7.3 unknown', () => {
  assert.equal(
    formatFeatures(0x2 + 2 ** 21),
    'ublk_drv features: 0x200002\n\tCOMP_IN_TASK        : 0x2\n\tunknown             : 0x200000\n',
  );
});

test('hasFlag and flagsOf read the u64 mask past bit 31', () => {
  const mask = 2 ** 40 + UBLK_F.SAFE_STOP_DEV + UBLK_F.USER_RECOVERY;
  assert.ok(hasFlag(mask, 2 ** 40));
  assert.ok(hasFlag(mask, UBLK_F.SAFE_STOP_DEV));
  assert.ok(!hasFlag(mask, UBLK_F.NO_AUTO_PART_SCAN));
  assert.deepEqual(flagsOf(mask), [UBLK_F.USER_RECOVERY, UBLK_F.SAFE_STOP_DEV, 2 ** 40]);
  assert.deepEqual(flagsOf(0), []);
});

test('a missing feature is named with the first kernel that has it, in one line', () => {
  assert.equal(describeFeature(UBLK_F.QUIESCE), 'QUIESCE (Linux 6.16+)');
  assert.equal(describeFeature(UBLK_F.NO_AUTO_PART_SCAN), 'NO_AUTO_PART_SCAN (Linux 7.0+)');
  assert.equal(describeFeature(UBLK_F.NEED_GET_DATA), 'NEED_GET_DATA', 'a flag every kernel has');
  const err = missingFeature('del --safe', UBLK_F.SAFE_STOP_DEV);
  assert.ok(err instanceof UserError);
  assert.equal(
    err.message,
    "del --safe needs UBLK_F_SAFE_STOP_DEV (Linux 7.0+), which this kernel's ublk driver lacks",
  );
});
