/**
 * Batch IO's pure logic on stand-ins for the ring, the buffer rings and the kernel: the
 * PREP_IO_CMDS and COMMIT_IO_CMDS element arrays it builds, the tags it reads out of the fetch
 * buffers, and how a fetch command's end (used-up buffer, ABORT, error) is answered.
 */
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { test } from 'node:test';
import {
  BATCH_IO,
  ELEM_HEADER,
  UBLK_BATCH_F,
  UBLK_IO_RES,
  UBLK_U_IO,
} from '../../src/ublk/ublk-cmd.js';
import {
  BATCH_SLOTS,
  BatchIo,
  batchElemBytes,
  type BatchMemory,
} from '../../src/ublk/queue/batch-io.js';
import { UD_BATCH_COMMAND, userDataIndex, userDataKind } from '../../src/ublk/queue/user-data.js';
import { IORING_CQE_F_MORE, IORING_URING_CMD_MULTISHOT } from '../../src/uring/abi.js';

const { ENOBUFS, EINVAL } = constants.errno;
const DEPTH = 8;
const QUEUE_ID = 3;
const CHAR_FD = 42;
const ELEMS_ADDRESS = 0x10_0000_0000; // above 2^32: both words of a u64 matter
const FETCH_ADDRESS = [0x20_0000, 0x30_0000];
const FETCH_BYTES = 64;
const TAG_BUFFERS = 0x7f00_0000_0000;
const BYTES_PER_TAG = 0x8_0000;

/** The element buffer of a PREP_IO_CMDS or COMMIT_IO_CMDS, from its user_data. */
function slotOf(userData: number): number {
  assert.equal(userDataKind(userData), UD_BATCH_COMMAND);
  return userDataIndex(userData);
}

interface Sent {
  cmdOp: number;
  userData: number;
  addr: number;
  len: number;
  bufGroup?: number;
  cmdFlags?: number;
  cmd: DataView;
}

function standIn(options: { copy?: boolean; autoBufReg?: boolean } = {}) {
  const sent: Sent[] = [];
  const pushed: { ring: number; address: number; length: number }[] = [];
  const requests: number[] = [];
  const aborts: number[][] = [];
  const elemBytes = batchElemBytes(options.copy === true);
  const elems = new Uint8Array(BATCH_SLOTS * DEPTH * elemBytes);
  const fetchBuffers = FETCH_ADDRESS.map(() => new Uint8Array(FETCH_BYTES));
  const memory: BatchMemory = {
    elems: { bytes: elems, address: ELEMS_ADDRESS },
    fetch: fetchBuffers.map((bytes, ring) => ({
      bytes,
      address: FETCH_ADDRESS[ring],
      ring: { push: (address, length) => void pushed.push({ ring, address, length }) },
    })),
  };
  const batch = new BatchIo(
    {
      queueId: QUEUE_ID,
      depth: DEPTH,
      charFd: CHAR_FD,
      copyBuffer: options.copy ? { address: TAG_BUFFERS, bytesPerTag: BYTES_PER_TAG } : undefined,
      autoBufReg: options.autoBufReg === true,
    },
    memory,
    {
      sq: {
        prepUringCmd: (fd, cmdOp, userData, addr = 0, _flags = 0, len = 0) => {
          assert.equal(fd, CHAR_FD);
          const cmd = new DataView(new ArrayBuffer(16));
          sent.push({ cmdOp, userData, addr, len, cmd });
          return cmd;
        },
        prepUringCmdBufferSelect: (fd, cmdOp, userData, bufGroup, cmdFlags) => {
          assert.equal(fd, CHAR_FD);
          const cmd = new DataView(new ArrayBuffer(16));
          sent.push({ cmdOp, userData, addr: 0, len: 0, bufGroup, cmdFlags, cmd });
          return cmd;
        },
      },
      makeRoom: () => assert.fail('the stand-in SQ never fills'),
    },
    {
      request: (tag) => void requests.push(tag),
      abort: (held) => void aborts.push([...held]),
    },
  );
  /** The elements of a sent PREP or COMMIT, read back from the element memory. */
  const elementsOf = (s: Sent) => {
    const view = new DataView(elems.buffer);
    const base = s.addr - ELEMS_ADDRESS;
    const header = batchHeader(s.cmd);
    return Array.from({ length: header.nrElem }, (_, i) => {
      const at = base + i * header.elemBytes;
      const elem: Record<string, number> = {
        tag: view.getUint16(at + ELEM_HEADER.fields.tag.offset, true),
        bufIndex: view.getUint16(at + ELEM_HEADER.fields.bufIndex.offset, true),
        result: view.getInt32(at + ELEM_HEADER.fields.result.offset, true),
      };
      if (header.elemBytes > ELEM_HEADER.size) {
        elem.bufAddr = Number(view.getBigUint64(at + ELEM_HEADER.size, true));
      }
      return elem;
    });
  };
  /** The kernel writes `tags` into fetch buffer `i` after what it used before. */
  const used = [0, 0];
  const deliver = (i: number, tags: number[], flags = IORING_CQE_F_MORE) => {
    const view = new DataView(fetchBuffers[i].buffer);
    tags.forEach((tag, k) => view.setUint16(used[i] + 2 * k, tag, true));
    used[i] += 2 * tags.length;
    batch.fetched(i, 2 * tags.length, flags);
  };
  return { batch, sent, pushed, requests, aborts, elementsOf, deliver, used };
}

