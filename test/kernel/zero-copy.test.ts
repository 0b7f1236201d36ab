/**
 * Zero copy with UBLK_F_AUTO_BUF_REG (`ublk add --auto_zc`): the kernel registers each request's
 * pages in the queue ring's buffer table and the daemon's READ_FIXED/WRITE_FIXED move the data
 * between them and the backing file, which never reaches JavaScript. It is the default where the
 * kernel has it, for targets that declare zeroCopy. Which tests run depends on
 * what the kernel reports in GET_FEATURES, never on its version: with AUTO_BUF_REG, loop and mem
 * keep every byte through fio's verify and a kill -9 / recover; without it, `add --auto_zc` is
 * refused in one line and leaves nothing.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, test } from 'node:test';
import { UBLK_F } from '../../src/ublk/abi.js';
import {
  addDevice,
  assertNothingLeft,
  delAll,
  delDevice,
  fio,
  kernelFeatures,
  ublk,
  waitFor,
} from './support/cli.js';
import {
  completedIos,
  jobErrors,
  killDaemon,
  killFio,
  recover,
  startFio,
  theDaemon,
} from './support/recovery.js';
import { fioSummary, fioVerify, readAt, withDevice, writeAt } from './support/targets.js';

const MiB = 2 ** 20;
const RAMDISK = new URL('../../examples/ramdisk.js', import.meta.url).pathname;
/** Mixed request sizes, small ones most often, as a file system sends them. */
const BSSPLIT = '4k/40:16k/20:64k/20:128k/10:512k/10';

const dir = mkdtempSync('/tmp/ublk-zero-copy-test-');
afterEach(() => {
  killFio();
  delAll();
});
after(() => rmSync(dir, { recursive: true, force: true }));

const autoBufReg = (kernelFeatures() & UBLK_F.AUTO_BUF_REG) !== 0;

function backingFile(name: string, size: number): string {
  const file = join(dir, name);
  writeFileSync(file, '');
  truncateSync(file, size);
  return file;
}

