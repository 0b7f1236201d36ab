/**
 * `npm run test:kernel`: the kernel tests (dist/test/kernel/, compiled from test/kernel/) against a
 * real ublk driver. On the host when it has one (root, and /dev/ublk-control or a working
 * `modprobe ublk_drv`), otherwise in the test VM (scripts/lib/vm-run.ts). Ends with the line
 *
 *   kernel suite ran in the VM on Linux 6.1.0-56-amd64
 *   kernel: 7 passed, 0 failed
 *
 * and fails, with a one-line reason, when the suite cannot run, when no test ran, when any test
 * failed, and when any test was skipped or todo: a skipped kernel test is a defect, not a pass.
 *
 * The tests run under `node --test` with two reporters on its stdout: spec, for people, and
 * lib/kernel-reporter.js, whose prefixed JSON lines (first test started; totals) we pick out of
 * the stream, whether it comes from a child process here or from the VM's console.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isRoot, REPO_ROOT, run, seconds, UserError, which } from './lib/common.js';
import { REPORTER_PREFIX, type SuiteSummary } from './lib/kernel-reporter.js';
import { prepareVm } from './lib/vm-prepare.js';
import { guestEnv, runInVm, vmSettingsFromEnv } from './lib/vm-run.js';

const TEST_DIR = 'dist/test/kernel/';

/** Test files or folders to run: UBLK_KERNEL_TESTS (space-separated) or all of TEST_DIR. */
function testPaths(): string[] {
  const chosen = (process.env.UBLK_KERNEL_TESTS ?? '').split(/\s+/).filter(Boolean);
  return chosen.length ? chosen : [TEST_DIR];
}

/** The test runner's command line (run in REPO_ROOT). */
function nodeTestArgv(): string[] {
  const reporter = fileURLToPath(new URL('./lib/kernel-reporter.js', import.meta.url));
  return [
    process.execPath,
    '--test',
    // Kernel tests share one kernel (device ids, null_blk, loop): one file at a time.
    '--test-concurrency=1',
    '--test-reporter=spec',
    '--test-reporter-destination=stdout',
    `--test-reporter=${reporter}`,
    '--test-reporter-destination=stdout',
    ...testPaths(),
  ];
}

/** Picks the reporter's lines out of the runner's output; everything else is for people. */
class ReporterTap {
  firstTestAt?: number;
  summary?: SuiteSummary;

  /** Returns the part of the line to show (undefined: nothing). */
  line(line: string): string | undefined {
    const at = line.indexOf(REPORTER_PREFIX);
    if (at < 0) return line;
    try {
      const ev = JSON.parse(line.slice(at + REPORTER_PREFIX.length)) as { event: string };
      if (ev.event === 'first-test') this.firstTestAt ??= Date.now();
      if (ev.event === 'summary') this.summary = ev as unknown as SuiteSummary;
    } catch {
      return line; // not ours after all
    }
    return at > 0 ? line.slice(0, at) : undefined;
  }
}

// ---------------------------------------------------------------------------------------------

type Where = { where: 'host' | 'VM'; why: string };

function decideWhere(): Where {
  const forced = (process.env.UBLK_KERNEL_SUITE_MODE ?? 'auto').toLowerCase();
  if (forced === 'vm') return { where: 'VM', why: 'UBLK_KERNEL_SUITE_MODE=vm' };
  if (forced === 'host') return { where: 'host', why: 'UBLK_KERNEL_SUITE_MODE=host' };
  if (forced !== 'auto') {
    throw new UserError(`UBLK_KERNEL_SUITE_MODE=${forced}: want auto, host or vm`);
  }
  if (!isRoot()) {
    return { where: 'VM', why: 'not root on the host; the kernel tests need CAP_SYS_ADMIN' };
  }
  if (existsSync('/dev/ublk-control'))
    return { where: 'host', why: 'the host has /dev/ublk-control' };
  if (
    which('modprobe') &&
    run('modprobe', ['ublk_drv']).status === 0 &&
    existsSync('/dev/ublk-control')
  ) {
    return { where: 'host', why: 'modprobe ublk_drv worked on the host' };
  }
  return { where: 'VM', why: `the host kernel (${release()}) has no ublk driver` };
}

interface Outcome {
  exitCode: number;
  tap: ReporterTap;
  /** Why the suite could not run to the end (VM failure...). */
  problem?: string;
}

