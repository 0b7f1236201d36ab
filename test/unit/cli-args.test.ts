import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  findTargetType,
  findFilters,
  parseAddArgs,
  parseDelArgs,
  parseListArgs,
  parseRecoverArgs,
} from '../../src/cli/args.js';
import { UserError } from '../../src/errors.js';
import { parseInteger } from '../../src/cli/numbers.js';
import { parseSize } from '../../src/targets/size.js';

const LOOP_OPTIONS = {
  file: { type: 'string', short: 'f', description: 'backing file' },
  buffered_io: { type: 'boolean', description: 'page cache' },
} as const;

test('add: ublksrv defaults', () => {
  const o = parseAddArgs(['-t', 'null'], {});
  assert.deepEqual(
    { ...o, targetArgs: undefined },
    {
      type: 'null',
      devId: -1,
      queues: 1,
      depth: 128,
      maxIoBufBytes: 524288,
      uringComp: false,
      needGetData: false,
      userRecovery: false,
      userRecoveryReissue: false,
      userRecoveryFailIo: false,
      noAutoPartScan: false,
      unprivileged: false,
      foreground: false,
      dataPath: 'auto',
      batchIo: false,
      debugMask: 0,
      filters: [],
      targetArgs: undefined,
    },
  );
});

test('add: every standard option, short and long, and target options', () => {
  const o = parseAddArgs(
    [
      '-t',
      'loop',
      '-n',
      '3',
      '-q2',
      '--depth=64',
      '-u',
      '1',
      '-g',
      '1',
      '-i',
      '1',
      '--max_io_buf_bytes',
      '1048576',
      '--foreground',
      '--auto_zc',
      '--no_auto_part_scan',
      '--unprivileged',
      '--debug_mask',
      '0x1',
      '-f',
      '/tmp/x.img',
      '--buffered_io',
    ],
    LOOP_OPTIONS,
  );
  assert.equal(o.devId, 3);
  assert.equal(o.queues, 2);
  assert.equal(o.depth, 64);
  assert.equal(o.uringComp, true);
  assert.equal(o.needGetData, true);
  assert.equal(o.userRecoveryReissue, true);
  assert.equal(o.userRecovery, true, 'reissue implies recovery, as in ublksrv');
  assert.equal(o.maxIoBufBytes, 1048576);
  assert.equal(o.foreground, true);
  assert.equal(o.dataPath, 'auto-zero-copy');
  assert.equal(o.noAutoPartScan, true);
  assert.equal(o.unprivileged, true);
  assert.equal(parseAddArgs(['-t', 'null', '--no_auto_zc'], {}).dataPath, 'copy');
  assert.equal(o.debugMask, 1);
  assert.deepEqual(o.targetArgs, { file: '/tmp/x.img', buffered_io: true });
});

test('add: bad input is a one-line UserError', () => {
  const bad: string[][] = [
    ['-t', 'null', '-d', '0'],
    ['-t', 'null', '-d', '4097'],
    ['-t', 'null', '-q', '0'],
    ['-t', 'null', '-q', '100000'],
    ['-t', 'null', '-q', '2x'],
    ['-t', 'null', '-n', '-1'],
    ['-t', 'null', '--max_io_buf_bytes', '5000'],
    ['-t', 'null', '-r', '2'],
    ['-t', 'null', '--debug_mask', 'all'],
    ['-t', 'null', '--bogus'],
    ['-t', 'null', '-f', 'x'],
    ['-t', 'null', 'stray'],
    ['-t', 'null', '--auto_zc', '--no_auto_zc'],
    ['-t', 'null', '--usercopy', '--auto_zc'],
    ['-t', 'null', '-z', '--manual_zc'],
  ];
  for (const argv of bad) {
    assert.throws(
      () => parseAddArgs(argv, {}),
      (err: unknown) => err instanceof UserError && !err.message.includes('\n'),
      argv.join(' '),
    );
  }
});

test('add: --unprivileged is ublksrv 1.8’s flag for UNPRIVILEGED_DEV', () => {
  assert.equal(parseAddArgs(['-t', 'null', '--unprivileged'], {}).unprivileged, true);
  assert.throws(() => parseAddArgs(['-t', 'null', '--unprivileged=1'], {}), UserError);
});

test('add: the data-path flags: ublksrv’s --usercopy and -z, kublk’s --auto_zc, --manual_zc', () => {
  const dataPath = (...flags: string[]) => parseAddArgs(['-t', 'null', ...flags], {}).dataPath;
  assert.equal(dataPath(), 'auto');
  assert.equal(dataPath('--usercopy'), 'user-copy');
  assert.equal(dataPath('-z'), 'zero-copy');
  assert.equal(dataPath('--zerocopy'), 'zero-copy');
  assert.equal(dataPath('--auto_zc'), 'auto-zero-copy');
  assert.equal(dataPath('--manual_zc'), 'manual-zero-copy');
  assert.equal(dataPath('--no_auto_zc'), 'copy');
  for (const flag of ['-z', '--zerocopy', '--usercopy', '--auto_zc', '--manual_zc']) {
    assert.throws(
      () => dataPath(flag, '--no_auto_zc'),
      /^UserError: \S+ and --no_auto_zc exclude each other$/,
      `${flag} --no_auto_zc`,
    );
  }
  assert.throws(
    () => dataPath('--usercopy', '-z'),
    /^UserError: --usercopy and -z exclude each other: choose one data path$/,
  );
});

