import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ADD_DEFAULTS } from '../../src/cli/commands.js';
import {
  isProcessAlive,
  readRecord,
  recordedDeviceIds,
  removeRecord,
  writeRecord,
  type DeviceRecord,
} from '../../src/cli/run-dir.js';

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'rundir-'));
  process.env.UBLK_RUN_DIR = join(dir, 'ublksrvd');
});
after(() => rmSync(dir, { recursive: true, force: true }));

const record: DeviceRecord = {
  devId: 7,
  pid: process.pid,
  queues: [{ tid: 1, affinity: [0] }],
  target: { name: 'null' },
  targetSource: 'null',
  options: {
    ...ADD_DEFAULTS,
    type: 'null',
    devId: 7,
    debugMask: 0,
    dataPath: 'auto',
    uringComp: false,
    needGetData: false,
    userRecovery: false,
    userRecoveryReissue: false,
    userRecoveryFailIo: false,
    noAutoPartScan: false,
    unprivileged: false,
    foreground: false,
    targetArgs: {},
  },
};

test('records round-trip, list in order, and leave no temp files', () => {
  writeRecord(record);
  writeRecord({ ...record, devId: 2 });
  assert.deepEqual(readRecord(7), record);
  assert.deepEqual(recordedDeviceIds(), [2, 7]);
  assert.deepEqual(readdirSync(process.env.UBLK_RUN_DIR!).sort(), ['2.json', '7.json']);
  removeRecord(2);
  removeRecord(2);
  assert.deepEqual(recordedDeviceIds(), [7]);
});

test('a damaged or missing record reads as absent, never throws', () => {
  writeFileSync(join(process.env.UBLK_RUN_DIR!, '9.json'), '{not json');
  assert.equal(readRecord(9), undefined);
  assert.equal(readRecord(12345), undefined);
});

test('isProcessAlive', () => {
  assert.equal(isProcessAlive(process.pid), true);
  assert.equal(isProcessAlive(0), false);
  assert.equal(isProcessAlive(2 ** 22 + 1), false);
});
