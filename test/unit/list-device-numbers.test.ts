import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deviceNumbers } from '../../src/cli/list.js';

test('deviceNumbers: "major:minor" of a node, "0:0" for one that does not exist', () => {
  assert.equal(deviceNumbers('/dev/null'), '1:3');
  assert.equal(deviceNumbers('/dev/ublkc-no-such-device'), '0:0');
});
