/**
 * Filters without a kernel: how withFilters composes setups and handlers (which keep a target's
 * forward, which fall back to handlers), and the built-in filters' pure logic.
 */
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isUserError } from '../../src/errors.js';
import { defineFilter, nextHandlers, withFilters } from '../../src/ublk/target/filter.js';
import {
  HOOK_PASS,
  hookDelay,
  ROUTE_BELOW,
  ROUTE_HANDLERS,
} from '../../src/ublk/queue/request-hooks.js';
import { stackSource, loadTarget } from '../../src/ublk/target/loader.js';
import type { QueueContext, QueueIo, Target } from '../../src/ublk/target/contract.js';
import cow, { COW_BLOCK, CowMap, mapOf } from '../../src/targets/filters/cow.js';
import delay from '../../src/targets/filters/delay.js';
import { errorPlan, fails } from '../../src/targets/filters/error.js';
import readonly from '../../src/targets/filters/readonly.js';
import {
  bucketOf,
  countedHandlers,
  countingHook,
  formatStats,
  newCounters,
  queueCounters,
  snapshot,
} from '../../src/targets/filters/stats.js';
import {
  parseDuration,
  parseErrno,
  parseOps,
  parseRange,
  parseRate,
} from '../../src/targets/filters/filter-options.js';

const env = { recovering: false, startEmpty: false, queues: 1 };

/** A QueueIo that records its calls and answers with full transfers. */
function recordingIo() {
  const calls: string[] = [];
  const io: QueueIo = {
    read: (fd, buf, offset) => (
      calls.push(`read ${fd} ${offset} ${buf.length}`),
      Promise.resolve(buf.length)
    ),
    write: (fd, buf, offset) => (
      calls.push(`write ${fd} ${offset} ${buf.length}`),
      Promise.resolve(buf.length)
    ),
    readFully: (fd, buf, offset) => {
      calls.push(`readFully ${fd} ${offset} ${buf.length}`);
      buf.fill(7, 0, buf.length / 2); // half of it, then the end of the file
      return Promise.resolve(buf.length / 2);
    },
    writeFully: (fd, buf, offset) => (
      calls.push(`writeFully ${fd} ${offset} ${buf.length}`),
      Promise.resolve()
    ),
    fsync: (fd, opts) => (
      calls.push(`fsync ${fd} ${opts?.dataOnly ? 'data' : 'all'}`),
      Promise.resolve()
    ),
    fallocate: (fd, mode, offset, length) => (
      calls.push(`fallocate ${fd} ${mode} ${offset} ${length}`),
      Promise.resolve()
    ),
    send: () => Promise.reject(new Error('no sockets here')),
    recv: () => Promise.reject(new Error('no sockets here')),
    sendData: () => Promise.reject(new Error('no sockets here')),
    recvData: () => Promise.reject(new Error('no sockets here')),
    allocate: (bytes) => new Uint8Array(bytes),
  };
  return { io, calls, ctx: { queueId: 0, depth: 4, io } satisfies QueueContext };
}

/** A target that forwards to fd 9 from byte 4096, as loop does, and records its life. */
function forwardingTarget(log: string[]): Target<{ tag: string }> {
  return {
    name: 'fwd',
    options: { file: { type: 'string', description: 'f' } },
    setup(args) {
      log.push(`target setup ${String(args.file)}`);
      return {
        size: 1 << 20,
        capabilities: { zeroCopy: true, volatileCache: true },
        shared: { tag: 'target' },
        info: { backing: 'x' },
        close: () => void log.push('target close'),
      };
    },
    queue(shared) {
      log.push(`target queue ${shared.tag}`);
      return { forward: { fd: 9, offset: 4096, sync: true, discard: true } };
    },
  };
}

const recordingFilter = (name: string, log: string[], overrideRead: boolean) =>
  defineFilter({
    name,
    options: { [`${name}_opt`]: { type: 'string', description: 'o' } },
    async setup(next, args) {
      log.push(`${name} setup ${String(args[`${name}_opt`])}`);
      await next();
      return { shared: name, info: { [name]: true }, close: () => void log.push(`${name} close`) };
    },
    queue(next, shared: string) {
      log.push(`${name} queue ${shared}`);
      return overrideRead
        ? {
            read: async (buf, offset) => (
              log.push(`${name} read ${offset}`),
              next.read(buf, offset)
            ),
          }
        : { close: () => void log.push(`${name} queue close`) };
    },
  });

