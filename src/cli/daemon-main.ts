/**
 * The background daemon that `ublk add` and `ublk recover` start: detached, with file descriptor 3
 * a pipe back to the command, which reads one JSON line saying whether the device came up. Its
 * stdout and stderr go to the daemon log (run-dir/daemon.log).
 */
import { closeSync, writeSync } from 'node:fs';
import { UserError } from '../errors.js';
import { serve, type ServeJob } from './serve.js';

export type DaemonReport = { ok: true; devId: number } | { ok: false; message: string };

const REPORT_FD = 3;

function report(message: DaemonReport): void {
  writeSync(REPORT_FD, JSON.stringify(message) + '\n');
  closeSync(REPORT_FD);
}

const job = JSON.parse(process.argv[2]) as ServeJob;
// Stay off the caller's mount points, like daemon(3): a daemon must never hold its own device.
process.chdir('/');
try {
  const device = await serve(job);
  report({ ok: true, devId: device.id });
} catch (err) {
  const what = job.kind === 'add' ? 'add' : `recover of device ${job.devId}`;
  console.error(
    `ublk daemon ${process.pid}: ${what} failed:`,
    err instanceof UserError ? err.message : err,
  );
  report({ ok: false, message: (err as Error).message ?? String(err) });
  process.exit(1);
}
