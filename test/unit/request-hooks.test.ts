/**
 * Request hooks (request-hooks.ts) in the queue's state machine, on a stand-in ring: in which
 * order they run around forwarded and handled requests, a hook failing a request before any IO,
 * a delay as a TIMEOUT on the ring, and the queue routing that TIMEOUT's completion back.
 */
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { test } from 'node:test';
import { UBLK_IO, UBLK_IO_OP, UBLK_IO_RES } from '../../src/ublk/ublk-cmd.js';
import { FailureLog } from '../../src/ublk/queue/failure-log.js';
import { encodeUserData, UD_FORWARDED_IO, UD_HOOK_DELAY } from '../../src/ublk/queue/user-data.js';
import { Queue } from '../../src/ublk/queue/queue.js';
import {
  HOOK_PASS,
  hookDelay,
  hookFail,
  ROUTE_BELOW,
  ROUTE_HANDLERS,
  routeToFile,
  type HookRoute,
  type HookVerdict,
  type LayerHook,
  type RequestHook,
} from '../../src/ublk/queue/request-hooks.js';
import { TagStates } from '../../src/ublk/queue/tag-states.js';
import type { QueueHandlers } from '../../src/ublk/target/contract.js';
import {
  forwardedCqe,
  StandInDescriptors,
  StandInRing,
  standInResources,
  type PreparedIo,
  type Request,
} from './support/stand-ins.js';
import { dataPathOf } from '../../src/ublk/device/data-path.js';

const { ENOSPC } = constants.errno;
const DEPTH = 4;
const BUFFER_BYTES = 64 * 1024;

/** A hook that logs what it sees and answers `verdict` (pass, fail or delay). */
function logging(name: string, log: string[], verdict = (): HookVerdict => HOOK_PASS): LayerHook {
  return {
    name,
    hook: {
      before: (kind, offset, length, tag) => (
        log.push(`${name} before ${kind} ${offset}+${length} tag ${tag}`),
        verdict()
      ),
      after: (kind, _offset, _length, result, tag) =>
        void log.push(`${name} after ${kind} ${result} tag ${tag}`),
    },
  };
}

/** TagStates over a stand-in ring with these handlers: every step runs synchronously. */
function hookedTags(handlers: QueueHandlers, options: { autoBufReg?: boolean } = {}) {
  const ring = new StandInRing();
  const descs = new StandInDescriptors();
  const sent: { tag: number; result: number }[] = [];
  const logged: string[] = [];
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
    { bytes: new Uint8Array(options.autoBufReg ? 0 : DEPTH * BUFFER_BYTES), address: 0x10000 },
    {
      sendIoCmd: (cmdOp, tag, result) => {
        if (cmdOp === UBLK_IO.COMMIT_AND_FETCH_REQ) sent.push({ tag, result });
      },
    },
    new FailureLog({ devId: 0, queueId: 0, write: (line) => void logged.push(line) }),
    { sq: ring.sq, makeRoom: () => undefined },
  );
  tags.start(handlers);
  const request = (tag: number, r: Request): PreparedIo[] => {
    descs.request(tag, r);
    const before = ring.targetIo.length;
    tags.complete(tag, UBLK_IO_RES.OK);
    return ring.targetIo.slice(before);
  };
  const forwarded = (io: PreparedIo, res: number) => forwardedCqe(tags.forwarded, io.userData, res);
  return { tags, ring, sent, logged, request, forwardedCqe: forwarded };
}

const READ_8K = { op: UBLK_IO_OP.READ, startSector: 16, nrSectors: 16 };

test('hooks run outermost first before a forwarded request, innermost first after it, with no promise', () => {
  const log: string[] = [];
  const { sent, request, forwardedCqe, tags } = hookedTags(
    {
      forward: { fd: 5, offset: 0 },
      hooks: { read: [logging('outer', log), logging('inner', log)] },
    },
    { autoBufReg: true },
  );
  const [read] = request(2, READ_8K);
  assert.equal(read.kind, 'readFixed', 'zero copy: the request is still READ_FIXED at its tag');
  assert.equal(read.bufIndex, 2);
  assert.deepEqual(log, ['outer before read 8192+8192 tag 2', 'inner before read 8192+8192 tag 2']);
  assert.equal(tags.pendingHandlers, 0);
  forwardedCqe(read, 8192);
  assert.deepEqual(log.slice(2), ['inner after read 8192 tag 2', 'outer after read 8192 tag 2']);
  assert.deepEqual(sent, [{ tag: 2, result: 8192 }], 'committed within the CQE');
});

