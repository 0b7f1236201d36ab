/**
 * The loop target through the CLI, as a user runs it: `ublk add -t loop -f FILE ...`. Backing
 * files live in the VM's /tmp, a tmpfs (which refuses O_DIRECT on Linux 6.1 and takes it on newer
 * kernels: the test asks the kernel which, and expects the default mode to follow); O_DIRECT is
 * also exercised on a kernel loop device and on a file of an ext4 file system. Every `ublk` command costs a few seconds of Node start-up under emulation,
 * so each test makes one device and checks several things on it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { basename, join } from 'node:path';
import { after, before, test } from 'node:test';
import { SYNC_LOG_ENV } from '../../src/targets/loop.js';
import { delAll, sh } from './support/cli.js';
import {
  allocatedBytes,
  assertFiles,
  assertFsClean,
  assertSameBytes,
  blockStat,
  fioSuite,
  fioSummary,
  fioVerify,
  mkfsAndMount,
  mount,
  readAt,
  umount,
  withDevice,
  writeAt,
  writeRandomFiles,
} from './support/targets.js';

const MiB = 2 ** 20;
let dir: string;

before(() => {
  dir = mkdtempSync('/tmp/ublk-loop-test-');
  assert.equal(sh('stat', ['-f', '-c', '%T', dir]).trim(), 'tmpfs', '/tmp is a tmpfs');
});
after(() => {
  delAll();
  rmSync(dir, { recursive: true, force: true });
});

/** Bytes of a file, read through the page cache (the loop daemon's view on tmpfs). */
function readRange(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const data = Buffer.alloc(length);
    assert.equal(readSync(fd, data, 0, length, offset), length);
    return data;
  } finally {
    closeSync(fd);
  }
}

/** Whether the kernel lets `path` be opened with O_DIRECT (6.1's tmpfs refuses it). */
function takesODirect(path: string): boolean {
  try {
    closeSync(openSync(path, constants.O_RDWR | constants.O_DIRECT));
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return false;
    throw e;
  }
}

function backingFile(name: string, size: number): string {
  const path = join(dir, name);
  rmSync(path, { force: true });
  writeFileSync(path, '');
  truncateSync(path, size);
  return path;
}

test('loop on a tmpfs file: ext4 with 64 MiB of files written by a default device, read back by a --buffered_io -q 2 one after del; then fio', async (t) => {
  const file = backingFile('fs.img', 256 * MiB);
  const sums = await withDevice(['-t', 'loop', '-f', file], (_id, dev, added) => {
    // Where tmpfs refuses O_DIRECT at open (6.1), the default falls back to buffered IO and
    // says so; where it takes it, the default is O_DIRECT.
    assert.deepEqual(added.target, {
      backing_file: file,
      direct_io: takesODirect(file) ? 1 : 0,
      offset: 0,
      name: 'loop',
      type: 1,
      dev_size: 256 * MiB,
    });
    const mnt = mkfsAndMount(dev);
    try {
      return writeRandomFiles(mnt, 64 * MiB, 16);
    } finally {
      umount(mnt);
    }
  });
  // A new device (and daemon) on the same file, in the other mode: everything is still there.
  const again = ['-t', 'loop', '-f', file, '--buffered_io', '-q', '2'];
  await withDevice(again, async (_id, dev, added) => {
    assert.equal(added.target.direct_io, 0);
    assert.equal(added.nr_hw_queues, 2);
    assertFsClean(dev);
    const mnt = mount(dev);
    try {
      assertFiles(mnt, sums);
    } finally {
      umount(mnt);
    }
    // Every `ublk add` costs seconds under emulation: the fio runs use this device too.
    await fioSuite(t, dev);
  });
});

