/**
 * The data-path modes beside copy: auto zero copy (UBLK_F_AUTO_BUF_REG, `--auto_zc`, the default
 * where the kernel has it), where the kernel registers each request's pages in the queue ring's
 * buffer table for the daemon's READ_FIXED/WRITE_FIXED; manual zero copy
 * (UBLK_F_SUPPORT_ZERO_COPY, `--manual_zc`), where each forwarded request registers its pages with
 * REGISTER_IO_BUF; and user copy (UBLK_F_USER_COPY, `--usercopy`), where the daemon copies each
 * request's data with read/write on /dev/ublkcN through a bounce pool; and batch IO
 * (UBLK_F_BATCH_IO, `-b`), one PREP_IO_CMDS per queue, a multishot FETCH_IO_CMDS and one
 * COMMIT_IO_CMDS per wake-up, in copy mode and with auto zero copy. Which tests run depends on
 * what the kernel reports (`ublk features`), never on its version: where it has the mode, loop,
 * mem and (user copy) JavaScript targets keep every byte through fio's verify and kill -9 /
 * recover; where it lacks it, `add` with the mode's option is refused in one line naming the
 * first kernel that has it, and leaves nothing. `-z` is ublksrv 1.8's: auto zero copy where the
 * kernel has it, else manual. The library refuses raw UBLK_F flags (`flags`, gone from the API)
 * and a JavaScript-handler target asking for zero copy before anything exists.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, test } from 'node:test';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';
import { createDevice, isUserError, type DeviceOptions } from '../../src/index.js';
import {
  assertNothingLeft,
  delAll,
  delDevice,
  fio,
  kernelFeatures,
  ublk,
  waitFor,
} from './support/cli.js';
import {
  assertVerified,
  completedIos,
  killDaemon,
  killFio,
  recover,
  startVerifyAcrossRecovery,
  theDaemon,
} from './support/recovery.js';
import {
  addListed,
  fioSummary,
  fioVerify,
  listedFlags,
  readAt,
  withDevice,
  writeAt,
} from './support/targets.js';

const MiB = 2 ** 20;
const RAMDISK = new URL('../../examples/ramdisk.js', import.meta.url).pathname;
/** Mixed request sizes, small ones most often, as a file system sends them. */
const BSSPLIT = '4k/40:16k/20:64k/20:128k/10:512k/10';

const dir = mkdtempSync('/tmp/ublk-data-path-test-');
afterEach(() => {
  killFio();
  delAll();
});
after(() => rmSync(dir, { recursive: true, force: true }));

const features = kernelFeatures();

/**
 * A target whose handlers move the data in JavaScript, over the queue's ring (ctx.io): a file, so
 * that a new daemon serves what the dead one wrote.
 */
const JS_FILE_TARGET = join(dir, 'js-file-target.mjs');
writeFileSync(
  JS_FILE_TARGET,
  `import { closeSync, openSync, statSync } from 'node:fs';
import { defineTarget } from ${JSON.stringify(new URL('../../src/index.js', import.meta.url).href)};
export default defineTarget({
  name: 'jsfile',
  options: { file: { type: 'string', description: 'backing file' } },
  setup: (args) => ({ size: statSync(args.file).size, shared: { file: args.file } }),
  queue({ file }, ctx) {
    const fd = openSync(file, 'r+');
    return {
      read: async (buf, offset) => void (await ctx.io.readFully(fd, buf, offset)),
      write: (buf, offset) => ctx.io.writeFully(fd, buf, offset),
      close: () => closeSync(fd),
    };
  },
});
`,
);

function backingFile(name: string, size: number): string {
  const file = join(dir, name);
  writeFileSync(file, '');
  truncateSync(file, size);
  return file;
}

/** The device's flags as `ublk list` prints them. */
/** fio verify at QD1 and QD64, 2 jobs, mixed sizes, then a request within pages. */
function verifyDevice(t: { diagnostic(s: string): void }, dev: string, blockSize: number): void {
  for (const iodepth of [1, 64]) {
    const report = fioVerify(dev, {
      iodepth,
      size: (iodepth === 1 ? 8 : 16) * MiB,
      numjobs: 2,
      bssplit: BSSPLIT,
    });
    t.diagnostic(`QD${iodepth}: ${fioSummary(report)}`);
  }
  // Three blocks at an odd block: the data starts and ends within a page.
  const bytes = Buffer.alloc(3 * blockSize, 0x5a);
  writeAt(dev, 7 * blockSize, bytes);
  assert.deepEqual(readAt(dev, 7 * blockSize, bytes.length), bytes);
}