test('a hook failing a request: no IO, the errno committed, only the hooks above it see the result, logged with its name', () => {
  const log: string[] = [];
  const { sent, logged, request } = hookedTags({
    forward: { fd: 5, offset: 0 },
    hooks: {
      write: [
        logging('outer', log),
        logging('picky', log, () => hookFail(ENOSPC)),
        logging('inner', log),
      ],
    },
  });
  assert.deepEqual(request(1, { ...READ_8K, op: UBLK_IO_OP.WRITE }), [], 'no ring IO');
  assert.deepEqual(log, [
    'outer before write 8192+8192 tag 1',
    'picky before write 8192+8192 tag 1',
    `outer after write ${-ENOSPC} tag 1`,
  ]);
  assert.deepEqual(sent, [{ tag: 1, result: -ENOSPC }]);
  assert.match(logged[0], /WRITE of 8192 bytes at offset 8192 failed with ENOSPC: filter picky/);
  assert.equal(request(1, READ_8K).length, 1, 'kinds without hooks are forwarded as ever');
});

test('a delay is a TIMEOUT on the ring: the hooks below and the IO come after its completion', () => {
  const log: string[] = [];
  let delay = hookDelay(25);
  const { sent, tags, ring, request, forwardedCqe } = hookedTags({
    forward: { fd: 5, offset: 0 },
    hooks: {
      read: [logging('slow', log, () => delay), logging('inner', log)],
    },
  });
  const [timeout] = request(3, READ_8K);
  assert.equal(timeout.kind, 'timeout');
  assert.equal(timeout.userData, encodeUserData(UD_HOOK_DELAY, 3));
  assert.deepEqual(log, ['slow before read 8192+8192 tag 3']);
  assert.equal(tags.ringIoInFlight, 1, 'the queue waits for it before closing');
  delay = HOOK_PASS;
  tags.resumeDelayed(3);
  assert.equal(tags.ringIoInFlight, 1, 'now the read');
  assert.deepEqual(log.slice(1), ['inner before read 8192+8192 tag 3'], "slow's before runs once");
  const read = ring.targetIo[ring.targetIo.length - 1];
  assert.equal(read.kind, 'read');
  forwardedCqe(read, 8192);
  assert.deepEqual(log.slice(2), ['inner after read 8192 tag 3', 'slow after read 8192 tag 3']);
  assert.deepEqual(sent, [{ tag: 3, result: 8192 }]);
});

test('hooks run around handlers too (kinds the forward leaves to them), async ones included', async () => {
  const log: string[] = [];
  const { sent, request } = hookedTags({
    forward: { fd: 5, offset: 0 },
    writeZeroes: async () => void log.push('handler'),
    hooks: { write_zeroes: [logging('h', log)] },
  });
  request(0, { op: UBLK_IO_OP.WRITE_ZEROES, startSector: 0, nrSectors: 8 });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(log, [
    'h before write_zeroes 0+4096 tag 0',
    'handler',
    'h after write_zeroes 0 tag 0',
  ]);
  assert.deepEqual(sent, [{ tag: 0, result: 0 }]);
});

test('the queue routes a delay TIMEOUT completion to its tag', async () => {
  const ring = new StandInRing();
  const descs = new StandInDescriptors();
  const resources = standInResources(ring, descs, DEPTH * BUFFER_BYTES);
  const queue = new Queue(
    {
      devId: 0,
      queueId: 0,
      depth: DEPTH,
      bufferBytes: BUFFER_BYTES,
      charFd: 99,
      encodedOpcodes: false,
      dataPath: dataPathOf('copy'),
    },
    resources,
  );
  let first = true;
  const fiveMs = hookDelay(5);
  queue.start({
    forward: { fd: 9, offset: 0 },
    hooks: {
      read: [
        { name: 'd', hook: { before: () => (first ? ((first = false), fiveMs) : HOOK_PASS) } },
      ],
    },
  });
  const turns = async () => {
    for (let i = 0; i < 4; i++) await new Promise((resolve) => setImmediate(resolve));
  };
  descs.request(1, READ_8K);
  ring.complete(1, UBLK_IO_RES.OK);
  await turns();
  const timeout = ring.targetIo[ring.targetIo.length - 1];
  assert.equal(timeout.userData, encodeUserData(UD_HOOK_DELAY, 1));
  ring.complete(timeout.userData, -constants.errno.ETIME);
  await turns();
  const read = ring.targetIo[ring.targetIo.length - 1];
  assert.equal(read.userData, encodeUserData(UD_FORWARDED_IO, 1));
  ring.complete(read.userData, 8192);
  await turns();
  assert.deepEqual(ring.sent().at(-1), {
    cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ,
    tag: 1,
    result: 8192,
  });
  for (let tag = 0; tag < DEPTH; tag++) ring.complete(tag, UBLK_IO_RES.ABORT);
  await queue.done;
  assert.equal(resources.fatalError(), undefined);
});