test('loop --offset on a tmpfs file: placement, discard, write zeroes, reads past a shrunken end', async (t) => {
  const file = backingFile('offset.img', 65 * MiB);
  const base = MiB; // --offset 2048 sectors
  await withDevice(['-t', 'loop', '-f', file, '--offset', '2048'], async (_id, dev, { target }) => {
    assert.equal(target.offset, 2048);
    assert.equal(target.dev_size, 64 * MiB);
    assert.equal(Number(sh('blockdev', ['--getsize64', dev]).trim()), 64 * MiB);
    const zeros = Buffer.alloc(8 * MiB);
    const fileAt = (offset: number, length: number) => readRange(file, base + offset, length);

    await t.test('bytes written to the device are in the file after the offset, and back', () => {
      const data = randomBytes(4 * MiB);
      writeAt(dev, 40 * MiB, data);
      assertSameBytes(fileAt(40 * MiB, 4 * MiB), data, 'file after a device write');
      assert.ok(
        readRange(file, 0, base).every((b) => b === 0),
        'offset untouched',
      );
      const other = randomBytes(MiB);
      writeAt(file, base + 50 * MiB, other, { flags: 'sync' });
      assertSameBytes(readAt(dev, 50 * MiB, MiB), other, 'device read of what the file holds');
    });

    await t.test('discard punches holes; write zeroes reads back zeros, unmapped or not', () => {
      const name = basename(dev);
      assert.ok(Number(readFileSync(`/sys/block/${name}/queue/discard_max_bytes`, 'utf8')) > 0);
      assert.ok(
        Number(readFileSync(`/sys/block/${name}/queue/write_zeroes_max_bytes`, 'utf8')) > 0,
      );
      writeAt(dev, 0, randomBytes(24 * MiB));
      const written = allocatedBytes(file);
      assert.ok(written >= 24 * MiB, `24 MiB allocated (${written})`);

      // DISCARD -> fallocate(PUNCH_HOLE): the blocks go away.
      sh('blkdiscard', ['-f', '-o', '0', '-l', String(8 * MiB), dev]);
      assert.equal(allocatedBytes(file), written - 8 * MiB, 'discard freed 8 MiB');
      assertSameBytes(readAt(dev, 0, 8 * MiB), zeros, 'discarded range');
      assertSameBytes(fileAt(0, 8 * MiB), zeros, 'file range');

      // fallocate -p on the device: a WRITE_ZEROES that may unmap -> a hole too.
      sh('fallocate', ['-p', '-o', String(8 * MiB), '-l', String(8 * MiB), dev]);
      assert.equal(allocatedBytes(file), written - 16 * MiB, 'write-zeroes (unmap) freed 8 MiB');
      assertSameBytes(readAt(dev, 8 * MiB, 8 * MiB), zeros, 'zeroed range (unmap)');

      // blkdiscard -z (BLKZEROOUT): WRITE_ZEROES with NOUNMAP -> zeros that stay allocated.
      sh('blkdiscard', ['-f', '-z', '-o', String(16 * MiB), '-l', String(8 * MiB), dev]);
      assert.equal(allocatedBytes(file), written - 16 * MiB, 'write-zeroes (no unmap) kept blocks');
      assertSameBytes(readAt(dev, 16 * MiB, 8 * MiB), zeros, 'zeroed range (no unmap)');
      assertSameBytes(fileAt(16 * MiB, 8 * MiB), zeros, 'file range (no unmap)');
    });

    await t.test('a read across the end of a file that shrank completes, zero-filled', () => {
      const data = randomBytes(8 * MiB);
      writeAt(dev, 56 * MiB, data);
      truncateSync(file, base + 60 * MiB + 1000);
      // Without the zero-fill the kernel would requeue the short READ forever and dd hang.
      const tail = readAt(dev, 56 * MiB, 8 * MiB);
      assertSameBytes(tail.subarray(0, 4 * MiB + 1000), data.subarray(0, 4 * MiB + 1000), 'data');
      assert.ok(
        tail.subarray(4 * MiB + 1000).every((b) => b === 0),
        'zeros after the end',
      );
    });
  });
});