interface Mode {
  name: string;
  /** The options of `add` that select it. */
  options: string[];
  /** The UBLK_F flags it needs, every one of them granted and listed. */
  flag: number;
  /** How its refusal names the feature and the kernel. */
  refusal: RegExp;
  targets: [string, () => string[]][];
  recoverable: [string, () => string[]][];
}

const loopTarget = (name: string) => () => ['-t', 'loop', '-f', backingFile(name, 256 * MiB)];
const jsFileTarget = (name: string) => () => [
  '-t',
  JS_FILE_TARGET,
  '--file',
  backingFile(name, 256 * MiB),
];

const MODES: Mode[] = [
  {
    name: 'auto zero copy',
    options: ['--auto_zc'],
    flag: UBLK_F.AUTO_BUF_REG,
    refusal: /auto zero copy \(--auto_zc\).*AUTO_BUF_REG.*Linux 6\.16/,
    // mem's default on such a kernel (mem.test.ts).
    targets: [['loop', loopTarget('azc-verify.img')]],
    recoverable: [['loop', loopTarget('azc-reissue.img')]],
  },
  {
    name: 'user copy',
    options: ['--usercopy'],
    flag: UBLK_F.USER_COPY,
    refusal: /user copy \(--usercopy\).*USER_COPY.*Linux 6\.5/,
    targets: [
      ['loop', loopTarget('uc-verify.img')],
      ['a JavaScript target (examples/ramdisk.js)', () => ['-t', RAMDISK, '--size', '256M']],
    ],
    recoverable: [['a JavaScript target over ctx.io (a file)', jsFileTarget('uc-js-reissue.img')]],
  },
  {
    name: 'manual zero copy',
    options: ['--manual_zc'],
    flag: UBLK_F.SUPPORT_ZERO_COPY,
    refusal: /manual zero copy \(--manual_zc\).*SUPPORT_ZERO_COPY.*Linux 6\.15/,
    targets: [['mem', () => ['-t', 'mem', '--size', '256M']]],
    recoverable: [['loop', loopTarget('zc-reissue.img')]],
  },
  {
    name: 'batch IO, copying',
    options: ['-b', '--no_auto_zc'],
    flag: UBLK_F.BATCH_IO,
    refusal: /batch IO \(-b\).*BATCH_IO.*Linux 7\.0/,
    targets: [
      ['loop', loopTarget('batch-verify.img')],
      ['a JavaScript target (examples/ramdisk.js)', () => ['-t', RAMDISK, '--size', '256M']],
    ],
    recoverable: [
      ['a JavaScript target over ctx.io (a file)', jsFileTarget('batch-js-reissue.img')],
    ],
  },
  {
    name: 'batch IO with auto zero copy',
    options: ['-b', '--auto_zc'],
    flag: UBLK_F.BATCH_IO | UBLK_F.AUTO_BUF_REG,
    refusal:
      /batch IO \(-b\).*BATCH_IO.*Linux 7\.0|auto zero copy \(--auto_zc\).*AUTO_BUF_REG.*Linux 6\.16/,
    targets: [['mem', () => ['-t', 'mem', '--size', '256M']]],
    recoverable: [['loop', loopTarget('bazc-reissue.img')]],
  },
];

/** Whether the running kernel has every flag of the mode. */
const has = (mode: Mode) => (features & mode.flag) === mode.flag;
/** What a mode's flags must not include: the flags only the other modes have. */
const othersOnly = (mode: Mode, other: Mode) => other.flag & ~mode.flag;

