/**
 * The queue's tag state machine and its scheduler, on a stand-in ring and descriptor table: every
 * state a tag goes through, and what each kind of handler result is committed as.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { afterEach, test } from 'node:test';
import { isErrnoError } from '../../src/errors.js';
import { UBLK_IO, UBLK_IO_F, UBLK_IO_OP, UBLK_IO_RES, UBLK_U_IO } from '../../src/ublk/ublk-cmd.js';
import { FailureLog } from '../../src/ublk/queue/failure-log.js';
import {
  encodeUserData,
  UD_FORWARDED_IO,
  UD_LINKED_COMMIT,
  UD_TARGET_IO,
  userDataKind,
} from '../../src/ublk/queue/user-data.js';
import { Queue } from '../../src/ublk/queue/queue.js';
import { TagStates } from '../../src/ublk/queue/tag-states.js';
import { IoBuffer, MSG_NOSIGNAL, MSG_WAITALL } from '../../src/uring/index.js';
import type { QueueHandlers, QueueIo, RingForward } from '../../src/ublk/target/contract.js';
import {
  forwardedCqe,
  StandInDescriptors,
  StandInRing,
  standInResources,
  type PreparedIo,
  type Request,
} from './support/stand-ins.js';
import { dataPathOf } from '../../src/ublk/device/data-path.js';

const { EIO, ENOSPC, ENOENT, EFAULT, EINVAL, EOPNOTSUPP } = constants.errno;
const DEPTH = 4;
const BUFFER_BYTES = 64 * 1024;

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

function queueWith(
  handlers: QueueHandlers,
  options: { encodedOpcodes?: boolean; autoBufReg?: boolean } = {},
) {
  const ring = new StandInRing();
  const descs = new StandInDescriptors();
  const resources = standInResources(ring, descs, options.autoBufReg ? 0 : DEPTH * BUFFER_BYTES);
  const queue = new Queue(
    {
      devId: 7,
      queueId: 1,
      depth: DEPTH,
      bufferBytes: BUFFER_BYTES,
      charFd: 99,
      encodedOpcodes: options.encodedOpcodes ?? false,
      dataPath: dataPathOf(options.autoBufReg ? 'auto-zero-copy' : 'copy'),
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
  assert.deepEqual(
    { ...lastIo(), address: undefined },
    {
      kind: 'read',
      userData: encodeUserData(UD_TARGET_IO, 0),
      fd: 3,
      length: 4096,
      offset: 0,
      address: undefined,
    },
  );
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
  assert.deepEqual(
    { ...lastIo(), address: undefined },
    {
      kind: 'write',
      userData: encodeUserData(UD_TARGET_IO, 0),
      fd: 3,
      length: 2048,
      offset: 2048,
      address: undefined,
    },
  );
  ring.complete(lastIo().userData, -ENOSPC);
  await settle();
  assert.equal(commitsOf(1)[0].result, -ENOSPC);
});

test('ctx.io.send with waitAll: MSG_WAITALL, and the wait that submits it asks for one completion more', async () => {
  const box: { io?: QueueIo } = {};
  const { queue, ring, descs } = queueWith({
    read: async (buf) => void (await box.io!.send(5, buf, true)),
    write: async (buf) => void (await box.io!.send(5, buf)),
  });
  box.io = queue.io;
  /** A request whose handler sends: the SEND's flags, and what the first three waits asked for. */
  const sending = async (tag: number, op: number) => {
    ring.waitCounts.length = 0;
    descs.request(tag, { op, nrSectors: 8 });
    ring.complete(tag, UBLK_IO_RES.OK);
    await settle(2);
    const send = ring.targetIo[ring.targetIo.length - 1];
    ring.complete(send.userData, 4096);
    await settle(2);
    return { kind: send.kind, flags: send.msgFlags, waits: ring.waitCounts.slice(0, 3) };
  };

  // The request's CQE, the enter that submits the SEND (its own CQE plus one), then as before.
  assert.deepEqual(await sending(0, UBLK_IO_OP.READ), {
    kind: 'send',
    flags: MSG_NOSIGNAL | MSG_WAITALL,
    waits: [1, 2, 1],
  });
  assert.deepEqual(await sending(1, UBLK_IO_OP.WRITE), {
    kind: 'send',
    flags: MSG_NOSIGNAL,
    waits: [1, 1, 1],
  });
});

