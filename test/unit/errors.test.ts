import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { test } from 'node:test';
import {
  checkResult,
  ERROR_CODES,
  errnoError,
  errnoName,
  isErrnoError,
  isUserError,
  UserError,
} from '../../src/errors.js';
import { ControlError, isControlError } from '../../src/ublk/control/control.js';

const { EBUSY, EEXIST, ENOENT } = constants.errno;

test('errnoName: the name of an errno, and a number where there is none', () => {
  assert.equal(errnoName(ENOENT), 'ENOENT');
  assert.equal(errnoName(EBUSY), 'EBUSY');
  assert.equal(errnoName(99999), 'errno 99999');
});

test('errnoError: positive errno, its name as code, the operation, and where it happened', () => {
  const plain = errnoError('io_uring_enter', EBUSY);
  assert.equal(plain.message, 'io_uring_enter: EBUSY');
  assert.equal(plain.code, 'EBUSY');
  assert.equal(plain.errno, EBUSY);
  assert.equal(plain.syscall, 'io_uring_enter');
  const placed = errnoError('COMMIT_AND_FETCH_REQ', EBUSY, { devId: 3, queueId: 1, tag: 7 });
  assert.equal(placed.message, 'COMMIT_AND_FETCH_REQ: EBUSY (device 3 queue 1 tag 7)');
  assert.deepEqual([placed.devId, placed.queueId, placed.tag], [3, 1, 7]);
  assert.throws(() => errnoError('io_uring_enter', -EBUSY), RangeError);
});

test('checkResult: a negative ring result throws its errno error, anything else passes', () => {
  assert.equal(checkResult(4096, 'read'), 4096);
  assert.equal(checkResult(0, 'read'), 0);
  assert.throws(
    () => checkResult(-EBUSY, 'io_uring_enter', { queueId: 0 }),
    (err: unknown) =>
      isErrnoError(err, 'EBUSY') && err.errno === EBUSY && err.message.endsWith('(queue 0)'),
  );
});

test("isErrnoError: ours and Node's (negative errno) alike, by code", () => {
  let nodeError: unknown;
  try {
    readFileSync('/nonexistent/ublk-ts');
  } catch (err) {
    nodeError = err;
  }
  assert.ok(isErrnoError(nodeError, 'ENOENT'));
  assert.ok(!isErrnoError(nodeError, 'EBUSY'));
  assert.ok(!isErrnoError(new Error('plain')));
  assert.ok(!isErrnoError({ errno: 2, code: 'ENOENT' }), 'not an Error');
});

test('UserError: a stable code, and recognised across copies of the package', async () => {
  const copy = (await import(
    new URL('../../src/errors.js?another-copy', import.meta.url).href
  )) as typeof import('../../src/errors.js');
  assert.notEqual(copy.UserError, UserError, 'a second module instance');
  const foreign = new copy.UserError('from another copy');
  assert.ok(foreign instanceof UserError);
  assert.ok(isUserError(foreign));
  assert.ok(new UserError('ours') instanceof copy.UserError);
  assert.equal(new UserError('x').code, ERROR_CODES.USER);
  assert.equal(
    new UserError('x', { code: ERROR_CODES.INVALID_TARGET }).code,
    'UBLK_ERR_INVALID_TARGET',
  );
  assert.ok(!(new Error('plain') instanceof UserError));
  assert.ok(!isUserError(null));
});

test('ControlError: an ErrnoError with a stable code, exported, and recognised across copies of the package', async () => {
  const index = await import('../../src/index.js');
  assert.equal(index.ControlError, ControlError);
  assert.equal(index.isControlError, isControlError);
  const copy = (await import(
    new URL('../../src/ublk/control/control.js?another-copy', import.meta.url).href
  )) as typeof import('../../src/ublk/control/control.js');
  assert.notEqual(copy.ControlError, ControlError, 'a second module instance');
  const foreign = new copy.ControlError('ADD_DEV', 4, EEXIST);
  assert.ok(foreign instanceof ControlError);
  assert.ok(isControlError(foreign, 'EEXIST'));
  assert.equal(isControlError(foreign, 'ENODEV'), false);
  assert.ok(new ControlError('DEL_DEV', 1, EBUSY) instanceof copy.ControlError);
  assert.ok(isErrnoError(foreign, 'EEXIST'));
  assert.deepEqual(
    { code: foreign.code, errno: foreign.errno, syscall: foreign.syscall, devId: foreign.devId },
    { code: 'EEXIST', errno: EEXIST, syscall: 'ublk ADD_DEV', devId: 4 },
  );
  assert.equal(foreign.message, 'ADD_DEV of ublk device 4 failed: EEXIST');
  assert.ok(!(errnoError('open', EEXIST) instanceof ControlError));
  assert.ok(!(new UserError('x') instanceof ControlError));
  assert.ok(!isControlError(undefined));
});
