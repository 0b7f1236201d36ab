import assert from 'node:assert/strict';
import { constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { after, before, test } from 'node:test';
import { close, open } from '../../src/sys.js';
import {
  AUTO_DEV_ID,
  CTRL_CMD,
  encodeStruct,
  NO_QUEUE_ID,
  UBLK_F,
  UBLK_S_DEV,
} from '../../src/ublk/ublk-cmd.js';
import { CONTROL_PATH, Control, isControlError } from '../../src/ublk/control/control.js';
import { IORING_SETUP_SQE128, Ring } from '../../src/uring/index.js';

let control: Control;
before(() => {
  control = Control.open();
});
after(() => control.close());

/** Sends one raw control command and returns the CQE result. */
function rawCommand(ringFlags: number, cmdOp: number, devId: number): number {
  const fd = open(CONTROL_PATH, fsConstants.O_RDWR, 0);
  const ring = Ring.create({ entries: 4, flags: ringFlags });
  try {
    const cmd = ring.sq.prepUringCmd(fd, cmdOp, 42)!;
    encodeStruct(
      CTRL_CMD,
      { devId, queueId: NO_QUEUE_ID },
      new Uint8Array(cmd.buffer, cmd.byteOffset, CTRL_CMD.size),
    );
    assert.equal(ring.submitAndWait(1), 1);
    let result: number | undefined;
    ring.drain((userData, res) => {
      assert.equal(userData, 42);
      result = res;
    });
    return result!;
  } finally {
    ring.close();
    close(fd);
  }
}

test('ADD_DEV with a kernel-chosen id, GET_DEV_INFO, SET/GET_PARAMS, DEL_DEV', async () => {
  const added = await control.addDev({
    nrHwQueues: 1,
    queueDepth: 64,
    maxIoBufBytes: 256 * 1024,
    flags: UBLK_F.USER_RECOVERY,
  });
  assert.notEqual(added.devId, AUTO_DEV_ID, 'the kernel wrote back the id it chose');
  try {
    const info = await control.getDevInfo(added.devId);
    assert.equal(info.devId, added.devId);
    assert.equal(info.nrHwQueues, 1);
    assert.equal(info.queueDepth, 64);
    assert.equal(info.maxIoBufBytes, 256 * 1024);
    assert.equal(info.state, UBLK_S_DEV.DEAD, 'not started yet');
    assert.ok(info.flags & UBLK_F.USER_RECOVERY, 'the requested flag was granted');
    assert.equal(info.flags, added.flags, 'flags read back match what ADD_DEV returned');

    const basic = {
      attrs: 0,
      logicalBsShift: 9,
      physicalBsShift: 12,
      ioOptShift: 12,
      ioMinShift: 9,
      maxSectors: 512,
      chunkSectors: 0,
      devSectors: 2 ** 21,
      virtBoundaryMask: 0,
    };
    await control.setParams(added.devId, { basic });
    const params = await control.getParams(added.devId);
    assert.deepEqual(params.basic, basic);
    assert.equal(params.discard, undefined, 'no discard section was set');
  } finally {
    await control.delDev(added.devId);
  }
  await assert.rejects(control.getDevInfo(added.devId), (err: unknown) =>
    isControlError(err, 'ENODEV'),
  );
});

test('ADD_DEV of an id in use fails with EEXIST', async () => {
  const first = await control.addDev({ nrHwQueues: 1, queueDepth: 4, maxIoBufBytes: 4096 });
  try {
    await assert.rejects(
      control.addDev({ devId: first.devId, nrHwQueues: 1, queueDepth: 4, maxIoBufBytes: 4096 }),
      (err: unknown) => isControlError(err, 'EEXIST'),
    );
  } finally {
    await control.delDev(first.devId);
  }
});

test('an unsupported opcode completes with an error instead of hanging', async () => {
  const dev = await control.addDev({ nrHwQueues: 1, queueDepth: 4, maxIoBufBytes: 4096 });
  try {
    assert.equal(rawCommand(IORING_SETUP_SQE128, 0x3f, dev.devId), -osConstants.errno.EOPNOTSUPP);
    // Control commands need 128-byte SQEs.
    assert.equal(rawCommand(0, 0x02, dev.devId), -osConstants.errno.EINVAL);
  } finally {
    await control.delDev(dev.devId);
  }
});