test('withFilters: setups run outermost first, each on its own args; closes run outermost first', async () => {
  const log: string[] = [];
  const stack = withFilters(forwardingTarget(log), [
    recordingFilter('a', log, false),
    recordingFilter('b', log, false),
  ]);
  assert.deepEqual(Object.keys(stack.options ?? {}), ['file', 'a_opt', 'b_opt']);
  const setup = await stack.setup({ file: 'F', a_opt: '1', b_opt: '2' }, env);
  assert.deepEqual(log, ['a setup 1', 'b setup 2', 'target setup F']);
  assert.equal(setup.size, 1 << 20);
  assert.deepEqual(setup.info, { backing: 'x', a: true, b: true, filters: ['a', 'b'] });
  assert.equal(stack.name, 'fwd', 'the device stays the target, filtered');
  await setup.close?.();
  assert.deepEqual(log.slice(3), ['a close', 'b close', 'target close']);
});

test('withFilters: a filter serving no data keeps the forward and zero copy, and closes first', async () => {
  const log: string[] = [];
  const stack = withFilters(forwardingTarget(log), [
    { ...recordingFilter('a', log, false), keepsForward: true },
  ]);
  const setup = await stack.setup({}, env);
  assert.equal(setup.capabilities?.zeroCopy, true);
  const handlers = await stack.queue(setup.shared!, recordingIo().ctx);
  assert.deepEqual(handlers.forward, { fd: 9, offset: 4096, sync: true, discard: true });
  await handlers.close?.();
  assert.deepEqual(log.slice(-3), ['target queue target', 'a queue a', 'a queue close']);
});

test('withFilters: a filter that serves reads drops the forward and zero copy; the rest is ring IO', async () => {
  const log: string[] = [];
  const stack = withFilters(forwardingTarget(log), [recordingFilter('a', log, true)]);
  const setup = await stack.setup({}, env);
  assert.equal(setup.capabilities?.zeroCopy, false, 'its handlers need the data');
  const { ctx, calls } = recordingIo();
  const handlers = await stack.queue(setup.shared!, ctx);
  assert.equal(handlers.forward, undefined);
  const buf = new Uint8Array(8).fill(1);
  await handlers.read!(buf, 512);
  assert.deepEqual([...buf], [7, 7, 7, 7, 0, 0, 0, 0], 'past the end of the file: zeros');
  await handlers.write!(buf, 1024, { fua: true });
  await handlers.flush!();
  await handlers.discard!(0, 4096);
  assert.deepEqual(log.slice(-1), ['a read 512']);
  assert.deepEqual(calls, [
    'readFully 9 4608 8',
    'writeFully 9 5120 8',
    'fsync 9 data',
    'fsync 9 data',
    'fallocate 9 3 4096 4096',
  ]);
});

test('withFilters: a filter serving flush keeps the forward but no longer forwards FLUSH', async () => {
  const log: string[] = [];
  const flushing = defineFilter({
    name: 'f',
    keepsForward: true,
    queue: (next) => ({ flush: async () => (log.push('f flush'), next.flush()) }),
  });
  const stack = withFilters(forwardingTarget(log), [flushing]);
  const setup = await stack.setup({}, env);
  const { ctx, calls } = recordingIo();
  const handlers = await stack.queue(setup.shared!, ctx);
  assert.deepEqual(handlers.forward, { fd: 9, offset: 4096, sync: false, discard: true });
  await handlers.flush!();
  assert.deepEqual(calls, ['fsync 9 data']);
  assert.deepEqual(log.slice(-1), ['f flush']);
});

test('withFilters: a filter claiming keepsForward but serving reads is refused at queue start', async () => {
  const stack = withFilters(forwardingTarget([]), [
    { ...recordingFilter('a', [], true), keepsForward: true },
  ]);
  const setup = await stack.setup({}, env);
  await assert.rejects(
    () => Promise.resolve(stack.queue(setup.shared!, recordingIo().ctx)),
    /keepsForward/,
  );
});

