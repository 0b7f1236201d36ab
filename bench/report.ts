/**
 * What a bench run leaves behind: bench-results/<stamp>.json (every fio run) and .md (the tables),
 * and, regenerated from that run, docs/performance-results.md and docs/performance.svg (each of
 * our devices as a ratio to its kernel baseline and to the C server in the same mode).
 *
 * `node dist/bench/report.js bench-results/<stamp>.json` regenerates the docs from a saved run.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT } from '../scripts/lib/common.js';
import { formatTable, summarize, WORKLOADS, type BenchReport, type Summary } from './workloads.js';

/** A run as saved: when, from which commit, and one report per kernel. */
export interface BenchRun {
  date: string;
  commit: string;
  /** The host's 1-minute load average as the run started and ended: how busy the machine was. */
  hostLoad?: [number, number];
  reports: BenchReport[];
}

/** Where the chart's ratios come from: our devices, with a kernel baseline or a C peer. */
interface Bar {
  workload: string;
  ratio: number;
}
interface ChartRow {
  device: string;
  vsKernel: Bar[];
  vsC: Bar[];
}

const isLatency = (workload: string) =>
  WORKLOADS.find((w) => w.name === workload)?.latency ?? false;

/**
 * Every ratio as "higher is better": a latency ratio (ours over theirs) is turned over, so that
 * 1 means as fast as the other, 0.5 half as fast, on every workload alike.
 */
const speed = (s: Summary, ratio: number | undefined) =>
  ratio === undefined || ratio <= 0 ? undefined : isLatency(s.workload) ? 1 / ratio : ratio;

/** Our devices' rows, in the order they ran; the C server is any peer whose name starts kublk. */
export function chartRows(report: BenchReport): ChartRow[] {
  const rows = new Map<string, ChartRow>();
  for (const s of summarize(report)) {
    if (!s.device.startsWith('ublk-ts')) continue;
    const vsKernel = speed(s, s.ratio);
    const vsC = s.peer?.startsWith('kublk') ? speed(s, s.peerRatio) : undefined;
    if (vsKernel === undefined && vsC === undefined) continue;
    const row = rows.get(s.device) ?? { device: s.device, vsKernel: [], vsC: [] };
    rows.set(s.device, row);
    if (vsKernel !== undefined) row.vsKernel.push({ workload: s.workload, ratio: vsKernel });
    if (vsC !== undefined) row.vsC.push({ workload: s.workload, ratio: vsC });
  }
  return [...rows.values()];
}

/** Two decimals, three below 0.1 (so that a small ratio does not read as 0.00). */
function ratioText(ratio: number | undefined): string {
  if (ratio === undefined) return '-';
  return ratio.toFixed(ratio < 0.095 ? 3 : 2);
}

const COLORS = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#b07aa1'];
const colorOf = (workload: string) =>
  COLORS[
    Math.max(
      0,
      WORKLOADS.findIndex((w) => w.name === workload),
    ) % COLORS.length
  ];
const esc = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

const describe = (r: BenchReport) =>
  r.quick
    ? `quick run: ${r.rounds} round of ${r.runtimeSec} s, a check rather than a measurement`
    : `${r.rounds} rounds of ${r.runtimeSec} s, medians`;

/**
 * The chart: per kernel, one row per device of ours, one bar per workload; the left panel against
 * the kernel's own device (null_blk, loop, nbd), the right against kublk in the same mode.
 */
