/**
 * Manual zero copy (UBLK_F_SUPPORT_ZERO_COPY): a forwarded READ/WRITE registers its request's
 * pages with REGISTER_IO_BUF linked before its first fixed-buffer IO, and unregisters them once its
 * data IO is done, before the commit (or the FUA sync). Over the stand-in ring.
 */
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { test } from 'node:test';
import { UBLK_IO_F, UBLK_IO_OP, UBLK_IO_RES, UBLK_U_IO } from '../../src/ublk/abi.js';
import { FailureLog } from '../../src/ublk/failure-log.js';
import {
  FORWARDED_IO_BASE,
  FORWARDED_REGISTER,
  FORWARDED_UNREGISTER,
} from '../../src/ublk/forwarded-io.js';
import { TagStates } from '../../src/ublk/tag-states.js';
import { IOSQE_CQE_SKIP_SUCCESS, IOSQE_IO_LINK } from '../../src/uring/index.js';
import { StandInDescriptors, StandInRing } from './support/stand-ins.js';

const { ECANCELED, EINVAL, EIO } = constants.errno;
const CHAR_FD = 42;
const FILE_FD = 5;

function manualTags() {
  const ring = new StandInRing();
  const descs = new StandInDescriptors();
  const sent: { cmdOp: number; tag: number; result: number }[] = [];
  const logged: string[] = [];
  const tags = new TagStates(
    {
      queueId: 1,
      depth: 4,
      bufferBytes: 65536,
      encodedOpcodes: true,
      manualZeroCopy: true,
      charFd: CHAR_FD,
    },
    descs,
    { bytes: new Uint8Array(0), address: 0 },
    { sendIoCmd: (cmdOp, tag, result) => void sent.push({ cmdOp, tag, result }) },
    new FailureLog({ devId: 0, queueId: 1, write: (line) => void logged.push(line) }),
    { sq: ring.sq, makeRoom: () => undefined },
  );
  tags.start({ forward: { fd: FILE_FD, offset: 0 } });
  ring.sent();
  const firstCommand = ring.commands.length;
  sent.length = 0;
  /** The IO commands (REGISTER/UNREGISTER) prepared since the start, with their user_data. */
  const commands = () => ring.sent().slice(firstCommand);
  const request = (tag: number, op: number, nrSectors: number, opFlags = 0) => {
    descs.request(tag, { op, startSector: 8, nrSectors, opFlags });
    const before = ring.targetIo.length;
    tags.complete(tag, UBLK_IO_RES.OK);
    return ring.targetIo.slice(before);
  };
  const cqe = (userData: number, res: number) => {
    const before = ring.targetIo.length;
    tags.forwarded.complete(userData - FORWARDED_IO_BASE, res);
    return ring.targetIo.slice(before);
  };
  return { tags, ring, sent, logged, commands, request, cqe };
}

const commit = (tag: number, result: number) => ({
  cmdOp: UBLK_U_IO.COMMIT_AND_FETCH_REQ,
  tag,
  result,
});

test('manual zero copy: REGISTER_IO_BUF linked before READ_FIXED at the tag index, UNREGISTER before the commit', () => {
  const zc = manualTags();
  const [read] = zc.request(2, UBLK_IO_OP.READ, 8);
  assert.deepEqual(zc.commands(), [
    { cmdOp: UBLK_U_IO.REGISTER_IO_BUF, tag: FORWARDED_REGISTER + 2, result: 0 },
  ]);
  assert.equal(
    zc.ring.commandFlags.get(FORWARDED_REGISTER + 2),
    IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS,
  );
  const addresses = zc.ring.commandAddresses.get(FORWARDED_REGISTER + 2)!;
  assert.equal(addresses.buffer, 2, "the command's addr is the buffer index: the tag");
  assert.deepEqual(
    [read.kind, read.fd, read.bufIndex, read.address, read.offset, read.length],
    ['readFixed', FILE_FD, 2, 0, 4096, 4096],
  );
  // A short read continues in the registered buffer, without registering again.
  const [rest] = zc.cqe(read.userData, 1024);
  assert.deepEqual([rest.kind, rest.address, rest.length], ['readFixed', 1024, 3072]);
  assert.equal(zc.commands().length, 1);
  zc.cqe(rest.userData, 3072);
  assert.deepEqual(zc.commands().at(-1), {
    cmdOp: UBLK_U_IO.UNREGISTER_IO_BUF,
    tag: FORWARDED_UNREGISTER + 2,
    result: 0,
  });
  assert.equal(zc.ring.commandFlags.get(FORWARDED_UNREGISTER + 2), 0);
  assert.deepEqual(zc.sent, [], 'no commit while the buffer is registered');
  zc.cqe(FORWARDED_UNREGISTER + 2, 0);
  assert.deepEqual(zc.sent, [commit(2, 4096)]);
  assert.equal(zc.tags.ringIoInFlight, 0);
});

test('manual zero copy: a FUA write is written, unregistered, then synced', () => {
  const zc = manualTags();
  const [write] = zc.request(0, UBLK_IO_OP.WRITE, 8, UBLK_IO_F.FUA);
  assert.equal(write.kind, 'writeFixed');
  assert.deepEqual(zc.cqe(write.userData, 4096), []);
  assert.equal(zc.commands().at(-1)!.cmdOp, UBLK_U_IO.UNREGISTER_IO_BUF);
  const [sync] = zc.cqe(FORWARDED_UNREGISTER + 0, 0);
  assert.equal(sync.kind, 'fsync');
  zc.cqe(sync.userData, 0);
  assert.deepEqual(zc.sent, [commit(0, 4096)]);
});

test('manual zero copy: a failed registration fails the request at once, with its errno, no unregister', () => {
  const zc = manualTags();
  const [read] = zc.request(1, UBLK_IO_OP.READ, 8);
  // The kernel skips the CQE of the READ_FIXED linked behind it (REQ_F_SKIP_LINK_CQES).
  zc.cqe(FORWARDED_REGISTER + 1, -EINVAL);
  assert.deepEqual(zc.sent, [commit(1, -EINVAL)]);
  zc.cqe(read.userData, -ECANCELED); // where a kernel posts it anyway: nothing more
  assert.deepEqual(zc.sent, [commit(1, -EINVAL)]);
  assert.equal(zc.commands().length, 1, 'only the REGISTER');
  assert.match(zc.logged.join('\n'), /REGISTER_IO_BUF/);
});

test('manual zero copy: a failed data IO still unregisters, then fails the request', () => {
  const zc = manualTags();
  const [write] = zc.request(3, UBLK_IO_OP.WRITE, 8);
  zc.cqe(write.userData, -EIO);
  assert.equal(zc.commands().at(-1)!.cmdOp, UBLK_U_IO.UNREGISTER_IO_BUF);
  assert.deepEqual(zc.sent, []);
  zc.cqe(FORWARDED_UNREGISTER + 3, 0);
  assert.deepEqual(zc.sent, [commit(3, -EIO)]);
  assert.match(zc.logged.join('\n'), /write/);
});

test('manual zero copy: FLUSH registers nothing', () => {
  const zc = manualTags();
  zc.tags.forwarded.use({ fd: FILE_FD, offset: 0, sync: true });
  const [sync] = zc.request(0, UBLK_IO_OP.FLUSH, 0);
  assert.equal(sync.kind, 'fsync');
  assert.deepEqual(zc.commands(), []);
  zc.cqe(sync.userData, 0);
  assert.deepEqual(zc.sent, [commit(0, 0)]);
});
