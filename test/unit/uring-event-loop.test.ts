import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeSync } from 'node:fs';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import * as sys from '../../src/sys.js';
import {
  IORING_SETUP_DEFER_TASKRUN,
  IORING_SETUP_SINGLE_ISSUER,
  POLLIN,
  Ring,
} from '../../src/uring/index.js';

// Absolute URLs: snippets run from data: URLs, which cannot resolve relative or bare paths.
const sysUrl = new URL('../../src/sys.js', import.meta.url).href;
const uringUrl = new URL('../../src/uring/index.js', import.meta.url).href;
const prelude = `
  import { writeSync } from 'node:fs';
  import { parentPort } from 'node:worker_threads';
  import * as sys from '${sysUrl}';
  import { POLLIN, Ring } from '${uringUrl}';
  const post = (message) => parentPort.postMessage(message);
`;

/** Runs an ES module snippet (with the prelude) in a fresh process. */
function runChild(body: string, timeout = 10_000) {
  return spawnSync(process.execPath, ['--input-type=module', '-e', prelude + body], {
    encoding: 'utf8',
    timeout,
  });
}

/** Runs a snippet (with the prelude) in a worker thread; `post(message)` reaches onMessage. */
function runWorker(body: string, onMessage: (message: unknown, worker: Worker) => void) {
  const source = `data:text/javascript,${encodeURIComponent(prelude + body)}`;
  const worker = new Worker(new URL(source));
  worker.on('message', (message) => onMessage(message, worker));
  return new Promise<number>((resolve, reject) => {
    worker.on('error', reject);
    worker.on('exit', resolve);
  });
}

const signal = (fd: number): number => writeSync(fd, new BigUint64Array([1n]));

test('a completion wakes the event loop through the eventfd, with no polling meanwhile', async () => {
  const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
  const ring = Ring.create({ entries: 4 });
  try {
    const completion = new Promise<[number, number]>((resolve) => {
      ring.startEventLoop((userData, res) => resolve([userData, res]));
    });
    assert.ok(ring.sq.prepPollAdd(fd, POLLIN, 77));
    assert.equal(ring.submit(), 1);
    assert.equal(ring.inFlight, 1);

    const cpuBefore = process.cpuUsage();
    const started = performance.now();
    setTimeout(() => signal(fd), 500);
    const [userData, res] = await completion;
    const wallMs = performance.now() - started;
    const cpu = process.cpuUsage(cpuBefore);
    const cpuMs = (cpu.user + cpu.system) / 1000;

    assert.equal(userData, 77);
    assert.equal(res & POLLIN, POLLIN);
    assert.equal(ring.inFlight, 0);
    assert.ok(wallMs >= 450, `completed after ${wallMs} ms, before the eventfd was signalled`);
    assert.ok(cpuMs < wallMs * 0.5, `${cpuMs} ms of CPU over ${wallMs} ms: busy waiting`);
  } finally {
    ring.close();
    sys.close(fd);
  }
});

test('the handler may submit more work: 2,000 NOPs chained from completions', async () => {
  const ring = Ring.create({ entries: 32 });
  const total = 2000;
  const seen = new Uint8Array(total);
  let next = 0;
  const submitBatch = (): void => {
    while (next < total && ring.sq.prepNop(next)) next++;
    assert.ok(ring.submit() >= 0);
  };
  try {
    await new Promise<void>((resolve) => {
      let completed = 0;
      ring.startEventLoop((userData) => {
        seen[userData]++;
        if (++completed === total) resolve();
        else if (ring.inFlight <= 1) submitBatch();
      });
      submitBatch();
    });
    assert.ok(seen.every((count) => count === 1));
  } finally {
    ring.close();
  }
});

test('stopEventLoop stops the callbacks; completions can still be drained', async () => {
  const ring = Ring.create({ entries: 4 });
  try {
    let calls = 0;
    ring.startEventLoop(() => calls++);
    assert.throws(() => ring.startEventLoop(() => {}), /already/);
    ring.stopEventLoop();
    ring.stopEventLoop();
    ring.sq.prepNop(1);
    ring.submit();
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(calls, 0);
    assert.equal(
      ring.drain(() => calls++),
      1,
    );
    assert.equal(calls, 1);
    // CQEs that arrived while no loop was watching are delivered on restart.
    ring.sq.prepNop(2);
    ring.submit();
    const delivered = await new Promise<number>((resolve) => ring.startEventLoop(resolve));
    assert.equal(delivered, 2);
  } finally {
    ring.close();
  }
});

test('a handler may close the ring mid-drain', async () => {
  const ring = Ring.create({ entries: 4 });
  const seen: number[] = [];
  for (let i = 0; i < 3; i++) ring.sq.prepNop(i);
  ring.submit();
  await new Promise<void>((resolve) => {
    ring.startEventLoop((userData) => {
      seen.push(userData);
      ring.close();
      resolve();
    });
  });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(seen, [0]);
});

