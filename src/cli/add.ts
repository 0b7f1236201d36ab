import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { mkdirSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { loadFilter, loadTarget, stackSource } from '../ublk/target/loader.js';
import { BUILT_IN_FILTERS, filterSource, targetSource } from '../targets/registry.js';
import type { TargetOptionSpecs } from '../ublk/target/contract.js';
import { findFilters, findTargetType, isAddOption, parseAddArgs, type AddOptions } from './args.js';
import type { DaemonReport } from './daemon-main.js';
import { runDir } from './run-dir.js';
import type { ServeJob } from './serve.js';

const DAEMON_SCRIPT = new URL('./daemon-main.js', import.meta.url);
/** START_DEV scans partitions, which under emulation can take a while. */
const START_TIMEOUT_MS = 5 * 60_000;

export async function parseAdd(argv: readonly string[]): Promise<{
  options: AddOptions;
  source: string;
}> {
  const filters = findFilters(argv).map(filterSource);
  const source = stackSource(targetSource(findTargetType(argv)), filters);
  const target = await loadTarget(source);
  await refuseFilterOptionsWithoutFilter(argv, target.options ?? {});
  return { options: parseAddArgs(argv, target.options ?? {}), source };
}

/** A built-in filter's option given without its --filter: say which filter it needs. */
async function refuseFilterOptionsWithoutFilter(
  argv: readonly string[],
  known: TargetOptionSpecs,
): Promise<void> {
  const unknown = argv
    .map((arg) => /^--([^=]+)/.exec(arg)?.[1])
    .filter((name): name is string => !!name && !isAddOption(name) && !Object.hasOwn(known, name));
  if (unknown.length === 0) return;
  for (const [name, source] of Object.entries(BUILT_IN_FILTERS)) {
    const filter = await loadFilter(source);
    const orphan = unknown.find((option) => Object.hasOwn(filter.options ?? {}, option));
    if (orphan) {
      throw new UserError(
        `add: --${orphan} is an option of the ${name} filter: add --filter ${name}`,
      );
    }
  }
}

/**
 * Starts a detached daemon for a job (a new device for `add`, a dead daemon's device for
 * `recover`) and waits for its verdict: the device id once the device is LIVE, or the daemon's own
 * error message.
 */
export async function startDaemon(job: ServeJob): Promise<number> {
  mkdirSync(runDir(), { recursive: true });
  const log = openSync(join(runDir(), 'daemon.log'), 'a');
  const child = spawn(process.execPath, [DAEMON_SCRIPT.pathname, JSON.stringify(job)], {
    detached: true,
    stdio: ['ignore', log, log, 'pipe'],
  });
  closeSync(log);
  const pipe = child.stdio[3] as Readable;
  let text = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (chunk: string) => (text += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const reported = new Promise<void>((resolve) => pipe.once('close', () => resolve()));
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), START_TIMEOUT_MS);
  });
  const outcome = await Promise.race([reported, timedOut]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    child.kill('SIGKILL');
    throw new UserError(`the daemon did not start the device within ${START_TIMEOUT_MS / 1000} s`);
  }
  const line = text.split('\n')[0];
  if (!line) {
    const code = await exited;
    throw new UserError(`the daemon exited (${code}) before starting the device`);
  }
  const verdict = JSON.parse(line) as DaemonReport;
  if (!verdict.ok) {
    await exited;
    throw new UserError(verdict.message);
  }
  child.unref();
  pipe.destroy();
  return verdict.devId;
}