async function runOnHost(): Promise<Outcome> {
  const tap = new ReporterTap();
  const [cmd, ...args] = nodeTestArgv();
  const child = spawn(cmd, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  let pending = '';
  const out = (l: string | undefined) => l !== undefined && process.stdout.write(l + '\n');
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    pending += d;
    let i: number;
    while ((i = pending.indexOf('\n')) >= 0) {
      out(tap.line(pending.slice(0, i)));
      pending = pending.slice(i + 1);
    }
  });
  const exitCode = await new Promise<number>((resolve) => {
    child.once('error', () => resolve(127));
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
  if (pending) out(tap.line(pending));
  return { exitCode, tap };
}

function verdict(o: Outcome): string | undefined {
  const s = o.tap.summary;
  if (o.problem) return o.problem;
  if (!s || !s.complete) return `the test runner ended without its totals (exit ${o.exitCode})`;
  const names = (list: string[]) => (list.length ? `: ${list.slice(0, 10).join(', ')}` : '');
  if (s.tests === 0) return `zero kernel tests ran (in ${testPaths().join(' ')})`;
  if (s.fail + s.cancelled > 0) {
    return `${s.fail + s.cancelled} kernel test(s) failed or were cancelled${names(s.failedNames)}`;
  }
  if (s.skipped > 0) {
    return `${s.skipped} kernel test(s) skipped; a skipped kernel test is a defect${names(s.skippedNames)}`;
  }
  if (s.todo > 0)
    return `${s.todo} kernel test(s) marked todo; not allowed here${names(s.todoNames)}`;
  if (s.pass === 0) return 'no kernel test passed';
  if (o.exitCode !== 0) return `the test runner exited with ${o.exitCode}`;
  return undefined;
}

/**
 * Two lines: where it ran, then the counts alone in the plain `kernel: N passed, N failed` shape
 * that CI reads as a test summary.
 */
function countsLines(where: string, kernel: string, o: Outcome): string {
  const s = o.tap.summary;
  const n = (v: number | null | undefined) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  const skipped = n(s?.skipped) + n(s?.todo);
  return (
    `kernel suite ran in the ${where} on Linux ${s?.kernel ?? kernel}\n` +
    `kernel: ${n(s?.pass)} passed, ${n(s?.fail) + n(s?.cancelled)} failed` +
    (skipped ? `, ${skipped} skipped` : '')
  );
}

async function main(): Promise<number> {
  const t0 = Date.now();
  const where = decideWhere();
  for (const p of testPaths()) {
    if (!existsSync(join(REPO_ROOT, p))) {
      throw new UserError(`${p} does not exist: compile first (npx tsc -p .)`);
    }
  }
  let outcome: Outcome;
  let kernel = release();
  const timing: string[] = [];
  if (where.where === 'host') {
    console.log(`kernel suite: running on the host, Linux ${release()} (${where.why})`);
    outcome = await runOnHost();
    const first = outcome.tap.firstTestAt;
    timing.push(`first test after ${first ? seconds(first - t0) + ' s' : '-'}`);
  } else {
    console.log(`kernel suite: running in the test VM (${where.why})`);
    const settings = vmSettingsFromEnv();
    const assets = await prepareVm();
    kernel = assets.kver;
    timing.push(`preparation ${seconds(assets.elapsedMs)} s${assets.built ? ' (cold cache)' : ''}`);
    console.log(
      `kernel suite: VM: Linux ${assets.kver}, qemu -accel ${settings.accel}, ` +
        `${settings.cpus} vCPUs, ${settings.memory}, time limit ${settings.timeoutSec} s`,
    );
    const tap = new ReporterTap();
    const vmStart = Date.now();
    const vm = await runInVm(assets, {
      ...settings,
      argv: nodeTestArgv(),
      cwd: REPO_ROOT,
      env: guestEnv(),
      onStdoutLine: (line) => {
        const show = tap.line(line);
        if (show !== undefined && show !== line) process.stdout.write(show + '\n');
        return show === line;
      },
    });
    const first = tap.firstTestAt;
    timing.push(
      `VM boot-to-first-test ${first ? seconds(first - vmStart) + ' s' : '-'}`,
      `VM boot-to-command ${vm.readyMs !== undefined ? seconds(vm.readyMs) + ' s' : '-'}`,
    );
    if (vm.kernelReports > 0) {
      console.log(
        `kernel suite: the guest kernel reported ${vm.kernelReports} problem(s) (above, as ` +
          `[guest kernel]); log: ${vm.kernelLog ?? '-'}`,
      );
    }
    outcome = { exitCode: vm.status, tap, problem: vm.failure };
  }
  timing.push(`total ${seconds(Date.now() - t0)} s`);
  console.log(`kernel suite: ${timing.join(', ')}`);
  const why = verdict(outcome);
  if (why) console.log(`kernel suite FAILED: ${why}`);
  console.log(countsLines(where.where, kernel, outcome));
  return why ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    const message = e instanceof Error ? e.message : String(e);
    const [first, ...rest] = message.split('\n');
    console.log(`kernel suite FAILED: cannot run the kernel suite: ${first}`);
    if (rest.length) console.log(rest.join('\n'));
    if (!(e instanceof UserError) && e instanceof Error && e.stack) console.error(e.stack);
    process.exit(1);
  },
);
