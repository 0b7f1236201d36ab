/**
 * Helpers for tests that kill a daemon under load and recover its device: fio in the background
 * with a deadline, the daemon's pid, `ublk recover`.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { daemonPids, listStatus, ublk, waitFor, type FioReport } from './cli.js';

/** fio runs still going; killFio ends them (a test that failed left them running). */
const fioChildren = new Set<ChildProcess>();
export function killFio(): void {
  for (const child of fioChildren) child.kill('SIGKILL');
}

/** The only daemon process there is. */
export function theDaemon(): number {
  const pids = daemonPids();
  assert.equal(pids.length, 1, `one daemon: ${pids.join(' ')}`);
  return pids[0];
}

/** Reads and writes completed by /dev/ublkbN so far (/sys/block/NAME/stat). */
export function completedIos(id: number): number {
  const f = readFileSync(`/sys/block/ublkb${id}/stat`, 'utf8').trim().split(/\s+/).map(Number);
  return f[0] + f[4];
}

export interface FioRun {
  /** fio's exit status and JSON report; rejects if fio is still running `ms` from now. */
  finished(ms: number): Promise<{ status: number | null; report: FioReport; stderr: string }>;
  running(): boolean;
}

/**
 * fio in the background, its report to a file; killed if a test leaves it running. `asUser` is a
 * command prefix that runs it as another user (setpriv ...); it then writes in `dir`, its cwd
 * (fio's verify state file goes there).
 */
export function startFio(dir: string, name: string, args: string[], asUser: string[] = []): FioRun {
  const out = join(dir, `${name}.json`);
  const err = join(dir, `${name}.err`);
  const fio = [...asUser, 'fio', `--name=${name}`, '--output-format=json', `--output=${out}`];
  const child = spawn('sh', ['-c', 'exec "$@" 2>"$ERR"', 'sh', ...fio, ...args], {
    stdio: 'ignore',
    cwd: dir,
    env: { ...process.env, ERR: err },
  });
  fioChildren.add(child);
  let exitStatus: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      fioChildren.delete(child);
      resolve((exitStatus = code));
    }),
  );
  return {
    running: () => exitStatus === undefined,
    async finished(ms) {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<'hung'>((resolve) => {
        timer = setTimeout(() => resolve('hung'), ms);
      });
      const status = await Promise.race([exited, deadline]);
      clearTimeout(timer);
      if (status === 'hung') {
        child.kill('SIGKILL');
        throw new Error(
          `fio ${name} hung: still running ${ms / 1000} s after the test waited for it`,
        );
      }
      const text = readFileSync(out, 'utf8');
      const report = JSON.parse(text.slice(text.indexOf('{'))) as FioReport;
      return { status, report, stderr: readFileSync(err, 'utf8') };
    },
  };
}

/** fio's reported errors: the first error (an errno) of each job. */
export const jobErrors = (report: FioReport) => report.jobs.map((j) => j.error);

/**
 * fio in the background writing `size` bytes of /dev/ublkbID at random places with crc32c
 * checksums, while its daemon is killed (or hands over) and `recover` starts another. It thinks
 * 15 ms after each IO (verify reads included), so that most of the run is still ahead at the
 * kills whatever the machine's speed (a rate limit would not do: fio catches up after a stall);
 * verify_backlog reads back and checks every block shortly after it was written. `sizes` is
 * fio's --bsrange or --bssplit.
 */
export function startVerifyAcrossRecovery(
  dir: string,
  name: string,
  id: number,
  { size, sizes }: { size: number; sizes: string },
): FioRun {
  return startFio(dir, name, [
    `--filename=/dev/ublkb${id}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--rw=randwrite',
    sizes,
    '--iodepth=32',
    `--size=${size}`,
    '--thinktime=15ms',
    '--verify=crc32c',
    '--verify_backlog=128',
    '--verify_fatal=1',
  ]);
}

/** That a startVerifyAcrossRecovery run ended well: every block written and verified, no error. */
export async function assertVerified(fio: FioRun, size: number): Promise<void> {
  const { status, report, stderr } = await fio.finished(10 * 60_000);
  assert.equal(status, 0, stderr);
  assert.deepEqual(jobErrors(report), [0], 'no IO or verify error');
  assert.equal(report.jobs[0].write.io_bytes, size, 'every block written');
  assert.equal(report.jobs[0].read.io_bytes, size, 'and verified');
}

/** `ublk recover -n ID`, which must succeed and print the device LIVE with a new daemon. */
export function recover(id: number, oldPid: number): number {
  const r = ublk('recover', '-n', String(id));
  assert.equal(r.status, 0, `recover failed: ${r.stderr}`);
  const lines = r.stdout.split('\n');
  assert.match(lines[0], new RegExp(`^dev id ${id}: `));
  const { pid, state } = listStatus(r.stdout);
  assert.equal(state, 'LIVE', r.stdout);
  assert.notEqual(pid, oldPid, 'a new daemon serves it');
  assert.equal(theDaemon(), pid, 'the pid printed is the daemon');
  assert.match(r.stdout, /queue 0: tid [1-9]\d* /);
  return pid;
}

export async function killDaemon(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL');
  // Gone from /proc once its threads have exited and init has reaped it.
  await waitFor(`daemon ${pid} to be gone`, () => !daemonPids().includes(pid), 30_000);
}
