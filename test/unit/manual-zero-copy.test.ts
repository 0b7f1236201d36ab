/**
 * Manual zero copy (UBLK_F_SUPPORT_ZERO_COPY): each fixed-buffer IO of a forwarded READ/WRITE is
 * one chain, REGISTER_IO_BUF -> the IO -> UNREGISTER_IO_BUF; the request goes on (commit, FUA
 * sync, the rest of a short IO) once both CQEs came. Over the stand-in ring.
 */
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { test } from 'node:test';
import { UBLK_IO_F, UBLK_IO_OP, UBLK_IO_RES, UBLK_U_IO } from '../../src/ublk/ublk-cmd.js';
import { FailureLog } from '../../src/ublk/queue/failure-log.js';
import {
  encodeUserData,
  UD_REGISTER_IO_BUF,
  UD_UNREGISTER_IO_BUF,
} from '../../src/ublk/queue/user-data.js';
import { TagStates } from '../../src/ublk/queue/tag-states.js';
import { IOSQE_CQE_SKIP_SUCCESS, IOSQE_IO_HARDLINK, IOSQE_IO_LINK } from '../../src/uring/index.js';
import {
  forwardedCqe,
  StandInDescriptors,
  StandInRing,
  type PreparedIo,
} from './support/stand-ins.js';
import { dataPathOf } from '../../src/ublk/device/data-path.js';

const { ECANCELED, EINVAL, EIO } = constants.errno;
const CHAR_FD = 42;
const FILE_FD = 5;
/** The user_data of a tag's REGISTER_IO_BUF and UNREGISTER_IO_BUF. */
const register = (tag: number) => encodeUserData(UD_REGISTER_IO_BUF, tag);
const unregister = (tag: number) => encodeUserData(UD_UNREGISTER_IO_BUF, tag);

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
      dataPath: dataPathOf('manual-zero-copy'),
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
    forwardedCqe(tags.forwarded, userData, res);
    return ring.targetIo.slice(before);
  };
  return { tags, ring, sent, logged, commands, request, cqe };
}

const commit = (tag: number, result: number) => ({
  cmdOp: UBLK_U_IO.COMMIT_AND_FETCH_REQ,
  tag,
  result,
});

/** The chain kublk submits for a fixed-buffer IO: REGISTER -> IO -> UNREGISTER, at index `tag`. */
function assertChain(zc: ReturnType<typeof manualTags>, io: PreparedIo, tag: number): void {
  assert.deepEqual(zc.commands().slice(-2), [
    { cmdOp: UBLK_U_IO.REGISTER_IO_BUF, tag: register(tag), result: 0 },
    { cmdOp: UBLK_U_IO.UNREGISTER_IO_BUF, tag: unregister(tag), result: 0 },
  ]);
  assert.equal(zc.ring.commandFlags.get(register(tag)), IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS);
  assert.equal(zc.ring.ioFlags.get(io.userData), IOSQE_IO_HARDLINK, 'unregistered whatever');
  assert.equal(zc.ring.commandFlags.get(unregister(tag)), 0);
  assert.equal(zc.ring.commandAddresses.get(register(tag))!.buffer, tag);
  assert.equal(io.bufIndex, tag, "the command's addr and the IO's buf_index: the tag");
}

test('manual zero copy: REGISTER_IO_BUF, READ_FIXED and UNREGISTER_IO_BUF in one chain; the commit once both CQEs came', () => {
  const zc = manualTags();
  const [read] = zc.request(2, UBLK_IO_OP.READ, 8);
  assert.deepEqual(
    [read.kind, read.fd, read.address, read.offset, read.length],
    ['readFixed', FILE_FD, 0, 4096, 4096],
  );
  assertChain(zc, read, 2);
  // A short read continues in a chain of its own, from where it stopped.
  const [rest] = zc.cqe(read.userData, 1024);
  assert.equal(rest, undefined, 'nothing before the unregister is done');
  const [again] = zc.cqe(unregister(2), 0);
  assert.deepEqual([again.kind, again.address, again.length], ['readFixed', 1024, 3072]);
  assertChain(zc, again, 2);
  // The unregister's CQE may come first.
  zc.cqe(unregister(2), 0);
  assert.deepEqual(zc.sent, [], 'no commit before the IO is done');
  zc.cqe(again.userData, 3072);
  assert.deepEqual(zc.sent, [commit(2, 4096)]);
  assert.equal(zc.tags.ringIoInFlight, 0);
});

test('manual zero copy: a FUA write is written and unregistered, then synced', () => {
  const zc = manualTags();
  const [write] = zc.request(0, UBLK_IO_OP.WRITE, 8, UBLK_IO_F.FUA);
  assert.equal(write.kind, 'writeFixed');
  assertChain(zc, write, 0);
  assert.deepEqual(zc.cqe(write.userData, 4096), []);
  const [sync] = zc.cqe(unregister(0), 0);
  assert.equal(sync.kind, 'fsync');
  zc.cqe(sync.userData, 0);
  assert.deepEqual(zc.sent, [commit(0, 4096)]);
});

test('manual zero copy: a failed registration fails the request at once, with its errno', () => {
  const zc = manualTags();
  const [read] = zc.request(1, UBLK_IO_OP.READ, 8);
  // The kernel skips the CQEs of the chain behind it (REQ_F_SKIP_LINK_CQES).
  zc.cqe(register(1), -EINVAL);
  assert.deepEqual(zc.sent, [commit(1, -EINVAL)]);
  // Where a kernel posts them anyway: nothing more.
  zc.cqe(read.userData, -ECANCELED);
  zc.cqe(unregister(1), -ECANCELED);
  assert.deepEqual(zc.sent, [commit(1, -EINVAL)]);
  assert.equal(zc.tags.ringIoInFlight, 0);
  assert.match(zc.logged.join('\n'), /REGISTER_IO_BUF/);
});

test('manual zero copy: a failed data IO fails the request once unregistered; a failed unregister fails it', () => {
  const zc = manualTags();
  const [write] = zc.request(3, UBLK_IO_OP.WRITE, 8);
  zc.cqe(write.userData, -EIO);
  assert.deepEqual(zc.sent, []);
  zc.cqe(unregister(3), 0);
  assert.deepEqual(zc.sent, [commit(3, -EIO)]);
  assert.match(zc.logged.join('\n'), /write/);

  const [read] = zc.request(2, UBLK_IO_OP.READ, 8);
  zc.cqe(read.userData, 4096);
  zc.cqe(unregister(2), -EINVAL);
  assert.deepEqual(zc.sent.at(-1), commit(2, -EINVAL));
  assert.match(zc.logged.join('\n'), /UNREGISTER_IO_BUF/);
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
