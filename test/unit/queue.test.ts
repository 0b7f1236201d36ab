/**
 * The queue's tag state machine and its scheduler, on a stand-in ring and descriptor table: every
 * state a tag goes through, and what each kind of handler result is committed as.
 */
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { afterEach, test } from 'node:test';
import { isErrnoError } from '../../src/errors.js';
import { UBLK_IO, UBLK_IO_F, UBLK_IO_OP, UBLK_IO_RES, UBLK_U_IO } from '../../src/ublk/abi.js';
import { FailureLog } from '../../src/ublk/failure-log.js';
import { Queue } from '../../src/ublk/queue.js';
import { TagStates } from '../../src/ublk/tag-states.js';
import type { QueueHandlers, QueueIo } from '../../src/ublk/target.js';
import {
  StandInDescriptors,
  StandInRing,
  standInResources,
  type Request,
} from './support/stand-ins.js';

const { EIO, ENOSPC, ENOENT, EFAULT, EINVAL, EOPNOTSUPP } = constants.errno;
const DEPTH = 4;
const BUFFER_BYTES = 64 * 1024;
const TARGET_IO_BASE = 1 << 16;

const turn = () => new Promise((resolve) => setImmediate(resolve));

async function settle(turns = 4): Promise<void> {
  for (let i = 0; i < turns; i++) await turn();
}

/** Queues that still serve: each test's are stopped after it, as STOP_DEV would (every tag aborted). */
const live: { queue: Queue; ring: StandInRing; failed: () => unknown }[] = [];
afterEach(async () => {
  for (const { queue, ring, failed } of live.splice(0)) {
    if (failed() !== undefined || ring.closed) continue; // its loop has ended already
    for (let tag = 0; tag < DEPTH; tag++) ring.complete(tag, UBLK_IO_RES.ABORT);
    await queue.done;
  }
});

function queueWith(handlers: QueueHandlers, options: { encodedOpcodes?: boolean } = {}) {
  const ring = new StandInRing();
  const descs = new StandInDescriptors();
  const resources = standInResources(ring, descs, DEPTH * BUFFER_BYTES);
  const queue = new Queue(
    {
      devId: 7,
      queueId: 1,
      depth: DEPTH,
      bufferBytes: BUFFER_BYTES,
      charFd: 99,
      encodedOpcodes: options.encodedOpcodes ?? false,
    },
    resources,
  );
  queue.start(handlers);
  live.push({ queue, ring, failed: resources.fatalError });
  /** The kernel hands `tag` a request; the commit it gets back once the queue has answered. */
  const serve = async (tag: number, request: Request) => {
    descs.request(tag, request);
    const before = ring.sent().length;
    ring.complete(tag, UBLK_IO_RES.OK);
    await settle();
    const after = ring.sent().slice(before);
    assert.equal(after.length, 1, 'one command back for the request');
    return after[0];
  };
  return { queue, ring, descs, resources, serve };
}

const ram = () => {
  const calls: string[] = [];
  const handlers: QueueHandlers = {
    read: (buf, offset) => {
      calls.push(`read ${buf.length}@${offset}`);
      buf.fill(0xab);
    },
    write: (buf, offset, { fua }) => void calls.push(`write ${buf.length}@${offset} fua=${fua}`),
    flush: () => void calls.push('flush'),
    discard: (offset, length) => void calls.push(`discard ${length}@${offset}`),
    writeZeroes: (offset, length, { noUnmap }) =>
      void calls.push(`zeroes ${length}@${offset} noUnmap=${noUnmap}`),
  };
  return { calls, handlers };
};

test('start fetches every tag, with the legacy or the encoded opcode', () => {
  for (const [encodedOpcodes, fetch] of [
    [false, UBLK_IO.FETCH_REQ],
    [true, UBLK_U_IO.FETCH_REQ],
  ] as const) {
    const { ring } = queueWith(ram().handlers, { encodedOpcodes });
    assert.deepEqual(
      ring.sent(),
      Array.from({ length: DEPTH }, (_, tag) => ({ cmdOp: fetch, tag, result: -1 })),
    );
  }
});

