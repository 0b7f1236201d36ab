/**
 * The background daemon that `ublk add` starts: detached, with file descriptor 3 a pipe back to
 * `add`, which reads one JSON line saying whether the device came up.
 */
import { closeSync, writeSync } from 'node:fs';
import { UserError } from '../errors.js';
import type { AddOptions } from './args.js';
import { serve } from './serve.js';

export type DaemonReport = { ok: true; devId: number } | { ok: false; message: string };

const REPORT_FD = 3;

function report(message: DaemonReport): void {
  writeSync(REPORT_FD, JSON.stringify(message) + '\n');
  closeSync(REPORT_FD);
}

const [optionsJson, targetSource] = process.argv.slice(2);
// Stay off the caller's mount points, like daemon(3).
process.chdir('/');
try {
  const device = await serve(JSON.parse(optionsJson) as AddOptions, targetSource);
  report({ ok: true, devId: device.id });
} catch (err) {
  if (!(err instanceof UserError)) console.error(err); // the stack, to the daemon log
  report({ ok: false, message: (err as Error).message ?? String(err) });
  process.exit(1);
}
