/**
 * DeviceOptions' combinations that exclude each other are compile errors: each `@ts-expect-error`
 * below fails the build if the line it marks ever compiles. The test itself only makes sure the
 * file is part of the build.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { DeviceOptions, RecoverOptions } from '../../src/index.js';

const fine: DeviceOptions[] = [
  { target: 'null' },
  { target: 'loop', args: { file: '/x' }, dataPath: 'user-copy', batch: true, recovery: true },
  { target: 'null', needGetData: true, dataPath: 'copy' },
  { target: 'null', needGetData: false, dataPath: 'manual-zero-copy', batch: true },
  { target: 'null', unprivileged: true, dataPath: 'auto' },
  { target: 'null', recovery: { reissue: true }, completeInTask: true, partitionScan: false },
];

export const refusedAtCompileTime = (): DeviceOptions[] => [
  // @ts-expect-error a typo of an option
  { target: 'null', dataPth: 'copy' },
  // @ts-expect-error raw flags are not an option
  { target: 'null', flags: 64 },
  // @ts-expect-error not a data path
  { target: 'null', dataPath: 'zerocopy' },
  // @ts-expect-error needGetData is for the copy data path only
  { target: 'null', needGetData: true, dataPath: 'user-copy' },
  // @ts-expect-error needGetData is for the copy data path only
  { target: 'null', needGetData: true, dataPath: 'auto-zero-copy' },
  // @ts-expect-error batch excludes needGetData
  { target: 'null', needGetData: true, batch: true },
  // @ts-expect-error an unprivileged device has no user copy
  { target: 'null', unprivileged: true, dataPath: 'user-copy' },
  // @ts-expect-error an unprivileged device has no manual zero copy
  { target: 'null', unprivileged: true, dataPath: 'manual-zero-copy' },
  // @ts-expect-error an unprivileged device has no recovery
  { target: 'null', unprivileged: true, recovery: true },
];

export const recoverRefused = (): RecoverOptions[] => [
  // @ts-expect-error the data path is the device's own, not recover's
  { target: 'null', dataPath: 'copy' },
];

test('DeviceOptions: every combination above compiles or is refused as marked', () => {
  assert.equal(fine.length, 6);
});
