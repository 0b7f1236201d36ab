/** The user_data layout of a queue thread's ring (src/ublk/queue/user-data.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  encodeUserData,
  USER_DATA_INDEX_LIMIT,
  USER_DATA_KINDS,
  userDataIndex,
  userDataKind,
  userDataRange,
  UD_TAG_COMMAND,
  UD_TARGET_IO,
  type UserDataKind,
} from '../../src/ublk/queue/user-data.js';

const KINDS = Array.from({ length: USER_DATA_KINDS }, (_, kind) => kind as UserDataKind);

test('user_data: the kinds’ ranges do not overlap and stay below 2^31 (small integers)', () => {
  const ranges = KINDS.map((kind) => ({ kind, ...userDataRange(kind) })).sort(
    (a, b) => a.first - b.first,
  );
  for (let i = 1; i < ranges.length; i++) {
    assert.ok(ranges[i - 1].last < ranges[i].first, `kinds ${ranges[i - 1].kind} and ${i}`);
  }
  for (const { last } of ranges) assert.ok(Number.isInteger(last) && last < 2 ** 31);
  // A tag's command keeps its tag as its user_data.
  assert.equal(encodeUserData(UD_TAG_COMMAND, 7), 7);
});

test('user_data: decode(encode(kind, index)) gives them back, at the edges of each range', () => {
  for (const kind of KINDS) {
    const limit = USER_DATA_INDEX_LIMIT[kind];
    for (const index of [0, 1, 4095, limit - 1]) {
      const userData = encodeUserData(kind, index);
      assert.equal(userDataKind(userData), kind);
      assert.equal(userDataIndex(userData), index);
      const { first, last } = userDataRange(kind);
      assert.ok(userData >= first && userData <= last);
    }
  }
});

test('user_data: an index out of its kind’s range is refused', () => {
  for (const kind of KINDS) {
    for (const index of [-1, 0.5, USER_DATA_INDEX_LIMIT[kind], 2 ** 40, NaN]) {
      assert.throws(() => encodeUserData(kind, index), RangeError, `kind ${kind}, ${index}`);
    }
  }
  assert.throws(() => encodeUserData(UD_TARGET_IO, 2 ** 27), RangeError);
  assert.throws(() => encodeUserData(USER_DATA_KINDS as UserDataKind, 0), RangeError);
  // What no kind encodes decodes to no kind.
  for (const userData of [USER_DATA_KINDS * 2 ** 27, 2 ** 31, 2 ** 32 - 1]) {
    assert.ok(userDataKind(userData) >= USER_DATA_KINDS);
  }
});
