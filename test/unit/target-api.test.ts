import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ERROR_CODES, isUserError } from '../../src/errors.js';
import { FailureLog } from '../../src/ublk/queue/failure-log.js';
import { checkHandlers } from '../../src/ublk/target/handler-check.js';
import type { Capabilities, QueueHandlers } from '../../src/ublk/target/contract.js';

const read = () => undefined;
const write = () => undefined;

function refusal(caps: Capabilities, handlers: QueueHandlers): string | undefined {
  try {
    checkHandlers('t', caps, handlers);
    return undefined;
  } catch (err) {
    assert.ok(isUserError(err) && err.code === ERROR_CODES.INVALID_TARGET, String(err));
    assert.ok(!err.message.includes('\n'), 'one line');
    return err.message;
  }
}

test('checkHandlers: every declared capability needs its handler', () => {
  assert.equal(refusal({}, { read, write }), undefined);
  assert.equal(refusal({ readOnly: true }, { read }), undefined, 'read-only: no write()');
  assert.equal(
    refusal({}, { read }),
    'target t: queue() returned no write() (or declare readOnly)',
  );
  assert.equal(
    refusal(
      { volatileCache: true, discard: { granularity: 4096 }, writeZeroes: true },
      { read, write },
    ),
    'target t: queue() returned no flush() for its volatileCache capability, no discard() for its discard capability, no writeZeroes() for its writeZeroes capability',
  );
  assert.equal(
    refusal({ discard: false }, { read, write, discard: () => undefined, flush: () => undefined }),
    undefined,
    'a handler without its capability is allowed: it is never called',
  );
});

test('checkHandlers: a forward serves reads and writes, and FLUSH or DISCARD where it says so', () => {
  const forward = { fd: 3, offset: 0 };
  assert.equal(refusal({}, { forward }), undefined);
  assert.equal(
    refusal({}, {}),
    'target t: queue() returned no read() (every target serves reads), no write() (or declare readOnly)',
  );
  const caps = { volatileCache: true, discard: true };
  assert.equal(
    refusal(caps, { forward }),
    'target t: queue() returned no flush() for its volatileCache capability, no discard() for its discard capability',
  );
  assert.equal(refusal(caps, { forward: { ...forward, sync: true, discard: true } }), undefined);
});

test('FailureLog: the first failure of a cause in full, its repeats counted once per interval', async () => {
  const lines: string[] = [];
  const log = new FailureLog({
    devId: 2,
    queueId: 0,
    intervalMs: 20,
    write: (l) => void lines.push(l),
  });
  const request = { tag: 4, op: 0, offset: 8192, length: 4096, result: -5 };
  const err = new Error('bad sector 16');
  for (let i = 0; i < 5; i++) log.record(request, err);
  log.record({ ...request, op: 1 }, err);
  assert.deepEqual(lines, [
    'ublk device 2 queue 0 tag 4: READ of 4096 bytes at offset 8192 failed with EIO: bad sector 16\n',
    'ublk device 2 queue 0 tag 4: WRITE of 4096 bytes at offset 8192 failed with EIO: bad sector 16\n',
  ]);
  await new Promise((resolve) => setTimeout(resolve, 60));
  assert.deepEqual(lines.slice(2), [
    'ublk device 2 queue 0: 4 more failed requests (READ: bad sector 16) in the last 0.02 s\n',
  ]);
  log.record(request, err);
  log.flush();
  assert.equal(lines.length, 4, 'still counted, never logged in full again');
});

test('FailureLog with every failure: no rate limit', () => {
  const lines: string[] = [];
  const log = new FailureLog({
    devId: 0,
    queueId: 0,
    everyFailure: true,
    write: (l) => void lines.push(l),
  });
  for (let i = 0; i < 3; i++) log.record({ tag: i, op: 2, offset: 0, length: 0, result: -5 }, 'x');
  assert.equal(lines.length, 3);
});