test('ctx.io.fsync and fallocate throw an ErrnoError on failure: a flush that awaits fsync fails the FLUSH', async () => {
  const box: { io?: QueueIo } = {};
  const thrown: unknown[] = [];
  const { queue, ring, descs } = queueWith({
    read: () => undefined,
    flush: async () => {
      await box.io!.fsync(3, { dataOnly: true }).catch((err: unknown) => {
        thrown.push(err);
        throw err;
      });
    },
    discard: async (offset, length) => void (await box.io!.fallocate(3, 3, offset, length)),
  });
  box.io = queue.io;
  const lastIo = () => ring.targetIo[ring.targetIo.length - 1];
  const commitOf = (tag: number) =>
    ring.sent().filter((c) => c.tag === tag && c.cmdOp === UBLK_IO.COMMIT_AND_FETCH_REQ);

  descs.request(0, { op: UBLK_IO_OP.FLUSH, nrSectors: 0 });
  ring.complete(0, UBLK_IO_RES.OK);
  await settle();
  assert.deepEqual({ kind: lastIo().kind, fd: lastIo().fd }, { kind: 'fsync', fd: 3 });
  ring.complete(lastIo().userData, -EIO);
  await settle();
  assert.deepEqual(commitOf(0), [{ cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ, tag: 0, result: -EIO }]);
  assert.equal(thrown.length, 1);
  assert.ok(isErrnoError(thrown[0], 'EIO'), 'an ErrnoError');
  assert.equal((thrown[0] as { syscall: string }).syscall, 'fdatasync');

  descs.request(1, { op: UBLK_IO_OP.FLUSH, nrSectors: 0 });
  ring.complete(1, UBLK_IO_RES.OK);
  await settle();
  ring.complete(lastIo().userData, 0);
  await settle();
  assert.deepEqual(commitOf(1), [{ cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ, tag: 1, result: 0 }]);

  descs.request(2, { op: UBLK_IO_OP.DISCARD, startSector: 8, nrSectors: 8 });
  ring.complete(2, UBLK_IO_RES.OK);
  await settle();
  assert.equal(lastIo().kind, 'fallocate');
  ring.complete(lastIo().userData, -EOPNOTSUPP);
  await settle();
  assert.deepEqual(commitOf(2), [
    { cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ, tag: 2, result: -EOPNOTSUPP },
  ]);
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
    {
      queueId: 0,
      depth: 1,
      bufferBytes: 4096,
      encodedOpcodes: false,
      dataPath: dataPathOf('copy'),
      charFd: -1,
    },
    new StandInDescriptors(),
    { bytes: new Uint8Array(4096), address: 0 },
    { sendIoCmd: (cmdOp) => void sent.push(cmdOp) },
    new FailureLog({ devId: 0, queueId: 0, write: () => undefined }),
    { sq: new StandInRing().sq, makeRoom: () => undefined },
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
    {
      queueId: 0,
      depth: 2,
      bufferBytes: 4096,
      encodedOpcodes: false,
      dataPath: dataPathOf('copy'),
      charFd: -1,
    },
    new StandInDescriptors(),
    { bytes: new Uint8Array(2 * 4096), address: 0 },
    { sendIoCmd: (cmdOp) => void sent.push(cmdOp) },
    new FailureLog({ devId: 0, queueId: 0, write: () => undefined }),
    { sq: new StandInRing().sq, makeRoom: () => undefined },
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

/** TagStates over a stand-in ring, for forwarded requests: every step runs synchronously. */
function forwardingTags(
  forward: RingForward,
  options: { autoBufReg?: boolean; buffer?: { bytes: Uint8Array; address: number } } = {},
) {
  const ring = new StandInRing();
  const descs = new StandInDescriptors();
  const sent: { cmdOp: number; tag: number; result: number; linked?: true }[] = [];
  const logged: string[] = [];
  const handlerCalls: string[] = [];
  const tags = new TagStates(
    {
      queueId: 0,
      depth: DEPTH,
      bufferBytes: BUFFER_BYTES,
      encodedOpcodes: false,
      dataPath: dataPathOf(options.autoBufReg ? 'auto-zero-copy' : 'copy'),
      charFd: -1,
    },
    descs,
    options.buffer ?? {
      bytes: new Uint8Array(options.autoBufReg ? 0 : DEPTH * BUFFER_BYTES),
      address: 0x10000,
    },
    {
      sendIoCmd: (cmdOp, tag, result, linked) =>
        void sent.push(linked ? { cmdOp, tag, result, linked } : { cmdOp, tag, result }),
    },
    new FailureLog({ devId: 0, queueId: 0, write: (line) => void logged.push(line) }),
    { sq: ring.sq, makeRoom: () => undefined },
  );
  tags.start({
    forward,
    flush: () => void handlerCalls.push('flush'),
    discard: () => void handlerCalls.push('discard'),
    writeZeroes: () => void handlerCalls.push('writeZeroes'),
  });
  sent.length = 0; // the FETCHes
  /** The kernel hands `tag` a request: what the queue prepared for it, synchronously. */
  const request = (tag: number, r: Request) => {
    descs.request(tag, r);
    const before = ring.targetIo.length;
    tags.complete(tag, UBLK_IO_RES.OK);
    return ring.targetIo.slice(before);
  };
  /** A forwarded IO's CQE: what was prepared next. */
  const cqe = (io: PreparedIo, res: number) => {
    assert.equal(userDataKind(io.userData), UD_FORWARDED_IO, 'a forwarded IO');
    const before = ring.targetIo.length;
    forwardedCqe(tags.forwarded, io.userData, res);
    return ring.targetIo.slice(before);
  };
  return { tags, ring, sent, logged, handlerCalls, request, cqe };
}

const commitOf = (tag: number, result: number) => ({
  cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ,
  tag,
  result,
});
/** A commit prepared right behind its request's ring IO, which is linked to it. */
const linkedCommitOf = (tag: number, result: number) => ({
  ...commitOf(tag, result),
  linked: true,
});

test('forward: a read is one ring read into the tag buffer with its commit linked behind it, no promise', () => {
  const { tags, sent, request } = forwardingTags({ fd: 5, offset: 1 << 20 });
  const [read] = request(2, { op: UBLK_IO_OP.READ, startSector: 8, nrSectors: 8 });
  assert.deepEqual(read, {
    kind: 'read',
    userData: encodeUserData(UD_FORWARDED_IO, 2),
    fd: 5,
    length: 4096,
    offset: (1 << 20) + 4096,
    address: 0x10000 + 2 * BUFFER_BYTES,
    linked: true,
  });
  assert.deepEqual(sent, [linkedCommitOf(2, 4096)], 'the kernel commits once the read succeeds');
  assert.equal(tags.pendingHandlers, 0);
  assert.equal(tags.forwarded.inFlight, 0, 'nothing left for this thread to wait for');
});

test('forward to a file in memory (tmpfs): pread/pwrite on the thread up to 16 KiB, no ring IO; the rest of a short read and longer requests from the ring', () => {
  const dir = mkdtempSync('/dev/shm/ublk-forward-test-');
  const content = randomBytes(3 * 4096);
  writeFileSync(join(dir, 'file'), content);
  const fd = openSync(join(dir, 'file'), 'r+');
  const readOnlyFd = openSync(join(dir, 'file'), 'r');
  const devZero = openSync('/dev/zero', 'r');
  const buffer = IoBuffer.allocate(DEPTH * BUFFER_BYTES);
  const tagBytes = (tag: number, length: number) =>
    Buffer.from(buffer.bytes.subarray(tag * BUFFER_BYTES, tag * BUFFER_BYTES + length));
  try {
    const { tags, sent, request, cqe, logged } = forwardingTags({ fd, offset: 4096 }, { buffer });
    assert.deepEqual(request(1, { op: UBLK_IO_OP.READ, startSector: 0, nrSectors: 8 }), []);
    assert.deepEqual(sent, [commitOf(1, 4096)], 'committed at once');
    assert.deepEqual(tagBytes(1, 4096), content.subarray(4096, 8192));

    sent.length = 0;
    buffer.bytes.fill(0x5a, 2 * BUFFER_BYTES, 2 * BUFFER_BYTES + 4096);
    assert.deepEqual(request(2, { op: UBLK_IO_OP.WRITE, startSector: 8, nrSectors: 8 }), []);
    assert.deepEqual(sent, [commitOf(2, 4096)]);
    assert.deepEqual(readFileSync(join(dir, 'file')).subarray(8192), Buffer.alloc(4096, 0x5a));

    // 8 KiB from file offset 8192 of a 12 KiB file: 4 KiB read here, the rest asked of the ring,
    // which finds the end of the file; zeros fill it.
    sent.length = 0;
    const [rest] = request(3, { op: UBLK_IO_OP.READ, startSector: 8, nrSectors: 16 });
    assert.deepEqual([rest.kind, rest.fd, rest.offset, rest.length], ['read', fd, 12288, 4096]);
    const [zeros] = cqe(rest, 0);
    assert.equal(zeros.length, 4096);
    assert.deepEqual(cqe(zeros, 4096), []);
    assert.deepEqual(sent, [commitOf(3, 8192)]);
    assert.deepEqual(tagBytes(3, 4096), Buffer.alloc(4096, 0x5a));
    assert.equal(tags.forwarded.inFlight, 0);

    // A longer request is left to the ring (io-wq copies it beside this thread).
    sent.length = 0;
    const [long] = request(0, { op: UBLK_IO_OP.READ, startSector: 0, nrSectors: 64 });
    assert.deepEqual([long.kind, long.fd, long.length], ['read', fd, 32768]);
    const [more] = cqe(long, 8192);
    assert.deepEqual([more.kind, more.offset, more.length], ['read', 12288, 24576], 'on the ring');

    // A failed pwrite fails its request, as a failed ring write does.
    const failing = forwardingTags({ fd: readOnlyFd, offset: 0 }, { buffer });
    assert.deepEqual(
      failing.request(0, { op: UBLK_IO_OP.WRITE, startSector: 0, nrSectors: 8 }),
      [],
    );
    assert.deepEqual(failing.sent, [commitOf(0, -constants.errno.EBADF)]);
    assert.match(failing.logged.join('\n'), /write/);
    assert.deepEqual(logged, []);

    // A device node is no file of the tmpfs it lives on (/dev is devtmpfs): ring IO.
    const device = forwardingTags({ fd: devZero, offset: 0 }, { buffer });
    const [ringRead] = device.request(0, { op: UBLK_IO_OP.READ, startSector: 0, nrSectors: 8 });
    assert.deepEqual([ringRead.kind, ringRead.fd], ['read', devZero]);
  } finally {
    for (const f of [fd, readOnlyFd, devZero]) closeSync(f);
    buffer.free();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('forward: a short IO breaks the link and is continued with the rest; a read at the end of the file reads zeros', () => {
  const { tags, sent, request, cqe } = forwardingTags({ fd: 5, offset: 0 });
  const [write] = request(1, { op: UBLK_IO_OP.WRITE, startSector: 2, nrSectors: 8 });
  assert.deepEqual(sent.splice(0), [linkedCommitOf(1, 4096)]);
  // Its CQE means the link broke: the linked commit was cancelled, without a CQE.
  const [rest] = cqe(write, 1024);
  assert.equal(tags.forwarded.inFlight, 1);
  assert.deepEqual(rest, {
    kind: 'write',
    userData: write.userData,
    fd: 5,
    length: 3072,
    offset: 1024 + 1024,
    address: write.address! + 1024,
  });
  assert.deepEqual(sent, [], 'nothing committed while the rest is in flight');
  assert.deepEqual(cqe(rest, 3072), []);
  assert.deepEqual(sent.splice(0), [commitOf(1, 4096)]);
  assert.equal(tags.forwarded.inFlight, 0);

  const [read] = request(3, { op: UBLK_IO_OP.READ, nrSectors: 8 });
  sent.length = 0;
  const [tail] = cqe(read, 512);
  const [zeroes] = cqe(tail, 0);
  assert.notEqual(zeroes.fd, 5, 'past the end of the file: /dev/zero');
  assert.deepEqual(
    { length: zeroes.length, address: zeroes.address },
    { length: 3584, address: read.address! + 512 },
  );
  assert.deepEqual(cqe(zeroes, 3584), []);
  assert.deepEqual(sent.splice(0), [commitOf(3, 4096)], 'the whole read, zero-filled');
  const [stuck] = request(3, { op: UBLK_IO_OP.WRITE, nrSectors: 8 });
  sent.length = 0;
  cqe(stuck, 0);
  assert.deepEqual(sent, [commitOf(3, -EIO)], 'a write that makes no progress fails');
});

test('forward: an error result fails the request with it, logged once per cause', () => {
  const { sent, logged, request, cqe } = forwardingTags({ fd: 5, offset: 0 });
  for (let i = 0; i < 2; i++) {
    const [write] = request(0, { op: UBLK_IO_OP.WRITE, startSector: 4, nrSectors: 8 });
    cqe(write, -ENOSPC);
  }
  assert.deepEqual(sent, [
    linkedCommitOf(0, 4096),
    commitOf(0, -ENOSPC),
    linkedCommitOf(0, 4096),
    commitOf(0, -ENOSPC),
  ]);
  assert.equal(logged.length, 1);
  assert.match(logged[0], /tag 0: WRITE of 4096 bytes at offset 2048 failed with ENOSPC/);
});

test('forward: FUA is write then fdatasync; FLUSH with sync is fdatasync, DISCARD fallocate', () => {
  const synced: string[] = [];
  const { sent, handlerCalls, request, cqe } = forwardingTags({
    fd: 5,
    offset: 0,
    sync: true,
    discard: true,
    onSync: (kind) => void synced.push(kind),
  });
  const [write] = request(1, { op: UBLK_IO_OP.WRITE, nrSectors: 8, opFlags: UBLK_IO_F.FUA });
  assert.equal(write.linked, undefined, 'two IOs: committed from the CQE');
  const [sync] = cqe(write, 4096);
  assert.deepEqual(sync, { kind: 'fsync', userData: encodeUserData(UD_FORWARDED_IO, 1), fd: 5 });
  assert.deepEqual(sent, [], 'not durable before the fdatasync');
  cqe(sync, 0);
  assert.deepEqual(sent, [commitOf(1, 4096)]);

  const [flush] = request(2, { op: UBLK_IO_OP.FLUSH, nrSectors: 0 });
  assert.deepEqual([flush.kind, flush.linked], ['fsync', undefined], 'onSync hears of it');
  cqe(flush, 0);
  const [discard] = request(2, { op: UBLK_IO_OP.DISCARD, startSector: 2, nrSectors: 4 });
  assert.deepEqual(
    { kind: discard.kind, offset: discard.offset, length: discard.length },
    { kind: 'fallocate', offset: 1024, length: 2048 },
  );
  assert.equal(discard.linked, true, 'one IO, then the commit');
  assert.deepEqual(request(2, { op: UBLK_IO_OP.WRITE_ZEROES, nrSectors: 2 }), []);
  assert.deepEqual(sent.slice(1), [commitOf(2, 0), linkedCommitOf(2, 0), commitOf(2, 0)]);
  assert.deepEqual(synced, ['fua', 'flush']);
  assert.deepEqual(handlerCalls, ['writeZeroes'], 'what the forward does not cover');

  const [failing] = request(3, { op: UBLK_IO_OP.WRITE, nrSectors: 8, opFlags: UBLK_IO_F.FUA });
  cqe(cqe(failing, 4096)[0], -EIO);
  assert.deepEqual(sent.slice(4), [commitOf(3, -EIO)], 'a failed fdatasync fails the FUA write');
});

test('forward without sync or discard: FLUSH and DISCARD go to the handlers', () => {
  const { sent, handlerCalls, request } = forwardingTags({ fd: 5, offset: 0 });
  assert.deepEqual(request(0, { op: UBLK_IO_OP.FLUSH, nrSectors: 0 }), []);
  assert.deepEqual(request(0, { op: UBLK_IO_OP.DISCARD, nrSectors: 8 }), []);
  assert.deepEqual(handlerCalls, ['flush', 'discard']);
  assert.deepEqual(sent, [commitOf(0, 0), commitOf(0, 0)]);
});

test('forward with AUTO_BUF_REG: READ_FIXED/WRITE_FIXED at the tag index, from offset 0 of the request', () => {
  const { sent, request, cqe } = forwardingTags({ fd: 5, offset: 512 }, { autoBufReg: true });
  const [read] = request(3, { op: UBLK_IO_OP.READ, startSector: 1, nrSectors: 8 });
  assert.deepEqual(read, {
    kind: 'readFixed',
    userData: encodeUserData(UD_FORWARDED_IO, 3),
    fd: 5,
    length: 4096,
    offset: 1024,
    address: 0,
    bufIndex: 3,
    linked: true,
  });
  const [rest] = cqe(read, 1536);
  assert.deepEqual(
    { address: rest.address, length: rest.length, offset: rest.offset },
    { address: 1536, length: 2560, offset: 1024 + 1536 },
  );
  cqe(rest, 2560);
  const [write] = request(0, { op: UBLK_IO_OP.WRITE, nrSectors: 1 });
  assert.deepEqual(
    { kind: write.kind, bufIndex: write.bufIndex },
    { kind: 'writeFixed', bufIndex: 0 },
  );
  assert.deepEqual(sent, [linkedCommitOf(3, 4096), commitOf(3, 4096), linkedCommitOf(0, 512)]);
});

test('AUTO_BUF_REG queue: commands carry the buffer index in the SQE addr and no buffer; handlers get an empty buf', async () => {
  const lengths: number[] = [];
  const { serve, ring } = queueWith(
    { read: (buf) => void lengths.push(buf.length), write: (buf) => void lengths.push(buf.length) },
    { autoBufReg: true },
  );
  assert.deepEqual(ring.commandAddresses.get(2), { sqeAddr: 2, buffer: 0 }, 'FETCH');
  assert.equal((await serve(2, { op: UBLK_IO_OP.READ, nrSectors: 8 })).result, 4096);
  assert.equal((await serve(2, { op: UBLK_IO_OP.WRITE, nrSectors: 8 })).result, 4096);
  assert.deepEqual(ring.commandAddresses.get(2), { sqeAddr: 2, buffer: 0 }, 'COMMIT_AND_FETCH');
  assert.deepEqual(lengths, [0, 0]);
});

test('copy mode: commands carry the tag buffer and a zero SQE addr', () => {
  const { ring } = queueWith({ read: () => undefined });
  assert.deepEqual(ring.commandAddresses.get(1), { sqeAddr: 0, buffer: 0x10000 + BUFFER_BYTES });
});

test('TagStates: every linked commit the kernel refuses is sent again, also after linking stopped', () => {
  const { tags, sent, request } = forwardingTags({ fd: 5, offset: 0 });
  request(0, { op: UBLK_IO_OP.READ, nrSectors: 8 });
  request(1, { op: UBLK_IO_OP.WRITE, nrSectors: 2 });
  assert.deepEqual(sent.splice(0), [linkedCommitOf(0, 4096), linkedCommitOf(1, 1024)]);
  tags.completeLinkedCommit(0, -EINVAL);
  tags.completeLinkedCommit(1, -EINVAL);
  assert.deepEqual(sent, [commitOf(0, 4096), commitOf(1, 1024)]);
});

test("the queue: a linked commit's CQE is its tag's next request; refused (EINVAL), it is sent again unlinked, as all later ones", async () => {
  const { ring, descs } = queueWith({ forward: { fd: 9, offset: 0 } });
  const linkedUserData = encodeUserData(UD_LINKED_COMMIT, 1);
  descs.request(1, { op: UBLK_IO_OP.READ, nrSectors: 8 });
  const before = ring.sent().length;
  ring.complete(1, UBLK_IO_RES.OK);
  await settle();
  assert.deepEqual(ring.targetIo.at(-1), {
    kind: 'read',
    userData: encodeUserData(UD_FORWARDED_IO, 1),
    fd: 9,
    length: 4096,
    offset: 0,
    address: 0x10000 + BUFFER_BYTES,
    linked: true,
  });
  assert.deepEqual(ring.sent().slice(before), [{ ...commitOf(1, 4096), tag: linkedUserData }]);

  descs.request(1, { op: UBLK_IO_OP.WRITE, nrSectors: 2 });
  ring.complete(linkedUserData, UBLK_IO_RES.OK); // the kernel committed it; the next request
  await settle();
  assert.equal(ring.targetIo.at(-1)!.kind, 'write');
  assert.equal(ring.targetIo.at(-1)!.linked, true);

  ring.complete(linkedUserData, -EINVAL); // a kernel that refuses commands linked behind IO
  await settle();
  assert.deepEqual(ring.sent().slice(before + 2), [commitOf(1, 1024)]);
  descs.request(1, { op: UBLK_IO_OP.READ, nrSectors: 8 });
  ring.complete(1, UBLK_IO_RES.OK);
  await settle();
  const read = ring.targetIo.at(-1)!;
  assert.equal(read.linked, undefined, 'no more linked commits on this queue');
  ring.complete(read.userData, 4096);
  await settle();
  assert.deepEqual(ring.sent().slice(before + 3), [commitOf(1, 4096)]);
});
