/**
 * The data path, resolved once from the options, the target's capabilities and GET_FEATURES; the
 * refusals in the API's words and in the CLI's; the run-time check of the options' keys.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isUserError } from '../../src/errors.js';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';
import {
  dataPathOf,
  dataPathOfFlags,
  isDeviceOptionError,
  resolveDataPath,
  type DataPathRequest,
} from '../../src/ublk/device/data-path.js';
import { checkDeviceOptions, checkRecoverOptions } from '../../src/ublk/device/options.js';
import { inCliWords } from '../../src/cli/device-options.js';
import type { Capabilities } from '../../src/ublk/target/contract.js';

const ALL = UBLK_F.AUTO_BUF_REG | UBLK_F.SUPPORT_ZERO_COPY | UBLK_F.USER_COPY | UBLK_F.BATCH_IO;
const request = (r: Partial<DataPathRequest>): DataPathRequest => ({
  dataPath: 'auto',
  batch: false,
  needGetData: false,
  unprivileged: false,
  recovery: false,
  ...r,
});
const target = (zeroCopy: Capabilities['zeroCopy']) => ({
  capabilities: { zeroCopy },
  servedBy: 'target t',
});

test('auto: auto zero copy for a zeroCopy target where the kernel has AUTO_BUF_REG, else copy', () => {
  const mode = (r: Partial<DataPathRequest>, zc: Capabilities['zeroCopy'], features?: number) =>
    resolveDataPath(request(r), target(zc), features).mode;
  assert.equal(mode({}, true, ALL), 'auto-zero-copy');
  assert.equal(mode({}, true, UBLK_F.SUPPORT_ZERO_COPY), 'copy');
  assert.equal(mode({}, true, undefined), 'copy', '6.1: no GET_FEATURES');
  assert.equal(mode({}, 'handlers', ALL), 'copy', 'nbd only when asked');
  assert.equal(mode({}, false, ALL), 'copy');
  assert.equal(mode({ needGetData: true }, true, ALL), 'copy');
  assert.equal(mode({ unprivileged: true }, true, ALL), 'copy');
  assert.equal(mode({ dataPath: 'copy' }, true, ALL), 'copy');
});

test("zero-copy (ublksrv 1.8's -z): AUTO_BUF_REG where the kernel has it, else manual; nbd only the auto form", () => {
  const zc = { dataPath: 'zero-copy' } as const;
  assert.deepEqual(resolveDataPath(request(zc), target(true), ALL), dataPathOf('auto-zero-copy'));
  assert.deepEqual(
    resolveDataPath(request(zc), target(true), UBLK_F.SUPPORT_ZERO_COPY),
    dataPathOf('manual-zero-copy'),
  );
  assert.equal(resolveDataPath(request(zc), target('handlers'), ALL).mode, 'auto-zero-copy');
  assert.throws(
    () => resolveDataPath(request(zc), target('handlers'), UBLK_F.SUPPORT_ZERO_COPY),
    /^UserError: zero copy \(dataPath 'zero-copy'\) needs UBLK_F_AUTO_BUF_REG \(Linux 6\.16\+\)/,
  );
  assert.throws(
    () => resolveDataPath(request(zc), target(true), undefined),
    /^UserError: zero copy \(dataPath 'zero-copy'\) needs UBLK_F_SUPPORT_ZERO_COPY \(Linux 6\.15\+\)/,
  );
  assert.throws(
    () =>
      resolveDataPath(
        request({ ...zc, unprivileged: true }),
        target(true),
        UBLK_F.SUPPORT_ZERO_COPY,
      ),
    /^UserError: dataPath 'zero-copy' excludes unprivileged/,
    'manual zero copy, which an unprivileged device cannot have',
  );
  assert.throws(
    () => resolveDataPath(request({ ...zc, unprivileged: true }), target(true), ALL),
    /^UserError: dataPath 'zero-copy' excludes unprivileged: the kernel allows zero copy to root only$/,
    'auto zero copy, which an unprivileged device cannot have either',
  );
});

test('every refusal: exclusions, the target, the kernel; in the API words and in the CLI flags', () => {
  const cases: [Partial<DataPathRequest>, Capabilities['zeroCopy'], number, RegExp, RegExp][] = [
    [
      { dataPath: 'user-copy', needGetData: true },
      true,
      ALL,
      /^dataPath 'user-copy' excludes needGetData: /,
      /^--usercopy and -g 1 exclude each other: /,
    ],
    [
      { batch: true, needGetData: true },
      true,
      ALL,
      /^batch excludes needGetData: /,
      /^-b and -g 1 exclude each other: /,
    ],
    [
      { dataPath: 'manual-zero-copy', unprivileged: true },
      true,
      ALL,
      /^dataPath 'manual-zero-copy' excludes unprivileged: /,
      /^--manual_zc and --unprivileged exclude each other: /,
    ],
    [
      { dataPath: 'auto-zero-copy', unprivileged: true },
      true,
      ALL,
      /^dataPath 'auto-zero-copy' excludes unprivileged: /,
      /^--auto_zc and --unprivileged exclude each other: /,
    ],
    [
      { recovery: true, unprivileged: true },
      true,
      ALL,
      /^recovery excludes unprivileged: /,
      /^-r 1 and --unprivileged exclude each other: /,
    ],
    [
      { dataPath: 'auto-zero-copy' },
      false,
      ALL,
      /^target t handles request data in JavaScript, so it cannot use auto zero copy \(dataPath 'auto-zero-copy'\)/,
      /^target t handles request data in JavaScript, so it cannot use auto zero copy \(--auto_zc\)/,
    ],
    [
      { dataPath: 'manual-zero-copy' },
      'handlers',
      ALL,
      /^target t moves request data itself, .*: use dataPath 'auto-zero-copy', not dataPath 'manual-zero-copy'$/,
      /^target t moves request data itself, .*: use --auto_zc, not --manual_zc$/,
    ],
    [
      { dataPath: 'user-copy' },
      false,
      UBLK_F.BATCH_IO,
      /^user copy \(dataPath 'user-copy'\) needs UBLK_F_USER_COPY \(Linux 6\.5\+\), which this kernel's ublk driver lacks$/,
      /^user copy \(--usercopy\) needs UBLK_F_USER_COPY \(Linux 6\.5\+\)/,
    ],
    [
      { batch: true },
      true,
      UBLK_F.USER_COPY,
      /^batch IO \(batch\) needs UBLK_F_BATCH_IO \(Linux 7\.0\+\)/,
      /^batch IO \(-b\) needs UBLK_F_BATCH_IO \(Linux 7\.0\+\)/,
    ],
  ];
  for (const [r, zc, features, api, cli] of cases) {
    let caught: unknown;
    try {
      resolveDataPath(request(r), target(zc), features);
    } catch (err) {
      caught = err;
    }
    assert.ok(isDeviceOptionError(caught) && isUserError(caught), JSON.stringify(r));
    assert.match(caught.message, api);
    assert.ok(!caught.message.includes('\n'));
    const worded = inCliWords(caught) as Error;
    assert.ok(isUserError(worded));
    assert.match(worded.message, cli);
  }
});

test('a recovered device runs the data path its flags say', () => {
  for (const mode of ['copy', 'user-copy', 'auto-zero-copy', 'manual-zero-copy'] as const) {
    for (const batch of [false, true]) {
      const flags = dataPathOf(mode, batch).flags + UBLK_F.USER_RECOVERY + UBLK_F.CMD_IOCTL_ENCODE;
      assert.deepEqual(dataPathOfFlags(flags), dataPathOf(mode, batch));
    }
  }
});

test('options: an unknown key (flags) or a value of the wrong kind is refused in one line', () => {
  const refused = (check: () => void, pattern: RegExp) =>
    assert.throws(check, (err: unknown) => {
      assert.ok(isUserError(err));
      assert.equal(err.code, 'UBLK_ERR_USER');
      assert.ok(!err.message.includes('\n'));
      assert.match(err.message, pattern);
      return true;
    });
  refused(
    () => checkDeviceOptions({ target: 'null', flags: UBLK_F.AUTO_BUF_REG }),
    /^createDevice: unknown option 'flags' \(known: target, /,
  );
  refused(
    () => checkDeviceOptions({ target: 'null', zeroCopy: true }),
    /unknown option 'zeroCopy'/,
  );
  refused(() => checkDeviceOptions({ target: 'null', dataPath: 'zc' }), /option dataPath must be/);
  refused(() => checkDeviceOptions({ target: 'null', batch: 1 }), /option batch must be true/);
  refused(
    () => checkDeviceOptions({ target: 'null', recovery: { reissue: true, other: 1 } }),
    /option recovery must be/,
  );
  refused(() => checkDeviceOptions({ args: {} }), /option target is required/);
  refused(
    () => checkRecoverOptions({ target: 'null', dataPath: 'copy' }),
    /^recoverDevice: unknown option 'dataPath'/,
  );
  checkDeviceOptions({
    target: 'null',
    dataPath: 'copy',
    batch: false,
    recovery: { reissue: true },
    needGetData: true,
    partitionScan: false,
    id: undefined,
  });
  checkRecoverOptions({ target: 'null', startEmpty: true, waitMs: 10 });
});