test('withFilters: a failing filter setup closes the layers below it', async () => {
  const log: string[] = [];
  const failing = defineFilter({
    name: 'bad',
    async setup(next) {
      await next();
      throw new Error('no');
    },
  });
  const stack = withFilters(forwardingTarget(log), [failing]);
  await assert.rejects(() => Promise.resolve(stack.setup({}, env)), /no/);
  assert.deepEqual(log, ['target setup undefined', 'target close']);
});

test('withFilters: bound arguments, and clashing option names refused', async () => {
  const log: string[] = [];
  const stack = withFilters(forwardingTarget(log), [
    { filter: recordingFilter('a', log, false), args: { a_opt: 'bound' } },
  ]);
  assert.deepEqual(Object.keys(stack.options ?? {}), ['file'], 'bound filters add no options');
  await stack.setup({ a_opt: 'ignored' }, env);
  assert.equal(log[0], 'a setup bound');
  assert.throws(
    () =>
      withFilters(forwardingTarget([]), [
        recordingFilter('a', [], false),
        recordingFilter('a', [], false),
      ]),
    (err: unknown) => isUserError(err) && /clashes/.test(err.message),
  );
});

test('nextHandlers: a layer without forward or a handler fails that request kind with EOPNOTSUPP', async () => {
  const next = nextHandlers({ read: () => 5 }, recordingIo().ctx);
  assert.equal(await next.read(new Uint8Array(1), 0), 5);
  await assert.rejects(async () => next.writeZeroes(0, 1, { noUnmap: false }), {
    code: 'EOPNOTSUPP',
  });
});

test('stack sources load the same stack again, as queue threads and recover do', async () => {
  const src = stackSource(new URL('../../src/targets/null.js', import.meta.url).href, [
    new URL('../../src/targets/filters/readonly.js', import.meta.url).href,
    new URL('../../src/targets/filters/delay.js', import.meta.url).href,
  ]);
  const target = await loadTarget(src);
  assert.equal(target.name, 'null');
  assert.ok('rdelay' in (target.options ?? {}));
  const setup = await target.setup({ rdelay: '5' }, env);
  assert.deepEqual(setup.info?.filters, ['readonly', 'delay']);
  assert.equal(setup.capabilities?.readOnly, true);
  assert.equal(setup.capabilities?.zeroCopy, true, "null's, kept: delay waits on the ring");
  assert.equal(stackSource('x', []), 'x');
});

test('readonly keeps the forward and zero copy: it changes only capabilities', async () => {
  const stack = withFilters(forwardingTarget([]), [readonly]);
  const setup = await stack.setup({}, env);
  assert.equal(setup.capabilities?.readOnly, true);
  assert.equal(setup.capabilities?.zeroCopy, true);
  const handlers = await stack.queue(setup.shared!, recordingIo().ctx);
  assert.equal(handlers.forward?.fd, 9);
});

test('delay: its handlers (for filters above that call next) delay only the kinds given', async () => {
  const setup = await Promise.resolve(
    delay.setup!(() => Promise.reject(new Error('unused')), { wdelay: '30' }, env),
  );
  const own = await delay.queue!(
    nextHandlers({ read: () => 1, write: () => 2 }, recordingIo().ctx),
    setup.shared!,
    recordingIo().ctx,
  );
  assert.equal(own.read, undefined);
  assert.equal(own.hook!.before!('read', 0, 4096, 0), HOOK_PASS, 'reads: no delay');
  assert.deepEqual(
    own.hook!.before!('write', 0, 4096, 0),
    hookDelay(30),
    'writes: 30 ms on the ring',
  );
  const start = Date.now();
  assert.equal(await own.write!(new Uint8Array(1), 0, { fua: false }), 2);
  assert.ok(Date.now() - start >= 29);
});