export function renderChart(run: BenchRun): string {
  const width = 960;
  const labelW = 220;
  const panelW = (width - labelW - 40) / 2;
  const bar = 7;
  const out: string[] = [];
  let y = 20;
  const text = (x: number, ty: number, s: string, attrs = '') =>
    out.push(`<text x="${x}" y="${ty}"${attrs}>${esc(s)}</text>`);
  text(
    10,
    y,
    `ublk-ts against the kernel and the C server (kublk): higher is better, 1 = as fast`,
    ' class="title"',
  );
  y += 18;
  text(
    10,
    y,
    `${run.date}, commit ${run.commit}. The QD1 latency bar is their latency over ours.`,
    ' class="note"',
  );
  y += 18;
  // The legend: one swatch per workload.
  let lx = 10;
  for (const w of WORKLOADS) {
    out.push(`<rect x="${lx}" y="${y - 9}" width="10" height="10" fill="${colorOf(w.name)}"/>`);
    const label = w.latency ? `${w.name} (latency)` : w.name;
    text(lx + 14, y, label, ' class="note"');
    lx += 14 + label.length * 6.2 + 16;
  }
  y += 16;
  for (const report of run.reports) {
    const rows = chartRows(report);
    if (rows.length === 0) continue;
    const all = rows.flatMap((r) => [...r.vsKernel, ...r.vsC].map((b) => b.ratio));
    const max = Math.min(3, Math.max(1.5, Math.ceil(Math.max(...all) * 2) / 2));
    const scale = (v: number) => (Math.min(v, max) / max) * (panelW - 40);
    y += 14;
    text(10, y, `Linux ${report.kernel} (${describe(report)})`, ' class="kernel"');
    y += 18;
    const panels = [labelW, labelW + panelW + 20];
    text(panels[0], y, 'against the kernel (null_blk, loop, nbd)', ' class="head"');
    const hasC = rows.some((r) => r.vsC.length > 0);
    text(
      panels[1],
      y,
      hasC ? 'against kublk in the same mode' : 'against kublk: it does not run on this kernel',
      ' class="head"',
    );
    y += 8;
    const top = y;
    for (const [i, row] of rows.entries()) {
      const n = Math.max(row.vsKernel.length, row.vsC.length, 1);
      const h = n * (bar + 1) + 8;
      if (i % 2 === 0) {
        out.push(`<rect x="5" y="${y}" width="${width - 10}" height="${h}" fill="#f4f6f8"/>`);
      }
      text(
        labelW - 8,
        y + h / 2 + 4,
        row.device.replace(/^ublk-ts /, ''),
        ' class="row" text-anchor="end"',
      );
      if (hasC && row.vsC.length === 0) {
        text(panels[1], y + h / 2 + 4, 'no kublk counterpart', ' class="note"');
      }
      for (const [p, bars] of [row.vsKernel, row.vsC].entries()) {
        for (const [j, b] of bars.entries()) {
          const by = y + 4 + j * (bar + 1);
          const w = scale(b.ratio);
          out.push(
            `<rect x="${panels[p]}" y="${by}" width="${w.toFixed(1)}" height="${bar}" fill="${colorOf(b.workload)}"><title>${esc(`${row.device}, ${b.workload}: ${ratioText(b.ratio)}`)}</title></rect>`,
          );
          text(panels[p] + w + 3, by + bar - 0.5, ratioText(b.ratio), ' class="value"');
        }
      }
      y += h;
    }
    // The scale: a line every 0.5, the one at 1 (as fast) darker.
    for (const x0 of hasC ? panels : panels.slice(0, 1)) {
      for (let v = 0; v <= max + 1e-9; v += 0.5) {
        const x = x0 + scale(v);
        const one = Math.abs(v - 1) < 1e-9;
        out.push(
          `<line x1="${x}" y1="${top}" x2="${x}" y2="${y}" stroke="${one ? '#333' : '#ccc'}" stroke-width="${one ? 1.2 : 0.6}"${one ? '' : ' stroke-dasharray="3,3"'}/>`,
        );
        text(x, y + 12, v.toFixed(1), ' class="value" text-anchor="middle"');
      }
    }
    y += 20;
  }
  const height = y + 10;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    '<style>.title{font-size:15px;font-weight:bold}.kernel{font-size:13px;font-weight:bold}.head{font-size:11px;font-weight:bold;fill:#444}.note{font-size:11px;fill:#444}.row{font-size:11px}.value{font-size:9px;fill:#333}</style>',
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}

const cell = (bars: Bar[], workload: string) =>
  ratioText(bars.find((b) => b.workload === workload)?.ratio);

