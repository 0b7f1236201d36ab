import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, existsSync, fstatSync, openSync } from 'node:fs';
import { test } from 'node:test';
import { isOnDevice, ownFdOnDevice, processExists, processRunning } from '../../src/processes.js';
import { majorMinor } from '../../src/sys.js';

test('processExists and processRunning: this process is, an exited one is not', async () => {
  assert.ok(processExists(process.pid) && processRunning(process.pid));
  const child = spawn(process.execPath, ['-e', '']);
  await once(child, 'exit');
  assert.equal(processExists(child.pid!), false, 'reaped');
  assert.equal(processRunning(child.pid!), false);
  assert.equal(processExists(0), false);
  assert.equal(processExists(-1), false);
});

test('a zombie still exists as a pid but no longer holds anything', async () => {
  // The child exits at once; its parent sleeps without reaping it (perl-base is in every Debian).
  const parent = spawn('perl', [
    '-e',
    'my $p = fork(); exit 0 unless $p; $| = 1; print "$p\\n"; sleep 5',
  ]);
  const [chunk] = (await once(parent.stdout, 'data')) as [Buffer];
  const zombie = Number(chunk.toString().trim());
  try {
    for (let i = 0; i < 100 && processExists(zombie); i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(processExists(zombie), false);
    assert.ok(existsSync(`/proc/${zombie}`), 'still a pid: a zombie, not reaped');
  } finally {
    parent.kill();
  }
});

test('isOnDevice: a node of the device by its rdev, any file on it by its dev', () => {
  const devices = new Set(['259:0', '259:1']);
  const file = (dev: number, rdev: number, block: boolean) => ({
    dev,
    rdev,
    isBlockDevice: () => block,
  });
  const ublkb0 = (259 << 8) | 0; // old-style encoding: major << 8 | minor, minor < 256
  const partition = (259 << 8) | 1;
  const devtmpfs = 5;
  assert.equal(isOnDevice(file(devtmpfs, ublkb0, true), devices), true, 'the disk node');
  assert.equal(isOnDevice(file(devtmpfs, partition, true), devices), true, 'a partition node');
  assert.equal(isOnDevice(file(partition, 0, false), devices), true, 'a file on its file system');
  assert.equal(isOnDevice(file(devtmpfs, 0, false), devices), false, 'another file');
  // A character device with the same numbers is another device (/dev/ublkc0 is not /dev/ublkb0).
  assert.equal(isOnDevice(file(devtmpfs, ublkb0, false), devices), false, 'a char node');
});

test('ownFdOnDevice finds the fd of a file on a device, and none for an unknown device', () => {
  const fd = openSync('/dev/null', 'r');
  try {
    const nullDevice = new Set([majorMinor(fstatSync(fd).dev)]);
    // /dev/null lives on devtmpfs: the fd is on that file system's device, as is /dev itself.
    assert.ok(ownFdOnDevice(nullDevice) !== undefined);
    assert.equal(ownFdOnDevice(new Set(['4095:1048575'])), undefined);
  } finally {
    closeSync(fd);
  }
});