for (const mode of MODES) {
  const option = mode.options.join(' ');
  if (!has(mode)) {
    test(`add ${option} on a kernel without it: ${mode.name} refused in one line naming the kernel, nothing left`, () => {
      for (const args of [
        ['-t', 'null'],
        ['-t', 'loop', '-f', backingFile('refused.img', 16 * MiB)],
        ['-t', 'mem', '--size', '16M'],
      ]) {
        const r = ublk('add', ...args, ...mode.options);
        assert.notEqual(r.status, 0);
        const message = r.stderr.trim();
        assert.ok(!message.includes('\n'), `one line: ${message}`);
        assert.match(message, mode.refusal);
        assertNothingLeft();
      }
    });
    continue;
  }
  for (const [name, args] of mode.targets) {
    test(`${name} ${option} -q 2 (${mode.name}): fio crc32c verify at QD1 and QD64, mixed sizes, 2 jobs`, async (t) => {
      await withDevice([...args(), ...mode.options, '-q', '2'], (_id, dev, added) => {
        const { flags } = added;
        assert.equal(flags & mode.flag, mode.flag, `${mode.name} granted and listed`);
        for (const other of MODES.filter((m) => m !== mode)) {
          assert.equal(flags & othersOnly(mode, other), 0, `and no ${other.name} with it`);
        }
        verifyDevice(t, dev, added.block_size);
      });
    });
  }

  for (const [name, args] of mode.recoverable) {
    test(`${name} ${option} -r 1 -i 1 -q 2 (${mode.name}): kill -9 / recover during a fio verify run, no error`, async () => {
      const added = addListed(...args(), ...mode.options, '-r', '1', '-i', '1', '-q', '2');
      const id = added.dev_id;
      assert.equal(added.flags & mode.flag, mode.flag);
      const pid = theDaemon();
      const size = 16 * MiB;
      const name = `reissue-${option.replace(/[- ]/g, '')}-${id}`;
      const fio = startVerifyAcrossRecovery(dir, name, id, { size, sizes: `--bssplit=${BSSPLIT}` });
      // One kill per mode: recovery.test.ts kills one fio run's daemon three times over.
      const before = completedIos(id);
      await waitFor('fio IO', () => completedIos(id) > before + 50, 60_000);
      assert.ok(fio.running(), 'fio still runs at the kill');
      await killDaemon(pid);
      recover(id, pid);
      assert.equal(listedFlags(id) & mode.flag, mode.flag, `still ${mode.name}`);
      await assertVerified(fio, size);
      delDevice(id);
      assertNothingLeft();
    });
  }
}