test('stats, delay and error keep the forward and zero copy, whatever kinds they touch: their hooks run in front of it', async () => {
  const error = (await import('../../src/targets/filters/error.js')).default;
  const stats = (await import('../../src/targets/filters/stats.js')).default;
  const dir = mkdtempSync(join(tmpdir(), 'ublk-stats-'));
  try {
    for (const [filter, args] of [
      [delay, { rdelay: '1', flushdelay: '2' }],
      [error, { error_ops: 'all', error_rate: '1' }],
      [stats, { stats_file: join(dir, 's.txt') }],
    ] as const) {
      const stack = withFilters(forwardingTarget([]), [filter]);
      const setup = await stack.setup(args, env);
      assert.equal(setup.capabilities?.zeroCopy, true, filter.name);
      const handlers = await stack.queue(setup.shared!, recordingIo().ctx);
      assert.deepEqual(
        handlers.forward,
        { fd: 9, offset: 4096, sync: true, discard: true },
        `${filter.name}: FLUSH and DISCARD stay forwarded too`,
      );
      for (const kind of ['read', 'write', 'flush', 'discard', 'write_zeroes'] as const) {
        assert.deepEqual(
          handlers.hooks?.[kind]?.map((h) => h.name),
          [filter.name],
          `${filter.name} ${kind}`,
        );
      }
      assert.equal(handlers.read, undefined, `${filter.name}: no read handler in the queue's way`);
      await setup.close?.();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A filter whose hook logs what it sees, and whose handlers (the path for `next`) log too. */
const hookFilter = (name: string, log: string[], verdict = HOOK_PASS) =>
  defineFilter({
    name,
    keepsForward: true,
    queue: (next) => ({
      hook: {
        before: (kind, offset, length, tag) => (
          log.push(`${name} before ${kind} ${offset} ${length} ${tag}`),
          verdict
        ),
        after: (kind, _offset, _length, result) => void log.push(`${name} after ${kind} ${result}`),
      },
      read: (buf, offset) => (log.push(`${name} handler read ${offset}`), next.read(buf, offset)),
    }),
  });

test('hooks stack outermost first, over the forward; a filter serving reads above them gets their handlers as next', async () => {
  const log: string[] = [];
  const hooked = withFilters(forwardingTarget([]), [hookFilter('a', log), hookFilter('b', log)]);
  const setup = await hooked.setup({}, env);
  assert.equal(setup.capabilities?.zeroCopy, true);
  const handlers = await hooked.queue(setup.shared!, recordingIo().ctx);
  assert.equal(handlers.forward?.fd, 9);
  assert.deepEqual(
    handlers.hooks?.read?.map((h) => h.name),
    ['a', 'b'],
  );

  const collapsed = withFilters(forwardingTarget([]), [
    recordingFilter('top', log, true),
    hookFilter('a', log),
  ]);
  const collapsedSetup = await collapsed.setup({}, env);
  assert.equal(collapsedSetup.capabilities?.zeroCopy, false, 'top serves reads');
  const { ctx, calls } = recordingIo();
  const direct = await collapsed.queue(collapsedSetup.shared!, ctx);
  assert.equal(direct.forward, undefined);
  assert.equal(direct.hooks, undefined, "a's hook is not run by the queue: its handler is");
  log.length = 0;
  await direct.read!(new Uint8Array(4096), 8192);
  assert.deepEqual(log, ['top read 8192', 'a handler read 8192']);
  assert.deepEqual(calls, [`readFully 9 ${4096 + 8192} 4096`]);
});

test('a filter serving only flush over hooks keeps the forward and their hooks for the other kinds', async () => {
  const log: string[] = [];
  const flushing = defineFilter({
    name: 'f',
    keepsForward: true,
    queue: (next) => ({ flush: () => (log.push('f flush'), next.flush()) }),
  });
  const stack = withFilters(forwardingTarget([]), [
    hookFilter('outer', log),
    flushing,
    hookFilter('inner', log),
  ]);
  const setup = await stack.setup({}, env);
  assert.equal(setup.capabilities?.zeroCopy, true);
  const { ctx, calls } = recordingIo();
  const handlers = await stack.queue(setup.shared!, ctx);
  assert.deepEqual(handlers.forward, { fd: 9, offset: 4096, sync: false, discard: true });
  assert.deepEqual(
    handlers.hooks?.read?.map((h) => h.name),
    ['outer', 'inner'],
  );
  assert.deepEqual(
    handlers.hooks?.flush?.map((h) => h.name),
    ['outer'],
    "the queue runs outer's hook, then f's flush, whose next is inner's",
  );
  await handlers.flush!();
  assert.deepEqual(log, ['f flush']);
  assert.deepEqual(calls, ['fsync 9 data']);
});

test('options: durations, rates, ranges, errnos, request kinds', () => {
  assert.equal(parseDuration('10', 'd'), 10);
  assert.equal(parseDuration('1.5s', 'd'), 1500);
  assert.equal(parseDuration('500us', 'd'), 0.5);
  assert.throws(() => parseDuration('-1', 'd'), isUserError);
  assert.equal(parseRate('0.25', 'r'), 0.25);
  assert.equal(parseRate('10%', 'r'), 0.1);
  assert.throws(() => parseRate('2', 'r'), isUserError);
  assert.deepEqual(parseRange('0-4096', 'x'), { start: 0, end: 4096 });
  assert.deepEqual(parseRange('1M-2M', 'x'), { start: 1 << 20, end: 2 << 20 });
  assert.throws(() => parseRange('2M-1M', 'x'), isUserError);
  assert.throws(() => parseRange('1M', 'x'), isUserError);
  assert.equal(parseErrno('EIO', 'e'), 5);
  assert.equal(parseErrno('enospc', 'e'), 28);
  assert.throws(() => parseErrno('EWHAT', 'e'), isUserError);
  assert.deepEqual(parseOps('read,write,read', 'o'), ['read', 'write']);
  assert.equal(parseOps('all', 'o').length, 5);
  assert.throws(() => parseOps('read,trim', 'o'), /trim/);
});

test('error: which requests fail', () => {
  assert.throws(() => errorPlan({}), /say which requests fail/);
  const plan = errorPlan({ error_range: '1M-2M' });
  assert.deepEqual(plan.ops, ['read', 'write']);
  assert.equal(plan.rate, 1);
  assert.equal(plan.errno, 5);
  const MiB = 1 << 20;
  assert.equal(fails(plan, 'read', MiB, 4096, 0.99), true);
  assert.equal(fails(plan, 'read', MiB - 4096, 8192, 0.99), true, 'overlapping the start');
  assert.equal(fails(plan, 'read', MiB - 4096, 4096, 0), false, 'ending where it starts');
  assert.equal(fails(plan, 'write', 2 * MiB, 4096, 0), false, 'END is excluded');
  assert.equal(fails(plan, 'flush', 0, 0, 0), false, 'not a chosen kind');
  const rated = errorPlan({ error_rate: '0.1', error_ops: 'flush' });
  assert.equal(fails(rated, 'flush', 0, 0, 0.05), true);
  assert.equal(fails(rated, 'flush', 0, 0, 0.5), false);
});

test('stats: buckets, counting by hook and by handler (failures too), queues summed, the file format', async () => {
  assert.equal(bucketOf(500), 0);
  assert.equal(bucketOf(2_000), 1);
  assert.equal(bucketOf(1_000_000), 9); // 1 ms: [512, 1024) µs
  assert.equal(bucketOf(1e15), 31);
  const buffer = newCounters(2);
  const counters = queueCounters(buffer, 1);
  const { ctx } = recordingIo();
  const own = countedHandlers(
    nextHandlers({ read: () => undefined, write: () => Promise.reject(new Error('x')) }, ctx),
    counters,
  );
  await own.read!(new Uint8Array(4096), 0);
  await own.read!(new Uint8Array(512), 0);
  await assert.rejects(async () => own.write!(new Uint8Array(4096), 0, { fua: false }));
  const hook = countingHook(queueCounters(buffer, 0), 4);
  assert.equal(hook.before!('read', 0, 8192, 3), HOOK_PASS);
  hook.after!('read', 0, 8192, 8192, 3);
  assert.equal(hook.before!('flush', 0, 0, 2), HOOK_PASS);
  hook.after!('flush', 0, 0, -5, 2);
  const s = snapshot(buffer);
  assert.equal(s.flush.errors, 1);
  assert.equal(s.read.ops, 3, 'both queues, summed');
  assert.equal(s.read.bytes, 4608 + 8192);
  assert.equal(s.write.ops, 1);
  assert.equal(s.write.errors, 1);
  assert.equal(s.write.bytes, 0);
  assert.equal(
    s.read.histogram.reduce((a, b) => a + b),
    3,
  );
  const text = formatStats(s, 1.5);
  assert.match(text, /^elapsed_s=1\.500$/m);
  assert.match(text, /^read: ops=3 bytes=12800 errors=0 mean_us=/m);
  assert.match(text, /^flush: ops=1 bytes=0 errors=1 /m);
});

test('cow: the map cuts requests into overlay and base runs', () => {
  const map = CowMap.create(64);
  map.mark(COW_BLOCK, 2 * COW_BLOCK);
  map.mark(40 * COW_BLOCK, COW_BLOCK);
  assert.deepEqual(map.runs(0, 4 * COW_BLOCK), [
    { offset: 0, length: COW_BLOCK, top: false },
    { offset: COW_BLOCK, length: 2 * COW_BLOCK, top: true },
    { offset: 3 * COW_BLOCK, length: COW_BLOCK, top: false },
  ]);
  assert.equal(map.has(40), true);
  assert.equal(map.has(39), false);
  assert.equal(map.has(41), false);
  const shared = new CowMap(map.buffer);
  assert.equal(shared.has(1), true, 'one map, shared');
});

test('cow: refuses a missing --cow_file before setting up the layer below', async () => {
  let below = false;
  await assert.rejects(
    async () => cow.setup!(async () => ((below = true), { size: 4096 }), {}, env),
    /--cow_file/,
  );
  assert.equal(below, false);
});

test('cow: the map of an existing overlay is its data, read with SEEK_DATA/SEEK_HOLE', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ublk-cow-map-'));
  const fd = openSync(join(dir, 'top.img'), 'w+');
  try {
    ftruncateSync(fd, 64 * COW_BLOCK);
    writeSync(fd, new Uint8Array(COW_BLOCK).fill(1), 0, COW_BLOCK, 2 * COW_BLOCK);
    writeSync(fd, new Uint8Array(2 * COW_BLOCK), 0, 2 * COW_BLOCK, 60 * COW_BLOCK);
    const map = mapOf(fd, 64 * COW_BLOCK);
    const held = Array.from({ length: 64 }, (_, b) => b).filter((b) => map.has(b));
    assert.deepEqual(held, [2, 60, 61], 'written zeros count as written');
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('cow over a forward: its hook routes reads by the map and writes to the overlay; no zero copy (mixed reads need the buffer)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ublk-cow-route-'));
  try {
    const stack = withFilters(forwardingTarget([]), [cow]);
    const setup = await stack.setup({ cow_file: join(dir, 'top.img') }, env);
    assert.equal(setup.capabilities?.zeroCopy, false);
    const handlers = await stack.queue(setup.shared!, recordingIo().ctx);
    assert.equal(handlers.forward?.fd, 9, "the target's forward stays");
    const hook = handlers.hooks?.read?.[0];
    assert.equal(hook?.name, 'cow');
    assert.equal(typeof handlers.read, 'function', 'for mixed reads');
    const route = hook!.hook.route!;
    const overlay = route('write', 0, 4096, 0);
    assert.ok(overlay.to === 'file' && overlay.fd >= 0, 'writes go to the overlay');
    assert.equal(route('read', 0, 8192, 0), ROUTE_BELOW, 'nothing written: the base');
    hook!.hook.after!('write', 4096, 4096, 4096, 0);
    assert.equal(route('read', 4096, 4096, 0), overlay, 'written: the overlay');
    assert.equal(route('read', 0, 8192, 0), ROUTE_HANDLERS, 'both: the handler');
    assert.equal(route('flush', 0, 0, 0), overlay);
    assert.equal(route('discard', 0, 4096, 0), ROUTE_HANDLERS);
    await setup.close?.();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
