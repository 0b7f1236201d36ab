/**
 * The mem target through the CLI: `ublk add -t mem --size SIZE`, a sparse RAM disk shared by all
 * the device's queues.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { after, test } from 'node:test';
import { delAll, sh } from './support/cli.js';
import {
  assertFiles,
  assertFsClean,
  assertSameBytes,
  fioSuite,
  mkfsAndMount,
  mount,
  readAt,
  umount,
  withDevice,
  writeAt,
  writeRandomFiles,
} from './support/targets.js';

const MiB = 2 ** 20;

after(() => delAll());

/**
 * Bytes of RAM the daemon's memfd holds (its st_blocks: pages actually allocated), the daemon's
 * resident set, and the machine's shared memory (tmpfs and memfd pages) from /proc/meminfo.
 */
function memoryOf(pid: number): { memfd: number; rss: number; shmem: number } {
  let memfd: number | undefined;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('/memfd:mem-target')) {
        memfd = statSync(`/proc/${pid}/fd/${fd}`).blocks * 512;
      }
    } catch {
      // an fd that closed meanwhile
    }
  }
  assert.ok(memfd !== undefined, 'the daemon holds the memfd');
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))!;
  const shmem = /\nShmem:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'))!;
  return { memfd, rss: Number(rss[1]) * 1024, shmem: Number(shmem[1]) * 1024 };
}

const mb = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

test('mem -q 2: one disk for all queues; ext4 with 64 MiB of files stays intact; discard frees RAM; fio', async (t) => {
  await withDevice(['-t', 'mem', '--size', '512M', '-q', '2'], async (_id, dev, device) => {
    assert.deepEqual(device.target, { name: 'mem', type: 100, dev_size: 512 * MiB });
    assert.equal(device.nr_hw_queues, 2);
    const pid = device.daemon_pid;
    const start = memoryOf(pid);
    assert.equal(start.memfd, 0, 'nothing allocated before the first write');

    await t.test('what one queue writes the other reads', () => {
      // blk-mq sends a request to the queue of the CPU that submits it; which CPUs a queue gets
      // is the kernel's choice (6.1: queue N on CPU N, 7.3: the other way round), so ask it.
      const [cpusOf0, cpusOf1] = device.queues.map((q) => q.affinity);
      assert.ok(cpusOf0.length > 0 && cpusOf1.length > 0, 'each queue has a CPU of its own');
      assert.ok(!cpusOf0.some((cpu) => cpusOf1.includes(cpu)), 'no CPU maps to both queues');
      const [onQueue0, onQueue1] = [cpusOf0[0], cpusOf1[0]];
      const data = randomBytes(8 * MiB);
      writeAt(dev, 0, data, { cpu: onQueue0 });
      assertSameBytes(readAt(dev, 0, 8 * MiB, onQueue1), data, 'queue 1 reads what queue 0 wrote');
      writeAt(dev, 8 * MiB, data, { cpu: onQueue1 });
      assertSameBytes(readAt(dev, 8 * MiB, 8 * MiB, onQueue0), data, 'and the other way round');
    });

    await t.test(
      'ext4: 64 MiB of files, umount, e2fsck clean, remount, every sha256 matches',
      () => {
        // mem cannot keep data across `ublk del` (the RAM goes with the daemon), so the check is a
        // remount of the same device, after dropping every cached copy of its blocks.
        let mnt = mkfsAndMount(dev);
        const sums = (() => {
          try {
            return writeRandomFiles(mnt, 64 * MiB, 16);
          } finally {
            umount(mnt);
          }
        })();
        sh('blockdev', ['--flushbufs', dev]);
        sh('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
        assertFsClean(dev);
        mnt = mount(dev);
        try {
          assertFiles(mnt, sums);
        } finally {
          umount(mnt);
        }
      },
    );

    await t.test('RAM is taken on write and given back by discard and write zeroes', (s) => {
      const used = memoryOf(pid);
      assert.ok(used.memfd >= 64 * MiB, `the files take RAM (${mb(used.memfd)})`);
      sh('blkdiscard', ['-f', dev]);
      const discarded = memoryOf(pid);
      assert.equal(discarded.memfd, 0, 'discarding the whole disk frees all of it');
      assert.ok(
        used.shmem - discarded.shmem >= used.memfd - 8 * MiB,
        `and the machine got it back (Shmem ${mb(used.shmem)} -> ${mb(discarded.shmem)})`,
      );
      assertSameBytes(readAt(dev, 0, 8 * MiB), Buffer.alloc(8 * MiB), 'discarded reads zeros');

      // Zeros written are data like any other: they take pages.
      sh('dd', ['if=/dev/zero', `of=${dev}`, 'bs=1M', 'count=64', 'oflag=direct', 'status=none']);
      const written = memoryOf(pid);
      assert.equal(written.memfd, 64 * MiB, '64 MiB written, 64 MiB held');
      sh('fallocate', ['-p', '-o', '0', '-l', String(32 * MiB), dev]); // WRITE_ZEROES, may unmap
      assert.equal(memoryOf(pid).memfd, 32 * MiB, 'write zeroes freed its 32 MiB');
      sh('blkdiscard', ['-f', '-z', '-o', String(32 * MiB), '-l', String(16 * MiB), dev]);
      assert.equal(memoryOf(pid).memfd, 32 * MiB, 'write zeroes with NOUNMAP keeps it allocated');
      assertSameBytes(readAt(dev, 16 * MiB, 32 * MiB), Buffer.alloc(32 * MiB), 'zeros read back');
      // The daemon's RSS is its code, heap and request buffers (up to depth x 512 KiB per
      // queue); the disk's pages are in the memfd, not mapped: reported, not asserted.
      s.diagnostic(
        `memfd ${mb(start.memfd)} at start, ${mb(used.memfd)} with the files, ` +
          `${mb(discarded.memfd)} after blkdiscard, ${mb(written.memfd)} after writing 64 MiB; ` +
          `daemon RSS ${mb(start.rss)} at start, ${mb(used.rss)} with the files, ` +
          `${mb(written.rss)} at the end; Shmem ${mb(used.shmem)} -> ${mb(discarded.shmem)} ` +
          'by the discard',
      );
    });

    // Every `ublk add` costs seconds under emulation: the fio runs use this device too.
    await fioSuite(t, dev);
  });
});