test('each request reaches its handler and is committed with the whole length', async () => {
  const { calls, handlers } = ram();
  const { serve, resources } = queueWith(handlers);
  const commit = UBLK_IO.COMMIT_AND_FETCH_REQ;
  assert.deepEqual(await serve(2, { op: UBLK_IO_OP.READ, startSector: 8, nrSectors: 8 }), {
    cmdOp: commit,
    tag: 2,
    result: 4096,
  });
  const tag2 = resources.buffer.bytes.subarray(2 * BUFFER_BYTES, 2 * BUFFER_BYTES + 4096);
  assert.ok(
    tag2.every((b) => b === 0xab),
    "the read filled the tag's own buffer",
  );
  const fua = UBLK_IO_F.FUA;
  assert.equal((await serve(0, { op: UBLK_IO_OP.WRITE, nrSectors: 1, opFlags: fua })).result, 512);
  assert.equal((await serve(1, { op: UBLK_IO_OP.FLUSH, nrSectors: 0 })).result, 0);
  assert.equal(
    (await serve(1, { op: UBLK_IO_OP.DISCARD, startSector: 1, nrSectors: 2 })).result,
    0,
  );
  const noUnmap = UBLK_IO_F.NOUNMAP;
  const zeroes = { op: UBLK_IO_OP.WRITE_ZEROES, nrSectors: 2, opFlags: noUnmap };
  assert.equal((await serve(3, zeroes)).result, 0);
  assert.deepEqual(calls, [
    'read 4096@4096',
    'write 512@0 fua=true',
    'flush',
    'discard 1024@512',
    'zeroes 1024@0 noUnmap=true',
  ]);
});

test('handler results: short counts, negative errnos, out-of-range values', async () => {
  let value: number | undefined;
  const { serve } = queueWith({
    read: () => value,
    write: () => value,
    discard: () => value,
  });
  const read = { op: UBLK_IO_OP.READ, nrSectors: 8 };
  value = 512;
  assert.equal((await serve(0, read)).result, 512, 'a short read: the kernel requeues the rest');
  value = -ENOSPC;
  assert.equal((await serve(0, { op: UBLK_IO_OP.WRITE, nrSectors: 8 })).result, -ENOSPC);
  value = 8192;
  assert.equal((await serve(0, read)).result, -EIO, 'more than the request');
  value = 1.5;
  assert.equal((await serve(0, read)).result, -EIO, 'not a whole number');
  value = 512;
  const discard = { op: UBLK_IO_OP.DISCARD, nrSectors: 2 };
  assert.equal((await serve(0, discard)).result, 0, 'a discard commits 0, never bytes');
});

test('a kind of request without its handler fails with EOPNOTSUPP', async () => {
  const { serve } = queueWith({ read: () => undefined });
  assert.equal((await serve(0, { op: UBLK_IO_OP.WRITE })).result, -EOPNOTSUPP);
  assert.equal((await serve(0, { op: UBLK_IO_OP.FLUSH })).result, -EOPNOTSUPP);
  assert.equal((await serve(0, { op: UBLK_IO_OP.DISCARD })).result, -EOPNOTSUPP);
  assert.equal((await serve(0, { op: UBLK_IO_OP.WRITE_ZEROES })).result, -EOPNOTSUPP);
  assert.equal((await serve(0, { op: 99 })).result, -EOPNOTSUPP);
});

