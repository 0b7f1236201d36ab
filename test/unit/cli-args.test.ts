import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  findTargetType,
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
      debugMask: 0,
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
  assert.equal(o.noAutoPartScan, true);
  assert.equal(o.unprivileged, true);
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
  ];
  for (const argv of bad) {
    assert.throws(
      () => parseAddArgs(argv, {}),
      (err: unknown) => err instanceof UserError && !err.message.includes('\n'),
      argv.join(' '),
    );
  }
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
  assert.deepEqual(parseListArgs([]), { devId: undefined, json: false });
  assert.deepEqual(parseListArgs(['-n', '0', '--json']), { devId: 0, json: true });
  assert.deepEqual(parseRecoverArgs(['-n', '1']), {
    devId: 1,
    startEmpty: false,
    foreground: false,
  });
  assert.throws(() => parseRecoverArgs([]), UserError);
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