for (const mode of MODES.filter((m) => m.flag !== UBLK_F.USER_COPY && has(m))) {
  const option = mode.options.join(' ');
  test(`null ${option}: reads and writes complete`, async () => {
    await withDevice(['-t', 'null', ...mode.options], (_id, dev, added) => {
      assert.equal(added.flags & mode.flag, mode.flag, `${mode.name} granted`);
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

  if ((mode.flag & (UBLK_F.AUTO_BUF_REG | UBLK_F.SUPPORT_ZERO_COPY)) === 0) continue;
  test(`a target that computes data in JavaScript refuses ${option} in one line, nothing left`, () => {
    const r = ublk('add', '-t', RAMDISK, '--size', '16M', ...mode.options);
    assert.notEqual(r.status, 0);
    assert.match(
      r.stderr.trim(),
      /^[^\n]*handles request data in JavaScript, so it cannot use (auto|manual) zero copy \(--(auto_zc|manual_zc)\)[^\n]*$/,
    );
    assertNothingLeft();
  });
}

if ((features & UBLK_F.AUTO_BUF_REG) !== 0) {
  test('by default loop uses zero copy here, --no_auto_zc and -g 1 copy, a JS target copies', () => {
    const autoZc = (...args: string[]) => {
      const { dev_id, flags } = addListed(...args);
      delDevice(dev_id);
      return flags & UBLK_F.AUTO_BUF_REG;
    };
    const file = backingFile('default.img', 16 * MiB);
    assert.equal(autoZc('-t', 'loop', '-f', file), UBLK_F.AUTO_BUF_REG);
    assert.equal(autoZc('-t', 'loop', '-f', file, '--no_auto_zc'), 0);
    assert.equal(autoZc('-t', 'null', '-g', '1'), 0);
    assert.equal(autoZc('-t', RAMDISK, '--size', '16M'), 0);
    assertNothingLeft();
  });
}

if ((features & UBLK_F.USER_COPY) !== 0) {
  test('--usercopy with --auto_zc, with -z, with -g 1: refused in one line, nothing left', () => {
    for (const [extra, pattern] of [
      [['--auto_zc'], /--usercopy and --auto_zc exclude each other/],
      [['-z'], /--usercopy and -z exclude each other/],
      [['-g', '1'], /--usercopy and -g 1 exclude each other/],
    ] as const) {
      const r = ublk('add', '-t', 'null', '--usercopy', ...extra);
      assert.notEqual(r.status, 0);
      const message = r.stderr.trim();
      assert.ok(!message.includes('\n'), `one line: ${message}`);
      assert.match(message, pattern);
      assertNothingLeft();
    }
  });
}

test('-b with -g 1: refused in one line (the kernel drops NEED_GET_DATA from a batch device), nothing left', () => {
  const r = ublk('add', '-t', 'null', '-b', '-g', '1');
  assert.notEqual(r.status, 0);
  const message = r.stderr.trim();
  assert.ok(!message.includes('\n'), `one line: ${message}`);
  assert.match(message, /^ublk: -b and -g 1 exclude each other: [^\n]*NEED_GET_DATA/);
  assertNothingLeft();
});

/** What a device leaves in the kernel: /sys/class/ublk-char entries and /dev/ublkc nodes. */
function ublkChars(): string[] {
  const sys = existsSync('/sys/class/ublk-char') ? readdirSync('/sys/class/ublk-char') : [];
  return [...sys, ...readdirSync('/dev').filter((n) => /^ublkc\d+$/.test(n))].sort();
}

/** createDevice refused: one line, a UserError, and nothing new in the kernel. */
async function refusedInProcess(options: unknown, pattern: RegExp): Promise<void> {
  const before = ublkChars();
  await assert.rejects(createDevice(options as DeviceOptions), (err: unknown) => {
    assert.ok(isUserError(err), `a UserError: ${String(err)}`);
    assert.equal(err.code, 'UBLK_ERR_USER');
    assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
  assert.deepEqual(ublkChars(), before, 'no new /sys/class/ublk-char entry or /dev/ublkcN');
}

test('createDevice with a raw data-path flag (flags, not in the API) for a JavaScript target: refused in one line, nothing made', async () => {
  for (const flag of [
    UBLK_F.AUTO_BUF_REG,
    UBLK_F.SUPPORT_ZERO_COPY,
    UBLK_F.USER_COPY,
    UBLK_F.BATCH_IO,
  ]) {
    await refusedInProcess(
      { target: RAMDISK, args: { size: '16M' }, flags: flag },
      /^createDevice: unknown option 'flags'/,
    );
  }
  assertNothingLeft();
});

test("createDevice of a JavaScript target with dataPath 'auto-zero-copy' or 'manual-zero-copy': refused naming the reason, nothing made", async () => {
  for (const dataPath of ['auto-zero-copy', 'manual-zero-copy', 'zero-copy']) {
    await refusedInProcess(
      { target: RAMDISK, args: { size: '16M' }, dataPath },
      new RegExp(
        `handles request data in JavaScript, so it cannot use [a-z ]*zero copy \\(dataPath '${dataPath}'\\)`,
      ),
    );
  }
  // Before the target or the kernel is asked: options that exclude each other.
  await refusedInProcess(
    { target: RAMDISK, args: { size: '16M' }, dataPath: 'user-copy', needGetData: true },
    /^dataPath 'user-copy' excludes needGetData/,
  );
  assertNothingLeft();
});

test('-z (ublksrv 1.8): auto zero copy where the kernel has AUTO_BUF_REG, else manual zero copy, else refused', async () => {
  const file = backingFile('z.img', 64 * MiB);
  const args = ['-t', 'loop', '-f', file, '-z'];
  if ((features & (UBLK_F.AUTO_BUF_REG | UBLK_F.SUPPORT_ZERO_COPY)) === 0) {
    const r = ublk('add', ...args);
    assert.notEqual(r.status, 0);
    assert.match(
      r.stderr.trim(),
      /^ublk: zero copy \(-z\) needs UBLK_F_SUPPORT_ZERO_COPY \(Linux 6\.15\+\), which this kernel's ublk driver lacks$/,
    );
    assertNothingLeft();
    return;
  }
  const expected =
    (features & UBLK_F.AUTO_BUF_REG) !== 0 ? UBLK_F.AUTO_BUF_REG : UBLK_F.SUPPORT_ZERO_COPY;
  await withDevice(args, (_id, dev, added) => {
    const zc = added.flags & (UBLK_F.AUTO_BUF_REG | UBLK_F.SUPPORT_ZERO_COPY);
    assert.equal(zc, expected);
    const bytes = Buffer.alloc(3 * added.block_size, 0x6b);
    writeAt(dev, 5 * added.block_size, bytes);
    assert.deepEqual(readAt(dev, 5 * added.block_size, bytes.length), bytes);
  });
  assertNothingLeft();
});