function batchHeader(cmd: DataView) {
  const f = BATCH_IO.fields;
  return {
    qId: cmd.getUint16(f.qId.offset, true),
    flags: cmd.getUint16(f.flags.offset, true),
    nrElem: cmd.getUint16(f.nrElem.offset, true),
    elemBytes: cmd.getUint8(f.elemBytes.offset),
  };
}

function started(options: { copy?: boolean; autoBufReg?: boolean } = {}) {
  const s = standIn(options);
  for (let tag = 0; tag < DEPTH; tag++) s.batch.prepare(tag);
  s.batch.flush();
  s.batch.complete(slotOf(s.sent[0].userData), 0);
  s.sent.length = 0;
  s.pushed.length = 0;
  return s;
}

test('start: one PREP_IO_CMDS with an element per tag, then two multishot FETCH_IO_CMDS', () => {
  for (const [options, elemBytes, flags] of [
    [{ copy: true }, 16, UBLK_BATCH_F.HAS_BUF_ADDR],
    [{ autoBufReg: true }, 8, 0],
    [{}, 8, 0], // user copy, manual zero copy: no buffer named
  ] as const) {
    const { batch, sent, pushed, elementsOf } = standIn(options);
    for (let tag = 0; tag < DEPTH; tag++) batch.prepare(tag);
    assert.equal(sent.length, 0, 'nothing before the flush');
    batch.flush();
    assert.equal(sent.length, 3);
    const [prep, ...fetches] = sent;
    assert.equal(prep.cmdOp, UBLK_U_IO.PREP_IO_CMDS);
    assert.equal(prep.len, DEPTH * elemBytes);
    assert.deepEqual(batchHeader(prep.cmd), { qId: QUEUE_ID, flags, nrElem: DEPTH, elemBytes });
    assert.deepEqual(
      elementsOf(prep),
      Array.from({ length: DEPTH }, (_, tag) => ({
        tag,
        bufIndex: 'autoBufReg' in options ? tag : 0,
        result: 0,
        ...('copy' in options ? { bufAddr: TAG_BUFFERS + tag * BYTES_PER_TAG } : {}),
      })),
    );
    fetches.forEach((fetch, i) => {
      assert.equal(fetch.cmdOp, UBLK_U_IO.FETCH_IO_CMDS);
      assert.equal(fetch.bufGroup, i);
      assert.equal(fetch.cmdFlags, IORING_URING_CMD_MULTISHOT);
      assert.deepEqual(batchHeader(fetch.cmd), {
        qId: QUEUE_ID,
        flags: 0,
        nrElem: FETCH_BYTES / 2,
        elemBytes: 2,
      });
    });
    assert.deepEqual(pushed, [
      { ring: 0, address: FETCH_ADDRESS[0], length: FETCH_BYTES },
      { ring: 1, address: FETCH_ADDRESS[1], length: FETCH_BYTES },
    ]);
    assert.equal(batch.inFlight, 1, 'PREP awaits its CQE');
    batch.complete(slotOf(prep.userData), 0);
    assert.equal(batch.inFlight, 0);
  }
});

test('fetch CQEs: the tags come out of the buffer in order, each CQE after the last', () => {
  const { deliver, requests } = started();
  deliver(0, [3, 1]);
  deliver(0, [6]);
  deliver(1, [0, 7, 2]);
  assert.deepEqual(requests, [3, 1, 6, 0, 7, 2]);
});