test('loop on a block device: O_DIRECT, its block size, BLKDISCARD; FLUSH and FUA reach fdatasync', async (t) => {
  sh('modprobe', ['loop']);
  const image = backingFile('bdev.img', 128 * MiB);
  const loopDev = sh('losetup', ['--sector-size', '4096', '--find', '--show', image]).trim();
  const loopName = basename(loopDev);
  const syncLog = join(dir, 'sync.log');
  writeFileSync(syncLog, '');
  const syncs = () => {
    const lines = readFileSync(syncLog, 'utf8').split('\n');
    return {
      flush: lines.filter((l) => l === 'flush').length,
      fua: lines.filter((l) => l === 'fua').length,
    };
  };
  process.env[SYNC_LOG_ENV] = syncLog; // inherited by `ublk add` and so by its daemon
  try {
    await withDevice(['-t', 'loop', '-f', loopDev], async (_id, dev, device) => {
      delete process.env[SYNC_LOG_ENV];
      assert.deepEqual(device.target, {
        backing_file: loopDev,
        direct_io: 1,
        offset: 0,
        name: 'loop',
        type: 1,
        dev_size: 128 * MiB,
      });
      assert.equal(device.block_size, 4096, 'the backing logical block size');
      assert.equal(sh('blockdev', ['--getss', dev]).trim(), '4096');

      await t.test('flushes and FUA writes become fdatasyncs that reach the backing disk', (s) => {
        // The kernel loop device counts the flushes it receives: each fdatasync of the daemon on
        // it is one, so they are seen outside the daemon too.
        let before = blockStat(loopName);
        writeAt(dev, 0, randomBytes(MiB));
        assert.deepEqual(syncs(), { flush: 0, fua: 0 }, 'a plain write syncs nothing');
        assert.equal(blockStat(loopName).flushes, before.flushes, 'and sends no flush down');

        before = blockStat(loopName);
        const zeros = ['if=/dev/zero', `of=${dev}`, 'bs=4096', 'status=none'];
        sh('dd', [...zeros, 'count=16', 'oflag=direct', 'conv=fdatasync']);
        const afterFlush = syncs();
        assert.ok(afterFlush.flush >= 1, 'fdatasync of the device: a FLUSH, an fdatasync');
        assert.ok(blockStat(loopName).flushes - before.flushes >= afterFlush.flush);

        before = blockStat(loopName);
        sh('dd', [...zeros, 'count=4', 'oflag=direct,dsync']);
        const afterFua = syncs();
        assert.ok(
          afterFua.fua >= 4,
          `O_DSYNC writes are FUA writes, each synced (${afterFua.fua})`,
        );
        const synced = afterFua.fua + afterFua.flush - afterFlush.flush;
        assert.ok(blockStat(loopName).flushes - before.flushes >= synced, 'each reached the disk');
        s.diagnostic(`fdatasyncs: ${JSON.stringify(afterFua)}`);
      });

      await t.test('discard is a BLKDISCARD of the backing device', () => {
        writeAt(dev, 64 * MiB, randomBytes(8 * MiB));
        const allocated = allocatedBytes(image);
        const before = blockStat(loopName);
        sh('blkdiscard', ['-f', '-o', String(64 * MiB), '-l', String(8 * MiB), dev]);
        assert.ok(blockStat(loopName).discards > before.discards, 'the backing device got one');
        assert.ok(allocatedBytes(image) <= allocated - 8 * MiB, 'and its file lost 8 MiB');
        assertSameBytes(readAt(dev, 64 * MiB, 8 * MiB), Buffer.alloc(8 * MiB), 'discarded range');
      });

      await t.test('fio verify, iodepth 64', (s) => {
        s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 64, size: 16 * MiB })));
      });
    });
  } finally {
    delete process.env[SYNC_LOG_ENV];
    sh('losetup', ['-d', loopDev]);
  }
});

test('loop on a file of ext4: O_DIRECT on a regular file', async (t) => {
  sh('modprobe', ['loop']);
  const image = backingFile('ext4.img', 128 * MiB);
  sh('mkfs.ext4', ['-q', '-F', image]);
  const loopDev = sh('losetup', ['--find', '--show', image]).trim();
  const mnt = mount(loopDev);
  try {
    const file = join(mnt, 'backing.img');
    writeFileSync(file, '');
    truncateSync(file, 64 * MiB);
    await withDevice(['-t', 'loop', '-f', file], (_id, dev, added) => {
      assert.equal(added.target.direct_io, 1, 'ext4 takes O_DIRECT');
      t.diagnostic(fioSummary(fioVerify(dev, { iodepth: 64, size: 8 * MiB })));
      const data = randomBytes(4 * MiB);
      writeAt(dev, 40 * MiB, data);
      assertSameBytes(readAt(file, 40 * MiB, 4 * MiB), data, 'backing file');
    });
  } finally {
    umount(mnt);
    sh('losetup', ['-d', loopDev]);
  }
});
