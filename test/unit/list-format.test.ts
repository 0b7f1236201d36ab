import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  formatListing,
  listingJson,
  sortedJson,
  type DeviceListing,
} from '../../src/cli/list-format.js';

const device: DeviceListing = {
  devId: 0,
  nrHwQueues: 1,
  queueDepth: 128,
  logicalBlockSize: 512,
  devSectors: 524288000,
  maxIoBufBytes: 524288,
  daemonPid: 121,
  flags: 0x2,
  state: 'LIVE',
  ublkc: '246:0',
  ublkb: '259:0',
  ownerUid: 0,
  ownerGid: 0,
  queues: [{ tid: 122, affinity: [0, 1] }],
  target: { type: 0, name: 'null', dev_size: 268435456000 },
};

test('list text is ublksrv’s, byte for byte', () => {
  assert.equal(
    formatListing(device),
    [
      'dev id 0: nr_hw_queues 1 queue_depth 128 block size 512 dev_capacity 524288000',
      '\tmax rq size 524288 daemon pid 121 flags 0x2 state LIVE',
      '\tublkc: 246:0 ublkb: 259:0 owner: 0:0',
      '\tqueue 0: tid 122 affinity(0 1 )',
      '\ttarget {"dev_size":268435456000,"name":"null","type":0}',
      '',
    ].join('\n'),
  );
});

test('scripts find pid, state and tid at their field numbers', () => {
  const lines = formatListing(device).split('\n');
  const fields = (line: string) => line.trim().split(/\s+/);
  assert.equal(fields(lines[1])[6], '121');
  assert.equal(fields(lines[1])[10], 'LIVE');
  assert.equal(fields(lines[3])[3], '122');
});

test('sortedJson sorts nested keys; listingJson is plain data', () => {
  assert.equal(sortedJson({ b: 1, a: { d: 2, c: [3] } }), '{"a":{"c":[3],"d":2},"b":1}');
  const json = listingJson(device);
  assert.equal(json.daemon_pid, 121);
  assert.deepEqual(json.queues, [{ id: 0, tid: 122, affinity: [0, 1] }]);
});
