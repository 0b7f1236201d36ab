import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  formatTable,
  median,
  summarize,
  type BenchReport,
  type Run,
} from '../../bench/workloads.js';
import { chartRows, ratioTable, renderChart, renderResults } from '../../bench/report.js';

const run = (device: string, workload: string, round: number, iops: number, meanUs = 10): Run => ({
  device,
  baseline: device.startsWith('ours') ? 'kernel' : undefined,
  peer: device.startsWith('ours') ? 'c server' : undefined,
  workload,
  round,
  iops,
  mbps: iops / 250,
  meanUs,
  p50us: meanUs - 1,
  p99us: meanUs * 2,
});

const report = (runs: Run[]): BenchReport => ({
  kernel: '6.1.0',
  quick: true,
  runtimeSec: 2,
  rounds: 3,
  runs,
  memory: [
    { device: 'ublk-ts null', queues: 1, rssMiB: 70, ioBufferBudgetMiB: 10 },
    { device: 'ublk-ts null -q 2', queues: 2, rssMiB: 90, ioBufferBudgetMiB: 12 },
    // The per-queue figure comes from the pair measured after the same runs, not the rows above.
    { device: 'null -q 1 lean', queues: 1, rssMiB: 55, ioBufferBudgetMiB: 0, queueStep: true },
    { device: 'null -q 2 lean', queues: 2, rssMiB: 62.5, ioBufferBudgetMiB: 0, queueStep: true },
  ],
});

test('median of odd and even counts', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
});

test('ratios pair the rounds: a baseline that drifts does not skew them', () => {
  const w = '4k randread QD32';
  // The VM got twice as fast in round 3, for both devices alike.
  const runs = [
    run('kernel', w, 1, 1000),
    run('ours', w, 1, 500),
    run('kernel', w, 2, 1100),
    run('ours', w, 2, 550),
    run('kernel', w, 3, 2000),
    run('ours', w, 3, 1000),
  ];
  const [kernel, ours] = summarize(report(runs));
  assert.equal(kernel.iops, 1100);
  assert.equal(kernel.ratio, undefined);
  assert.equal(ours.iops, 550);
  assert.equal(ours.ratio, 0.5);
});

test('latency workloads compare mean latencies, ours over theirs, paired by round', () => {
  const w = '4k randread QD1';
  const runs = [1, 2, 3].flatMap((r) => [
    run('kernel', w, r, 9000, 100 * r),
    run('c server', w, r, 4000, 200 * r),
    run('ours', w, r, 900, 300 * r),
  ]);
  const ours = summarize(report(runs))[2];
  assert.equal(ours.meanUs, 600);
  assert.equal(ours.ratio, 3);
  assert.equal(ours.peerRatio, 1.5);
  const table = formatTable(report(runs));
  assert.match(
    table,
    /\| 4k randread QD1 +\| ours +\| 900 .*\| latency 3\.00x kernel +\| latency 1\.50x c server +\|/,
  );
  assert.match(
    table,
    /Each queue beyond the first: 7\.5 MiB \(null -q 2 lean minus null -q 1 lean, after the same runs/,
  );
});

test('the chart and ratio table show our devices against the kernel and against kublk only', () => {
  const rows = (device: string, baseline: string, peer: string | undefined, iops: number) =>
    ['4k randread QD32', '4k randread QD1'].map((workload): Run => ({
      device,
      baseline,
      peer,
      workload,
      round: 1,
      iops,
      mbps: 1,
      meanUs: 1e6 / iops,
    }));
  const r: BenchReport = {
    ...report([
      ...rows('null_blk', '', undefined, 4000).map((x) => ({ ...x, baseline: undefined })),
      ...rows('kublk null', 'null_blk', undefined, 2000),
      ...rows('ublk-ts null', 'null_blk', 'kublk null', 1000),
      ...rows('peer null', 'null_blk', undefined, 500),
    ]),
    memory: [],
  };
  const chart = chartRows(r);
  assert.deepEqual(
    chart.map((row) => row.device),
    ['ublk-ts null'],
  );
  // Latency is turned over: their mean latency over ours, so higher is better throughout.
  assert.deepEqual(
    chart[0].vsKernel.map((b) => b.ratio),
    [0.25, 0.25],
  );
  assert.deepEqual(
    chart[0].vsC.map((b) => b.ratio),
    [0.5, 0.5],
  );
  assert.match(ratioTable(r), /\| ublk-ts null \| 0\.25 \/ 0\.50 \| 0\.25 \/ 0\.50 \|/);
  const svg = renderChart({ date: '2026-12-07 22:00 UTC', commit: 'abc', reports: [r] });
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="\d+" height="\d+"/);
  assert.match(svg, /Linux 6\.1\.0 \(quick run/);
  assert.match(svg, /<title>ublk-ts null, 4k randread QD1: 0\.25<\/title>/);
  const md = renderResults({ date: 'd', commit: 'c', reports: [r] }, '../bench-results/x.json');
  assert.match(md, /Do not edit by hand/);
  assert.match(md, /\[\.\.\/bench-results\/x\.json\]\(\.\.\/bench-results\/x\.json\)/);
  assert.match(md, /A quick run/);
  assert.match(md, /!\[[^\]]*\]\(performance\.svg\)/);
});
