import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  formatListing,
  listFlagNames,
  listingJson,
  sortedJson,
  type DeviceListing,
} from '../../src/cli/list-format.js';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';

const device: DeviceListing = {
  devId: 0,
  nrHwQueues: 1,
  queueDepth: 128,
  logicalBlockSize: 512,
  devSectors: 524288000,
  maxIoBufBytes: 524288,
  daemonPid: 121,
  flags: 0x42,
  state: 'LIVE',
  ublkc: '246:0',
  ublkb: '259:0',
  ownerUid: 0,
  ownerGid: 0,
  queues: [{ tid: 122, affinity: [0, 1] }],
  target: { type: 0, name: 'null', dev_size: 268435456000 },
};

const fields = (line: string) => line.trim().split(/\s+/);

test('list text is ublksrv 1.8’s by default, byte for byte', () => {
  assert.equal(
    formatListing(device),
    [
      'dev id 0: nr_hw_queues 1 queue_depth 128 block size 512 dev_capacity 524288000',
      '\tmax rq size 524288 daemon pid 121 state LIVE',
      '\tflags 0x42 [ URING_CMD_COMP_IN_TASK CMD_IOCTL_ENCODE ]',
      '\tublkc: 246:0 ublkb: 259:0 owner: 0:0',
      '\tqueue 0: tid 122 affinity(0 1 )',
      '\ttarget {"dev_size":268435456000,"name":"null","type":0}',
      '',
    ].join('\n'),
  );
  assert.equal(formatListing(device, '1.8'), formatListing(device));
});

test('1.8: scripts find pid (7), state (9), the flags line and tid (4) at their fields', () => {
  const lines = formatListing({ ...device, daemonPid: 4321, state: 'QUIESCED' }).split('\n');
  assert.deepEqual(fields(lines[1]), [
    'max',
    'rq',
    'size',
    '524288',
    'daemon',
    'pid',
    '4321',
    'state',
    'QUIESCED',
  ]);
  assert.deepEqual(fields(lines[2]), [
    'flags',
    '0x42',
    '[',
    'URING_CMD_COMP_IN_TASK',
    'CMD_IOCTL_ENCODE',
    ']',
  ]);
  assert.deepEqual(fields(lines[3]).slice(0, 4), ['ublkc:', '246:0', 'ublkb:', '259:0']);
  assert.equal(fields(lines[4])[3], '122');
});

test('1.3 layout: flags before the state on line 2; pid field 7, state field 11', () => {
  const text = formatListing(device, '1.3');
  const lines = text.split('\n');
  assert.equal(lines[1], '\tmax rq size 524288 daemon pid 121 flags 0x42 state LIVE');
  assert.deepEqual(fields(lines[1]), [
    'max',
    'rq',
    'size',
    '524288',
    'daemon',
    'pid',
    '121',
    'flags',
    '0x42',
    'state',
    'LIVE',
  ]);
  assert.equal(lines[2], '\tublkc: 246:0 ublkb: 259:0 owner: 0:0');
  assert.equal(fields(lines[3])[3], '122');
  assert.equal(lines.length, 6, 'no flags line of its own');
});

test('the flags line names every flag set, in ublksrv’s order, and none that is not', () => {
  const line = (flags: number) => formatListing({ ...device, flags }).split('\n')[2];
  assert.equal(line(0), '\tflags 0x0 [ ]');
  // IO_DESC_SIZE has no name in ublksrv's list: hex only.
  assert.equal(line(UBLK_F.IO_DESC_SIZE | UBLK_F.USER_RECOVERY), '\tflags 0x100008 [ RECOVERY ]');
  assert.equal(
    line(0x1fffff),
    '\tflags 0x1fffff [ SUPPORT_ZERO_COPY AUTO_ZC URING_CMD_COMP_IN_TASK NEED_GET_DATA ' +
      'UNPRIVILEGED_DEV RECOVERY RECOVERY_REISSUE CMD_IOCTL_ENCODE USER_COPY ZONED ' +
      'RECOVERY_FAIL_IO UPDATE_SIZE QUIESCE PER_IO_DAEMON BUF_REG_OFF_DAEMON BATCH_IO INTEGRITY ' +
      'SAFE_STOP_DEV NO_AUTO_PART_SCAN SHMEM_ZC ]',
  );
  // One name per bit: each of the 20 named bits alone gives exactly one name.
  for (let bit = 0; bit < 20; bit++) assert.equal(listFlagNames(2 ** bit).length, 1, `bit ${bit}`);
  // A bit above 32 does not wrap onto a low one.
  assert.deepEqual(listFlagNames(2 ** 33 + UBLK_F.ZONED), ['ZONED']);
});

test('sortedJson sorts nested keys; listingJson is plain data with the flag names', () => {
  assert.equal(sortedJson({ b: 1, a: { d: 2, c: [3] } }), '{"a":{"c":[3],"d":2},"b":1}');
  const json = listingJson(device);
  assert.equal(json.daemon_pid, 121);
  assert.equal(json.flags, 0x42);
  assert.deepEqual(json.flag_names, ['URING_CMD_COMP_IN_TASK', 'CMD_IOCTL_ENCODE']);
  assert.deepEqual(json.queues, [{ id: 0, tid: 122, affinity: [0, 1] }]);
});