test('a throwing handler fails its request with the error errno, EIO without one, logged once per cause', async () => {
  let error: unknown;
  const { serve, resources } = queueWith({
    read: () => {
      throw error;
    },
    write: () => undefined,
  });
  const read = { op: UBLK_IO_OP.READ, startSector: 2, nrSectors: 8 };
  error = Object.assign(new Error('disk full'), { errno: ENOSPC, code: 'ENOSPC' });
  assert.equal((await serve(1, read)).result, -ENOSPC);
  assert.equal((await serve(1, read)).result, -ENOSPC);
  error = Object.assign(new Error('node-style'), { errno: -ENOENT, code: 'ENOENT' });
  assert.equal((await serve(1, read)).result, -ENOENT);
  error = 'not even an Error';
  assert.equal((await serve(1, read)).result, -EIO);
  assert.equal((await serve(2, { op: UBLK_IO_OP.WRITE })).result, 4096, 'the queue goes on');
  assert.deepEqual(resources.logged, [
    'ublk device 7 queue 1 tag 1: READ of 4096 bytes at offset 1024 failed with ENOSPC: disk full\n',
    'ublk device 7 queue 1 tag 1: READ of 4096 bytes at offset 1024 failed with ENOENT: node-style\n',
    'ublk device 7 queue 1 tag 1: READ of 4096 bytes at offset 1024 failed with EIO: not even an Error\n',
  ]);
});

test('an async handler commits once it settles; a rejection fails the request', async () => {
  let release!: () => void;
  const { serve, ring, descs } = queueWith({
    read: () => new Promise<void>((resolve) => (release = resolve)),
    write: () => Promise.reject(Object.assign(new Error('gone'), { errno: ENOENT })),
  });
  descs.request(0, { op: UBLK_IO_OP.READ, nrSectors: 8 });
  const before = ring.sent().length;
  ring.complete(0, UBLK_IO_RES.OK);
  await settle();
  assert.equal(ring.sent().length, before, 'nothing committed while the handler is pending');
  release();
  await settle();
  assert.deepEqual(ring.sent().slice(before), [
    { cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ, tag: 0, result: 4096 },
  ]);
  assert.equal((await serve(1, { op: UBLK_IO_OP.WRITE })).result, -ENOENT);
});

test("ctx.io: a target IO's completion settles its promise; whole-buffer calls loop over short IO", async () => {
  const box: { io?: QueueIo } = {};
  let bytesRead = -1;
  const { queue, ring, descs } = queueWith({
    read: async (buf) => void (bytesRead = await box.io!.readFully(3, buf, 0)),
    write: (buf) => box.io!.writeFully(3, buf, 0),
  });
  box.io = queue.io;
  const lastIo = () => ring.targetIo[ring.targetIo.length - 1];
  const commitsOf = (tag: number) =>
    ring.sent().filter((c) => c.tag === tag && c.cmdOp === UBLK_IO.COMMIT_AND_FETCH_REQ);

  descs.request(0, { op: UBLK_IO_OP.READ, nrSectors: 8 });
  ring.complete(0, UBLK_IO_RES.OK);
  await settle();
  assert.deepEqual(lastIo(), { kind: 'read', userData: TARGET_IO_BASE, length: 4096 });
  ring.complete(lastIo().userData, 1024);
  await settle();
  assert.equal(lastIo().length, 3072, 'the rest, after a short read');
  ring.complete(lastIo().userData, 0);
  await settle();
  assert.equal(bytesRead, 1024, 'short only at the end of the file');
  assert.deepEqual(commitsOf(0), [{ cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ, tag: 0, result: 4096 }]);

  descs.request(1, { op: UBLK_IO_OP.WRITE, nrSectors: 8 });
  ring.complete(1, UBLK_IO_RES.OK);
  await settle();
  ring.complete(lastIo().userData, 2048);
  await settle();
  assert.deepEqual(lastIo(), { kind: 'write', userData: TARGET_IO_BASE, length: 2048 });
  ring.complete(lastIo().userData, -ENOSPC);
  await settle();
  assert.equal(commitsOf(1)[0].result, -ENOSPC);
});

