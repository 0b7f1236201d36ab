import { parentPort, workerData } from 'node:worker_threads';
import { isErrnoError } from '../../errors.js';
import { constants, gettid, prctl, schedSetaffinity } from '../../sys.js';
import { loadTarget } from '../target/loader.js';
import { checkHandlers } from '../target/handler-check.js';
import { Queue, type QueueConfig } from './queue.js';
import type { Capabilities } from '../target/contract.js';

/** What the daemon's main thread hands each queue thread. */
export interface QueueWorkerData extends QueueConfig {
  targetSource: string;
  shared: unknown;
  /** What the target's setup declared: the handlers its queue() must return. */
  capabilities: Capabilities;
  affinity: number[];
}

export type QueueWorkerMessage = { type: 'ready'; tid: number } | { type: 'stopped' };

const data = workerData as QueueWorkerData;
const port = parentPort!;

// Writeback can wait on this device; without this flag, reclaim in this thread could wait on
// itself.
try {
  prctl(constants.PR_SET_IO_FLUSHER, 1, 0, 0, 0);
} catch (err) {
  if (!isErrnoError(err)) throw err; // EINVAL before 5.6, EPERM without CAP_SYS_RESOURCE
}
if (data.affinity.length > 0) schedSetaffinity(0, data.affinity);

const target = await loadTarget(data.targetSource);
const queue = Queue.open(data);
const handlers = await target.queue(data.shared, {
  queueId: data.queueId,
  depth: data.depth,
  io: queue.io,
});
checkHandlers(target.name, data.capabilities, handlers);
queue.start(handlers);
port.postMessage({ type: 'ready', tid: gettid() } satisfies QueueWorkerMessage);
await queue.done;
port.postMessage({ type: 'stopped' } satisfies QueueWorkerMessage);