if (autoBufReg) {
  const targets: [string, () => string[]][] = [
    ['loop', () => ['-t', 'loop', '-f', backingFile('verify.img', 256 * MiB)]],
    ['mem', () => ['-t', 'mem', '--size', '256M']],
  ];
  for (const [name, args] of targets) {
    test(`${name} --auto_zc -q 2: fio crc32c verify at QD1 and QD64, mixed sizes, 2 jobs`, async (t) => {
      await withDevice([...args(), '--auto_zc', '-q', '2'], async (_id, dev, added) => {
        const list = ublk('list', '-n', String(added.dev_id)).stdout;
        const flags = /flags (0x[0-9a-f]+) \[.* AUTO_ZC /.exec(list);
        assert.ok(flags && (Number(flags[1]) & UBLK_F.AUTO_BUF_REG) !== 0, `AUTO_ZC in: ${list}`);
        for (const iodepth of [1, 64]) {
          const report = fioVerify(dev, {
            iodepth,
            size: (iodepth === 1 ? 8 : 32) * MiB,
            numjobs: 2,
            bssplit: BSSPLIT,
          });
          t.diagnostic(`QD${iodepth}: ${fioSummary(report)}`);
        }
        // A request of three blocks at an odd block: its data starts and ends within a page.
        const bs = added.block_size;
        const bytes = Buffer.alloc(3 * bs, 0x5a);
        writeAt(dev, 7 * bs, bytes);
        assert.deepEqual(readAt(dev, 7 * bs, bytes.length), bytes);
      });
    });
  }

  test('null --auto_zc: reads and writes complete (nothing to copy)', async () => {
    await withDevice(['-t', 'null', '--auto_zc'], (_id, dev) => {
      const size = 16 * MiB;
      const report = fio([
        '--name=null-zc',
        `--filename=${dev}`,
        '--ioengine=io_uring',
        '--direct=1',
        '--rw=randrw',
        `--bssplit=${BSSPLIT}`,
        '--iodepth=16',
        `--size=${size}`,
      ]);
      const [job] = report.jobs;
      assert.equal(job.error, 0);
      assert.equal(job.read.io_bytes + job.write.io_bytes, size, 'every request completed');
    });
  });

  test('by default loop uses zero copy here, --no_auto_zc and -g 1 copy, a JS target copies', () => {
    const flagsOf = (...args: string[]) => {
      const id = addDevice(...args);
      const m = /flags (0x[0-9a-f]+)/.exec(ublk('list', '-n', String(id)).stdout);
      delDevice(id);
      return Number(m![1]) & UBLK_F.AUTO_BUF_REG;
    };
    const file = backingFile('default.img', 16 * MiB);
    assert.equal(flagsOf('-t', 'loop', '-f', file), UBLK_F.AUTO_BUF_REG);
    assert.equal(flagsOf('-t', 'loop', '-f', file, '--no_auto_zc'), 0);
    assert.equal(flagsOf('-t', 'null', '-g', '1'), 0);
    assert.equal(flagsOf('-t', RAMDISK, '--size', '16M'), 0);
    assertNothingLeft();
  });

  test('a target that computes data in JavaScript refuses --auto_zc in one line', () => {
    const r = ublk('add', '-t', RAMDISK, '--size', '16M', '--auto_zc');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr.trim(), /^[^\n]*cannot use zero copy \(--auto_zc\)[^\n]*$/);
    assertNothingLeft();
  });

  test('loop --auto_zc -r 1 -i 1: 2 kill -9 / recover during one fio verify run, no error', async (t) => {
    const file = backingFile('reissue.img', 256 * MiB);
    const id = addDevice('-t', 'loop', '-f', file, '--auto_zc', '-r', '1', '-i', '1', '-q', '2');
    let pid = theDaemon();
    // As in recovery.test.ts: fio thinks 15 ms after each IO so that most of the run is still
    // ahead at the last kill; verify_backlog checks every block shortly after it was written.
    const size = 16 * MiB;
    const fio = startFio(dir, 'zc-reissue', [
      `--filename=/dev/ublkb${id}`,
      '--ioengine=io_uring',
      '--direct=1',
      '--rw=randwrite',
      `--bssplit=${BSSPLIT}`,
      '--iodepth=32',
      `--size=${size}`,
      '--thinktime=15ms',
      '--verify=crc32c',
      '--verify_backlog=128',
      '--verify_fatal=1',
    ]);
    for (let kill = 1; kill <= 2; kill++) {
      const before = completedIos(id);
      await waitFor('fio IO', () => completedIos(id) > before + 50, 60_000);
      assert.ok(fio.running(), `fio still runs at kill ${kill}`);
      await killDaemon(pid);
      pid = recover(id, pid);
      t.diagnostic(`kill ${kill}: LIVE again`);
    }
    const { status, report, stderr } = await fio.finished(10 * 60_000);
    assert.equal(status, 0, stderr);
    assert.deepEqual(jobErrors(report), [0], 'no IO or verify error');
    assert.equal(report.jobs[0].write.io_bytes, size, 'every block written');
    assert.equal(report.jobs[0].read.io_bytes, size, 'and verified');
    delDevice(id);
    assertNothingLeft();
  });
} else {
  test('add --auto_zc on a kernel without AUTO_BUF_REG: refused in one line naming Linux 6.16, nothing left', () => {
    for (const args of [
      ['-t', 'null'],
      ['-t', 'mem', '--size', '16M'],
    ]) {
      const r = ublk('add', ...args, '--auto_zc');
      assert.notEqual(r.status, 0);
      const message = r.stderr.trim();
      assert.ok(!message.includes('\n'), `one line: ${message}`);
      assert.match(message, /AUTO_BUF_REG.*Linux 6\.16/);
      assertNothingLeft();
    }
  });
}