test('an idle ring does not keep the process alive', () => {
  const result = runChild(`
    const ring = Ring.create({ entries: 4 });
    ring.startEventLoop(() => {});
    ring.sq.prepNop(1);
    ring.submit();
  `);
  assert.equal(result.status, 0, result.stderr);
});

test('an operation in flight keeps the process alive until it completes', () => {
  const result = runChild(`
    const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
    const ring = Ring.create({ entries: 4 });
    ring.startEventLoop((userData, res) => console.log('done', userData, res & POLLIN));
    ring.sq.prepPollAdd(fd, POLLIN, 5);
    ring.submit();
    // Unref'd: only the ring can keep the process alive until the timer fires.
    setTimeout(() => writeSync(fd, new BigUint64Array([1n])), 300).unref();
  `);
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout.trim(), 'done 5 1');
});

test('after stopEventLoop, an operation in flight no longer keeps the process alive', () => {
  const result = runChild(`
    const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
    const ring = Ring.create({ entries: 4 });
    ring.startEventLoop(() => console.log('unexpected completion'));
    ring.sq.prepPollAdd(fd, POLLIN, 5);
    ring.submit();
    ring.stopEventLoop();
  `);
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, '');
});

test('rings work in worker threads, in both modes, and worker exit cleans up', async () => {
  const messages: unknown[] = [];
  const code = await runWorker(
    `
    const ring = Ring.create({ entries: 8 });
    ring.sq.prepNop(1);
    ring.submitAndWait(1);
    let synced;
    ring.drain((userData) => (synced = userData));
    ring.startEventLoop((userData) => post({ tid: sys.gettid(), synced, looped: userData }));
    ring.sq.prepNop(2);
    ring.submit();
    // Left in event-loop mode and mapped: the worker's teardown must cope.
    `,
    (message) => messages.push(message),
  );
  assert.equal(code, 0);
  assert.equal(messages.length, 1);
  const { tid, synced, looped } = messages[0] as { tid: number; synced: number; looped: number };
  assert.notEqual(tid, sys.gettid());
  assert.deepEqual([synced, looped], [1, 2]);
});

test('terminating a worker with an operation in flight is safe', async () => {
  const inFlight: unknown[] = [];
  const code = await runWorker(
    `
    const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
    const ring = Ring.create({ entries: 4 });
    ring.startEventLoop(() => {});
    ring.sq.prepPollAdd(fd, POLLIN, 1);
    ring.submit();
    post(ring.inFlight);
    `,
    (message, worker) => {
      inFlight.push(message);
      void worker.terminate();
    },
  );
  assert.equal(code, 1); // terminate()'s exit code
  assert.deepEqual(inFlight, [1]);
  // The main thread's own ring still works afterwards.
  const ring = Ring.create({ entries: 2 });
  ring.sq.prepNop(3);
  ring.submitAndWait(1);
  assert.equal(ring.cqReady(), 1);
  ring.close();
});

test('awaitCqeInEventLoop: false when CQEs are ready, else one call back once one is', async () => {
  for (const flags of [
    0,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, // completions wait as task work
  ]) {
    const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
    const ring = Ring.create({ entries: 4, flags });
    try {
      assert.ok(ring.sq.prepNop(1));
      assert.equal(
        ring.awaitCqeInEventLoop(() => assert.fail('no call back')),
        false,
      );
      assert.equal(
        ring.drain(() => {}),
        1,
        'the NOP was submitted and completed',
      );

      assert.ok(ring.sq.prepPollAdd(fd, POLLIN, 2));
      let calls = 0;
      const ready = new Promise<void>((resolve) => {
        assert.equal(
          ring.awaitCqeInEventLoop(() => {
            calls++;
            resolve();
          }),
          true,
          'the poll was submitted and nothing is ready',
        );
      });
      setTimeout(() => signal(fd), 50);
      await ready;
      // With DEFER_TASKRUN the poll's completion is posted by the next enter.
      ring.submitAndWait(1, 1000);
      const seen: number[] = [];
      ring.drain((userData) => seen.push(userData));
      assert.deepEqual(seen, [2]);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(calls, 1, 'called back once');
    } finally {
      ring.close();
      sys.close(fd);
    }
  }
});

test('cancelEventLoopWait: no call back, and the ring does not keep the process alive', () => {
  const r = runChild(`
    const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
    const ring = Ring.create({ entries: 4 });
    ring.sq.prepPollAdd(fd, POLLIN, 1);
    ring.awaitCqeInEventLoop(() => console.log('unexpected call back'));
    ring.cancelEventLoopWait();
    setTimeout(() => writeSync(fd, new BigUint64Array([1n])), 50);
    setTimeout(() => console.log('done'), 200);
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'done\n');
});