test("one COMMIT_IO_CMDS per flush carries every result since the last, each with its tag's buffer", () => {
  const { batch, deliver, sent, elementsOf } = started({ copy: true });
  deliver(0, [5, 2, 4]);
  batch.commit(2, 4096);
  batch.commit(5, -5);
  batch.flush();
  batch.commit(4, 0);
  batch.flush();
  batch.flush(); // nothing more to commit: nothing sent
  assert.equal(sent.length, 2);
  assert.deepEqual(
    sent.map((s) => [s.cmdOp, s.len, batchHeader(s.cmd).nrElem]),
    [
      [UBLK_U_IO.COMMIT_IO_CMDS, 32, 2],
      [UBLK_U_IO.COMMIT_IO_CMDS, 16, 1],
    ],
  );
  assert.notEqual(sent[0].addr, sent[1].addr, 'the second is built while the first awaits its CQE');
  const buf = (tag: number) => TAG_BUFFERS + tag * BYTES_PER_TAG;
  assert.deepEqual(elementsOf(sent[0]), [
    { tag: 2, bufIndex: 0, result: 4096, bufAddr: buf(2) },
    { tag: 5, bufIndex: 0, result: -5, bufAddr: buf(5) },
  ]);
  assert.deepEqual(elementsOf(sent[1]), [{ tag: 4, bufIndex: 0, result: 0, bufAddr: buf(4) }]);
  assert.equal(batch.inFlight, 2);
  for (const s of sent) batch.complete(slotOf(s.userData), s.len);
  assert.equal(batch.inFlight, 0);
});

test('a commit the kernel took only in part, or refused, fails the queue', () => {
  const { batch, deliver, sent } = started({ autoBufReg: true });
  deliver(0, [0, 1]);
  batch.commit(0, 512);
  batch.commit(1, 512);
  batch.flush();
  assert.throws(
    () => batch.complete(slotOf(sent[0].userData), 8),
    /COMMIT_IO_CMDS \(queue 3\) took 8 of 16 bytes: element 1 refused/,
  );
  deliver(1, [2]);
  batch.commit(2, 0);
  batch.flush();
  assert.throws(
    () => batch.complete(slotOf(sent[1].userData), -EINVAL),
    /COMMIT_IO_CMDS: EINVAL \(queue 3\)/,
  );
});

test('a fetch whose buffer is used up (ENOBUFS) is armed again over its whole buffer', () => {
  const { batch, deliver, sent, pushed, requests, used } = started();
  deliver(1, [4, 5]);
  batch.fetched(1, -ENOBUFS, 0);
  assert.deepEqual(pushed, [{ ring: 1, address: FETCH_ADDRESS[1], length: FETCH_BYTES }]);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].cmdOp, UBLK_U_IO.FETCH_IO_CMDS);
  assert.equal(sent[0].bufGroup, 1);
  used[1] = 0; // the kernel starts the re-added buffer from its beginning
  batch.commit(4, 0);
  deliver(1, [4]);
  assert.deepEqual(requests, [4, 5, 4]);
});

test('ABORT ends the queue: the tags not held are out of service, nothing is armed again', () => {
  const { batch, deliver, sent, aborts } = started();
  deliver(0, [1, 6]);
  batch.commit(1, 0);
  batch.fetched(0, UBLK_IO_RES.ABORT, 0);
  batch.fetched(1, UBLK_IO_RES.ABORT, 0);
  assert.deepEqual(aborts, [[0, 0, 0, 0, 0, 0, 1, 0]], 'tag 6 still held, told once');
  batch.flush();
  assert.deepEqual(
    sent.map((s) => s.cmdOp),
    [UBLK_U_IO.COMMIT_IO_CMDS],
    'the commit still goes, no fetch',
  );
});

test('a fetch failure, a tag beyond the depth or delivered twice fails the queue', () => {
  const { batch, deliver } = started();
  assert.throws(() => batch.fetched(0, -EINVAL, 0), /FETCH_IO_CMDS: EINVAL \(queue 3\)/);
  assert.throws(() => deliver(1, [DEPTH]), /delivered tag 8, beyond the queue depth/);
  const other = started();
  other.deliver(0, [2]);
  assert.throws(() => other.deliver(1, [2]), /delivered tag 2, not committed since/);
});

test('element buffers are reused once their CQE came; none free fails the queue in words', () => {
  const { batch, deliver, sent } = started();
  for (let round = 0; round < 3 * BATCH_SLOTS; round++) {
    deliver(round % 2, [round % DEPTH]);
    batch.commit(round % DEPTH, 0);
    batch.flush();
    const s = sent[sent.length - 1];
    batch.complete(slotOf(s.userData), s.len);
  }
  assert.equal(new Set(sent.map((s) => s.addr)).size, 1, 'the same buffer while each CQE comes');
  for (let slot = 0; slot < BATCH_SLOTS; slot++) {
    deliver(0, [slot]);
    batch.commit(slot, 0);
    batch.flush();
  }
  deliver(1, [0]);
  assert.throws(() => batch.commit(0, 0), /all 8 batch element buffers await their CQE/);
});