test('add: -b/--batch-io is ublksrv’s flag for BATCH_IO', () => {
  assert.equal(parseAddArgs(['-t', 'null', '-b'], {}).batchIo, true);
  assert.equal(parseAddArgs(['-t', 'null', '--batch-io', '--auto_zc'], {}).batchIo, true);
  assert.equal(parseAddArgs(['-t', 'null'], {}).batchIo, false);
});

test('add: a target option may not take the name of a refused one', () => {
  assert.throws(
    () => parseAddArgs(['-t', 'x'], { zerocopy: { type: 'boolean', description: 'x' } }),
    /--zerocopy clashes/,
  );
});

test('findTargetType finds -t in every spelling, and says what to do without it', () => {
  assert.equal(findTargetType(['-n', '1', '-t', 'loop']), 'loop');
  assert.equal(findTargetType(['--type=mem']), 'mem');
  assert.equal(findTargetType(['-tnull']), 'null');
  assert.throws(() => findTargetType(['-n', '1']), /use -t TYPE/);
});

test('del, list and recover', () => {
  assert.deepEqual(parseDelArgs(['-n', '2']), {
    devId: 2,
    all: false,
    async: false,
    safe: false,
  });
  assert.deepEqual(parseDelArgs(['-a']), {
    devId: undefined,
    all: true,
    async: false,
    safe: false,
  });
  assert.equal(parseDelArgs(['-n', '2', '--safe']).safe, true);
  assert.throws(() => parseDelArgs([]), UserError);
  assert.throws(() => parseDelArgs(['-n', 'x']), UserError);
  assert.deepEqual(parseListArgs([], {}), { devId: undefined, json: false, layout: '1.8' });
  assert.deepEqual(parseListArgs(['-n', '0', '--json'], {}), {
    devId: 0,
    json: true,
    layout: '1.8',
  });
  assert.deepEqual(parseRecoverArgs(['-n', '1']), {
    devId: 1,
    startEmpty: false,
    foreground: false,
  });
  assert.throws(() => parseRecoverArgs([]), UserError);
});

test('list: UBLK_LIST_FORMAT picks the layout; anything else is a one-line UserError', () => {
  const layout = (value?: string) => parseListArgs([], { UBLK_LIST_FORMAT: value }).layout;
  assert.equal(layout(undefined), '1.8');
  assert.equal(layout(''), '1.8');
  assert.equal(layout('1.8'), '1.8');
  assert.equal(layout('1.3'), '1.3');
  for (const bad of ['1.4', '13', ' 1.3', 'json']) {
    assert.throws(
      () => layout(bad),
      (err: unknown) =>
        err instanceof UserError &&
        !err.message.includes('\n') &&
        err.message.includes(`UBLK_LIST_FORMAT=${bad}`),
      bad,
    );
  }
});

test('numbers: strict integers and sizes', () => {
  assert.equal(parseInteger('0x10', 'x', 0, 100), 16);
  assert.throws(() => parseInteger('1e3', 'x', 0, 10000), UserError);
  assert.throws(() => parseInteger('', 'x', 0, 1), UserError);
  assert.equal(parseSize('512M', 's'), 512 * 2 ** 20);
  assert.equal(parseSize('1G', 's'), 2 ** 30);
  assert.equal(parseSize('2GiB', 's'), 2 ** 31);
  assert.equal(parseSize('4096', 's'), 4096);
  assert.throws(() => parseSize('0', 's'), UserError);
  assert.throws(() => parseSize('12X', 's'), UserError);
});

test('add: --filter in order, and path options made absolute against the working directory', () => {
  const options = {
    cow_file: { type: 'string', path: true, description: 'overlay' },
    rdelay: { type: 'string', description: 'delay' },
  } as const;
  const argv = ['-t', 'loop', '--filter', 'delay', '--filter=cow', '--cow_file', 'top.img'];
  assert.deepEqual(findFilters(argv), ['delay', 'cow']);
  const o = parseAddArgs([...argv, '--rdelay', '5'], options);
  assert.deepEqual(o.filters, ['delay', 'cow']);
  assert.deepEqual(o.targetArgs, { cow_file: `${process.cwd()}/top.img`, rdelay: '5' });
  assert.throws(() => findFilters(['-t', 'null', '--filter']), UserError);
});