test('NEED_GET_DATA: the queue sends its buffer before the write reaches the handler', async () => {
  const { calls, handlers } = ram();
  const { ring, descs } = queueWith(handlers);
  const before = ring.sent().length;
  ring.complete(3, UBLK_IO_RES.NEED_GET_DATA);
  await settle();
  assert.deepEqual(ring.sent().slice(before), [
    { cmdOp: UBLK_IO.NEED_GET_DATA, tag: 3, result: 0 },
  ]);
  assert.deepEqual(calls, []);
  descs.request(3, { op: UBLK_IO_OP.WRITE, nrSectors: 8 });
  ring.complete(3, UBLK_IO_RES.OK);
  await settle();
  assert.deepEqual(calls, ['write 4096@0 fua=false']);
});

test('ABORT of every tag: handlers closed, ring closed, memory released, done resolves', async () => {
  let closed = false;
  const { queue, ring, resources } = queueWith({
    read: () => undefined,
    close: () => void (closed = true),
  });
  for (let tag = 0; tag < DEPTH - 1; tag++) ring.complete(tag, UBLK_IO_RES.ABORT);
  await settle();
  assert.equal(ring.closed, false, 'a tag is still live');
  ring.complete(DEPTH - 1, UBLK_IO_RES.ABORT);
  await queue.done;
  assert.ok(closed && ring.closed && resources.released());
});

test('a command the kernel refuses fails the queue thread with its errno', async () => {
  const { ring, resources } = queueWith({ read: () => undefined });
  ring.complete(2, -EINVAL);
  await settle();
  const err = resources.fatalError();
  assert.ok(isErrnoError(err, 'EINVAL'), String(err));
  assert.equal(err.tag, 2);
  assert.equal(err.queueId, 1);
});

test('a failing io_uring_enter fails the queue thread with its errno, not a RangeError', async () => {
  const { ring, resources } = queueWith({ read: () => undefined });
  ring.waitResults.push(-EFAULT);
  await settle();
  const err = resources.fatalError();
  assert.ok(isErrnoError(err, 'EFAULT'), String(err));
  assert.equal(err.syscall, 'io_uring_enter');
});

test('TagStates on its own: a refused FETCH throws where the completion is handled', () => {
  const sent: number[] = [];
  const tags = new TagStates(
    { queueId: 0, depth: 1, bufferBytes: 4096, encodedOpcodes: false },
    new StandInDescriptors(),
    new Uint8Array(4096),
    { sendIoCmd: (cmdOp) => void sent.push(cmdOp) },
    new FailureLog({ devId: 0, queueId: 0, write: () => undefined }),
  );
  tags.start({ read: () => undefined });
  assert.deepEqual(sent, [UBLK_IO.FETCH_REQ]);
  assert.throws(
    () => tags.complete(0, -EINVAL),
    (err: unknown) => isErrnoError(err, 'EINVAL'),
  );
  tags.complete(0, UBLK_IO_RES.ABORT);
  assert.ok(tags.allFinished);
});

test('TagStates after an ABORT (quiesce): a tag whose request is committed is out of service', async () => {
  const sent: number[] = [];
  let finishRead!: () => void;
  const tags = new TagStates(
    { queueId: 0, depth: 2, bufferBytes: 4096, encodedOpcodes: false },
    new StandInDescriptors(),
    new Uint8Array(2 * 4096),
    { sendIoCmd: (cmdOp) => void sent.push(cmdOp) },
    new FailureLog({ devId: 0, queueId: 0, write: () => undefined }),
  );
  tags.start({ read: () => new Promise<void>((resolve) => (finishRead = resolve)) });
  tags.complete(0, UBLK_IO_RES.OK); // tag 0's request reaches its (pending) handler
  tags.complete(1, UBLK_IO_RES.ABORT); // QUIESCE_DEV aborts the idle tag only
  assert.ok(!tags.allFinished, 'tag 0 still has its request');
  finishRead();
  await settle();
  assert.equal(sent.at(-1), UBLK_IO.COMMIT_AND_FETCH_REQ, 'the request is completed');
  assert.ok(tags.allFinished, 'and its re-armed command is left to the ring close');
  tags.complete(0, UBLK_IO_RES.ABORT); // a later abort of it counts once
  assert.ok(tags.allFinished);
});