/** One table per kernel: our devices against the kernel and against kublk, every workload. */
export function ratioTable(report: BenchReport): string {
  const rows = chartRows(report);
  const workloads = WORKLOADS.filter((w) =>
    rows.some((r) => [...r.vsKernel, ...r.vsC].some((b) => b.workload === w.name)),
  );
  const hasC = rows.some((r) => r.vsC.length > 0);
  const head = ['device', ...workloads.map((w) => (w.latency ? `${w.name} (latency)` : w.name))];
  const both = (r: ChartRow, w: string) =>
    hasC ? `${cell(r.vsKernel, w)} / ${cell(r.vsC, w)}` : cell(r.vsKernel, w);
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.device} | ${workloads.map((w) => both(r, w.name)).join(' | ')} |`),
  ];
  return lines.join('\n');
}

/** docs/performance-results.md: what ran, the chart, the ratio tables, then every figure. */
export function renderResults(run: BenchRun, jsonPath: string): string {
  const kernels = run.reports.map((r) => r.kernel).join(' and ');
  const out = [
    '<!-- Written by `npm run bench` (bench/report.ts) from the run named below. Do not edit by hand:',
    '     `node dist/bench/report.js bench-results/<stamp>.json` regenerates it from a saved run. -->',
    '',
    '# Benchmark results',
    '',
    `The latest \`npm run bench\`: ${run.date}, commit \`${run.commit}\`, Linux ${kernels}` +
      (run.hostLoad
        ? `, the host's load average ${run.hostLoad[0].toFixed(1)} at the start and ` +
          `${run.hostLoad[1].toFixed(1)} at the end (2 cores)`
        : '') +
      '. ' +
      `Every fio run: [${jsonPath}](${jsonPath}). How the bench works and how to read it: ` +
      '[performance.md](performance.md).',
    '',
    ...(run.reports.some((r) => r.quick)
      ? [
          '> **A quick run** (`--quick`: one round of 2 s, fewer devices). It shows that the bench ' +
            'works and roughly where things stand; decide nothing by it.',
          '',
        ]
      : []),
    '![Each mode of ours as a ratio to the kernel and to kublk](performance.svg)',
    '',
  ];
  for (const report of run.reports) {
    const hasC = chartRows(report).some((r) => r.vsC.length > 0);
    const what = hasC
      ? "**against the kernel's device / against kublk in the same mode** (kublk has no mem " +
        'or nbd target)'
      : "**against the kernel's device** (kublk does not run on this kernel)";
    const how = describe(report);
    out.push(
      `## Linux ${report.kernel}`,
      '',
      `Ratios, higher is better (1.00 = as fast), ${what}; for latency, theirs over ours; "-" ` +
        `where there is nothing to compare with. ${how[0].toUpperCase()}${how.slice(1)}.`,
      '',
      ratioTable(report),
      '',
      '<details><summary>Every figure</summary>',
      '',
      formatTable(report),
      '</details>',
      '',
    );
  }
  return out.join('\n');
}

/** The checkout's commit (`-dirty` with changes not committed), as the bench starts. */
export function gitCommit(root: string): string {
  const r = spawnSync('git', ['describe', '--always', '--dirty', '--abbrev=10'], {
    cwd: root,
    encoding: 'utf8',
  });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

/** Writes the run's files and regenerates the docs from it; returns the paths written. */
export function writeRun(
  root: string,
  reports: BenchReport[],
  {
    commit = gitCommit(root),
    docs = true,
    hostLoad = undefined as [number, number] | undefined,
  } = {},
  now = new Date(),
): string[] {
  const run: BenchRun = {
    hostLoad,
    date: now
      .toISOString()
      .replace(/:\d\d\.\d+Z$/, ' UTC')
      .replace('T', ' '),
    commit,
    reports,
  };
  const dir = join(root, 'bench-results');
  mkdirSync(dir, { recursive: true });
  const stamp = now.toISOString().replace(/[:.]/g, '-');
  const json = join(dir, `${stamp}.json`);
  writeFileSync(json, JSON.stringify(run, null, 2) + '\n');
  const md = join(dir, `${stamp}.md`);
  writeFileSync(
    md,
    `# Bench run ${run.date}, commit ${run.commit}\n\n` + reports.map(formatTable).join('\n'),
  );
  return [json, md, ...(docs ? writeDocs(root, run, json) : [])];
}

/** docs/performance-results.md and docs/performance.svg from one run. */
export function writeDocs(root: string, run: BenchRun, jsonPath: string): string[] {
  const docs = join(root, 'docs');
  mkdirSync(docs, { recursive: true });
  const results = join(docs, 'performance-results.md');
  const svg = join(docs, 'performance.svg');
  writeFileSync(results, renderResults(run, relative(docs, jsonPath)));
  writeFileSync(svg, renderChart(run));
  return [results, svg];
}

/** A saved run, as `npm run bench` writes it. */
export function loadRun(path: string): BenchRun {
  return JSON.parse(readFileSync(path, 'utf8')) as BenchRun;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const path = process.argv[2];
  if (!path) {
    console.error('usage: node dist/bench/report.js bench-results/<stamp>.json');
    process.exitCode = 2;
  } else {
    for (const f of writeDocs(REPO_ROOT, loadRun(path), resolve(path))) {
      console.log(`wrote ${relative(process.cwd(), f)}`);
    }
  }
}
