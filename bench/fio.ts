/** fio and the other commands the bench and the A/B comparisons run in the guest. */
import { spawnSync } from 'node:child_process';

/** Runs a command to its end; its stdout, or an error with everything it printed. */
export function run(command: string, args: string[]): string {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** What fio's JSON says of the side (read or write) of a job that did the IO. */
export interface FioSide {
  iops: number;
  /** KiB/s. */
  bw: number;
  clat_ns: { mean: number; percentile?: Record<string, number> };
}

/**
 * One fio job of `seconds` against `path` (io_uring, O_DIRECT) with a workload's own arguments:
 * the read side where it read, else the write side.
 */
export function fio(name: string, path: string, workloadArgs: string[], seconds: number): FioSide {
  const out = run('fio', [
    `--name=${name}`,
    `--filename=${path}`,
    '--ioengine=io_uring',
    '--direct=1',
    `--runtime=${seconds}`,
    '--time_based',
    '--group_reporting',
    '--output-format=json',
    ...workloadArgs,
  ]);
  // fio may print warnings before its JSON.
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Record<string, FioSide>[] })
    .jobs[0];
  return job.read.iops > 0 ? job.read : job.write;
}