test("a hook's route: its own fd (the hooks below passed by), the layer below, or its handlers", () => {
  const log: string[] = [];
  const overlay = 7;
  const toOverlay = routeToFile(overlay);
  let route: HookRoute = toOverlay;
  const router: LayerHook = {
    name: 'cow',
    hook: {
      route: (kind, offset) => (log.push(`route ${kind} ${offset}`), route),
      after: (kind, _offset, _length, result) => void log.push(`cow after ${kind} ${result}`),
    },
  };
  const { sent, request, forwardedCqe } = hookedTags({
    forward: { fd: 5, offset: 1 << 20, sync: true, onSync: (kind) => void log.push(kind) },
    read: () => void log.push('handler read'),
    hooks: { read: [router, logging('inner', log)], flush: [router] },
  });
  const [mine] = request(0, READ_8K);
  assert.deepEqual({ fd: mine.fd, offset: mine.offset }, { fd: overlay, offset: 8192 });
  forwardedCqe(mine, 8192);
  assert.deepEqual(log, ['route read 8192', 'cow after read 8192']);

  route = ROUTE_BELOW;
  log.length = 0;
  const [below] = request(1, READ_8K);
  assert.deepEqual({ fd: below.fd, offset: below.offset }, { fd: 5, offset: (1 << 20) + 8192 });
  forwardedCqe(below, 8192);
  assert.deepEqual(log, [
    'route read 8192',
    'inner before read 8192+8192 tag 1',
    'inner after read 8192 tag 1',
    'cow after read 8192',
  ]);

  route = ROUTE_HANDLERS;
  log.length = 0;
  assert.deepEqual(request(2, READ_8K), [], 'no ring IO');
  assert.deepEqual(log, ['route read 8192', 'handler read', 'cow after read 8192']);

  route = toOverlay;
  const [sync] = request(3, { op: UBLK_IO_OP.FLUSH });
  assert.deepEqual({ kind: sync.kind, fd: sync.fd }, { kind: 'fsync', fd: overlay });
  log.length = 0;
  forwardedCqe(sync, 0);
  assert.deepEqual(log, ['cow after flush 0'], "the forward's onSync is for its own fd only");
  assert.deepEqual(
    sent.map((c) => c.result),
    [8192, 8192, 8192, 0],
  );
});

test('hook results are typed values made once: no number, no nothing (a type error, and refused at run time)', () => {
  const wrong: RequestHook[] = [
    // @ts-expect-error a hook must say what becomes of the request
    { before: () => undefined },
    // @ts-expect-error a plain number is no verdict
    { before: () => 0 },
    // @ts-expect-error a plain fd is no route
    { route: () => 3 },
  ];
  for (const hook of wrong) {
    const { request } = hookedTags({
      forward: { fd: 5, offset: 0 },
      hooks: { read: [{ name: 'js', hook }] },
    });
    assert.throws(
      () => request(0, READ_8K),
      /filter js's hook (returned|routed to) (undefined|0|3), not/,
    );
  }
  assert.equal(hookFail(ENOSPC), hookFail(ENOSPC), 'one value per errno');
  assert.deepEqual(hookFail(ENOSPC), { action: 'fail', errno: ENOSPC });
  assert.deepEqual(hookDelay(1.5), { action: 'delay', ms: 1.5 });
  assert.deepEqual(routeToFile(7), { to: 'file', fd: 7 });
  assert.throws(() => hookFail(-ENOSPC), RangeError);
  assert.throws(() => hookDelay(0), RangeError);
  assert.throws(() => routeToFile(-1), RangeError);
  assert.ok(Object.isFrozen(HOOK_PASS) && Object.isFrozen(ROUTE_BELOW));
});
