/** The thread of a FakeNbdThread: the server, its counters in shared memory. */
import { parentPort, workerData } from 'node:worker_threads';
import { FakeNbdServer, type Corruption, type FakeServerOptions } from './fake-nbd.js';

const { options, listen, memory, counters } = workerData as {
  options: FakeServerOptions;
  listen: { port: number; host: string };
  memory: SharedArrayBuffer;
  counters: SharedArrayBuffer;
};
const shared = new Int32Array(counters);
const server: FakeNbdServer = new FakeNbdServer({
  ...options,
  memory,
  onChange: () => {
    Atomics.store(shared, 0, server.connections);
    Atomics.store(shared, 1, server.applied.length);
  },
});
await server.listen(listen);
parentPort!.on('message', (message: { corrupt: Corruption }) => {
  server.corruptNextRead(message.corrupt);
  parentPort!.postMessage('ok');
});
parentPort!.postMessage('listening');
