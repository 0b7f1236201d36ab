/**
 * Two builds on one workload, alternating in one VM session, for a design decision:
 *
 *   node dist/bench/ab.js --a CHECKOUT_A --b CHECKOUT_B [--kernel 7.3] [--pairs 4]
 *        [--workload '4k randread QD32'] [--seconds 4] -- <ublk add arguments: -t loop --auto_zc>
 *
 * Each pair runs both builds, A first in odd pairs and B first in even ones (the second device of
 * a pair has been seen to run slower), each on a device of its own added, warmed up, measured and
 * deleted in turn. Prints every pair's figures and ratio (B over A: IOPS, or mean latency for a
 * latency workload) and the median; writes bench-results/ab-<stamp>.json. Hold the VM lock:
 * `flock /tmp/ublk-vm.lock node dist/bench/ab.js ...`.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { REPO_ROOT } from '../scripts/lib/common.js';
import { prepareVm } from '../scripts/lib/vm-prepare.js';
import { guestEnv, runInVm, vmSettingsFromEnv } from '../scripts/lib/vm-run.js';
import { fio, run } from './fio.js';
import { median, WORKLOADS } from './workloads.js';

const MARKER = '@@ab-report@@ ';
const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const own = dash >= 0 ? argv.slice(0, dash) : argv;
const addArgs = dash >= 0 ? argv.slice(dash + 1) : ['-t', 'null'];
const option = (name: string, fallback?: string) => {
  const at = own.indexOf(name);
  return at >= 0 ? own[at + 1] : fallback;
};

interface Measure {
  build: 'a' | 'b';
  pair: number;
  iops: number;
  meanUs: number;
}
interface AbReport {
  kernel: string;
  workload: string;
  seconds: number;
  add: string[];
  a: string;
  b: string;
  runs: Measure[];
}

function measure(path: string, args: string[], seconds: number): { iops: number; meanUs: number } {
  const side = fio('ab', path, args, seconds);
  return { iops: side.iops, meanUs: side.clat_ns.mean / 1000 };
}

/** In the guest: the pairs, as one marker line on stdout; progress on stderr. */
function guest(): void {
  const a = option('--a')!;
  const b = option('--b')!;
  const pairs = Number(option('--pairs', '4'));
  const seconds = Number(option('--seconds', '4'));
  const workload = WORKLOADS.find((w) => w.name === option('--workload', '4k randread QD32'));
  if (!workload)
    throw new Error(`no workload of that name; one of: ${WORKLOADS.map((w) => w.name).join(', ')}`);
  const add = [...addArgs];
  const t = add.indexOf('-t');
  if (t >= 0 && add[t + 1] === 'loop' && !add.includes('-f')) {
    run('fio', [
      '--name=fill',
      '--filename=/tmp/ab-loop.img',
      '--rw=write',
      '--bs=1M',
      '--size=256M',
    ]);
    add.push('-f', '/tmp/ab-loop.img');
  }
  const runs: Measure[] = [];
  const started = Date.now();
  for (let pair = 1; pair <= pairs; pair++) {
    const order: ('a' | 'b')[] = pair % 2 ? ['a', 'b'] : ['b', 'a'];
    for (const build of order) {
      const cli = join(build === 'a' ? a : b, 'dist/bundle/cli/main.js');
      const out = run(process.execPath, [cli, 'add', ...add]);
      const id = Number(/dev id (\d+):/.exec(out)?.[1]);
      try {
        const dev = `/dev/ublkb${id}`;
        writeFileSync(`/sys/block/${basename(dev)}/queue/scheduler`, 'none');
        measure(dev, workload.args, 1);
        const m = measure(dev, workload.args, seconds);
        runs.push({ build, pair, ...m });
        const done = (pair - 1) * 2 + runs.filter((r) => r.pair === pair).length;
        const left = ((Date.now() - started) / done) * (pairs * 2 - done);
        process.stderr.write(
          `ab: pair ${pair}/${pairs} ${build}: ${m.iops.toFixed(0)} IOPS, mean ${m.meanUs.toFixed(1)} us` +
            ` [~${Math.round(left / 1000)} s left]\n`,
        );
      } finally {
        run(process.execPath, [cli, 'del', '-n', String(id)]);
      }
    }
  }
  const report: AbReport = {
    kernel: run('uname', ['-r']).trim(),
    workload: workload.name,
    seconds,
    add,
    a,
    b,
    runs,
  };
  console.log(MARKER + JSON.stringify(report));
}

/** B over A per pair: IOPS, or mean latency for a latency workload. */
function pairRatios(report: AbReport): number[] {
  const latency = WORKLOADS.find((w) => w.name === report.workload)?.latency ?? false;
  const pairs = [...new Set(report.runs.map((r) => r.pair))];
  return pairs.flatMap((p) => {
    const a = report.runs.find((r) => r.pair === p && r.build === 'a');
    const b = report.runs.find((r) => r.pair === p && r.build === 'b');
    if (!a || !b) return [];
    return [latency ? b.meanUs / a.meanUs : b.iops / a.iops];
  });
}

async function host(): Promise<number> {
  for (const side of ['--a', '--b']) {
    const dir = option(side);
    if (!dir || !existsSync(join(dir, 'dist/bundle/cli/main.js'))) {
      console.error(`ab: ${side} must be a built checkout (with dist/bundle/cli/main.js)`);
      return 2;
    }
    own[own.indexOf(side) + 1] = resolve(dir);
  }
  const assets = await prepareVm(option('--kernel', '7.3')!);
  let report: AbReport | undefined;
  const result = await runInVm(assets, {
    ...vmSettingsFromEnv(),
    argv: [
      process.execPath,
      join(REPO_ROOT, 'dist/bench/ab.js'),
      '--in-guest',
      ...own,
      '--',
      ...addArgs,
    ],
    cwd: REPO_ROOT,
    env: guestEnv(),
    onStdoutLine: (line) => {
      if (!line.startsWith(MARKER)) return true;
      report = JSON.parse(line.slice(MARKER.length)) as AbReport;
      return false;
    },
  });
  if (!report) {
    console.error(`ab: no report came back${result.failure ? `: ${result.failure}` : ''}`);
    return result.status || 1;
  }
  const ratios = pairRatios(report);
  const what = WORKLOADS.find((w) => w.name === report!.workload)?.latency
    ? 'mean latency'
    : 'IOPS';
  console.log(
    `ab: ${report.workload} on Linux ${report.kernel}, B over A (${what}), per pair: ` +
      `${ratios.map((r) => r.toFixed(2)).join(' ')}; median ${median(ratios).toFixed(2)}`,
  );
  const dir = join(REPO_ROOT, 'bench-results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `ab-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ ...report, ratios }, null, 2) + '\n');
  console.log(`ab: wrote ${file}`);
  return result.status;
}

if (own.includes('--in-guest')) guest();
else process.exitCode = await host();
