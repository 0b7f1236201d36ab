/**
 * `ublk help` against the parsers: every command and option a parser takes is in the help, and
 * every one the help lists is taken. The parsers are driven for real, with probe arguments beyond
 * the command table, so that an option a parser learns outside the table fails here.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  parseAddArgs,
  parseChownArgs,
  parseDelArgs,
  parseFeaturesArgs,
  parseListArgs,
  parseQuiesceArgs,
  parseRecoverArgs,
  parseUpdateSizeArgs,
} from '../../src/cli/args.js';
import { COMMANDS, type CommandName } from '../../src/cli/commands.js';
import { controlProblem, ublkDriver, type ControlAccess } from '../../src/cli/control-access.js';
import { commandUsage, helpCommand, targetUsage, usage } from '../../src/cli/help.js';
import { loadFilter, loadTarget } from '../../src/ublk/target/loader.js';
import {
  BUILT_IN_FILTERS,
  BUILT_IN_TARGETS,
  filterSource,
  targetSource,
} from '../../src/targets/registry.js';

// This file runs as dist/test/unit/cli-help.test.js.
const CLI = fileURLToPath(new URL('../../bundle/cli/main.js', import.meta.url));
const cli = (...args: string[]) =>
  spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

/** Each command's real parser, the way main.ts calls it (add: its standard options). */
const PARSERS: Record<CommandName, (argv: string[]) => unknown> = {
  add: (argv) => parseAddArgs(['-t', 'null', ...argv], {}),
  del: parseDelArgs,
  list: (argv) => parseListArgs(argv, {}),
  recover: parseRecoverArgs,
  quiesce: parseQuiesceArgs,
  update_size: parseUpdateSizeArgs,
  features: parseFeaturesArgs,
  chown: parseChownArgs,
  help: helpCommand,
};

/** Option names a parser might come to take: the table's, ublksrv's, kublk's, and likely ones. */
const PROBE_NAMES = [
  ...new Set([
    ...Object.values(COMMANDS).flatMap((c) => Object.keys(c.options)),
    ...['all', 'async', 'safe', 'json', 'verbose', 'size', 'number', 'type', 'help', 'version'],
    ...['queues', 'depth', 'queue', 'cpuset', 'eventfd', 'recovery', 'force', 'quiet', 'dev_id'],
    ...['zerocopy', 'zero_copy', 'zc', 'auto_zc', 'manual_zc', 'no_auto_zc', 'auto_zc_fallback'],
    ...['usercopy', 'user_copy', 'batch', 'batch-io', 'batch_io', 'shmem_zc', 'per_io_tasks'],
    ...['nthreads', 'io_threads', 'threads', 'seq_tags', 'integrity', 'unprivileged', 'filter'],
    ...['no_auto_part_scan', 'auto_part_scan', 'foreground', 'daemon', 'start_empty', 'debug'],
    ...['debug_mask', 'max_io_buf_bytes', 'uring_comp', 'need_get_data', 'get_data', 'data_path'],
    ...['user_recovery', 'user_recovery_reissue', 'user_recovery_fail_io', 'safe_stop', 'file'],
  ]),
];
const PROBE_LETTERS = [...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'];

/** Whether the parser knows the option: anything but "Unknown option" means it does. */
async function takes(command: CommandName, arg: string): Promise<boolean> {
  try {
    await PARSERS[command]([arg]);
    return true;
  } catch (err) {
    return !/Unknown option/.test((err as Error).message);
  }
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');

/** Whether a command's usage lists an option: `-X, ` or `--name` as a word. */
function lists(text: string, arg: string): boolean {
  const pattern = arg.startsWith('--')
    ? `(^|[\\s\\[|,])${escape(arg)}(?=[\\s\\]=]|\\.\\.\\.|$)`
    : `(^|[\\s\\[])${escape(arg)}(?=[,\\s\\]])`;
  return new RegExp(pattern, 'm').test(text);
}

test('every option a parser takes is in its command usage, and every one listed is taken', async () => {
  for (const command of Object.keys(COMMANDS) as CommandName[]) {
    const text = commandUsage(command);
    assert.ok(usage().includes(text), `ublk help has ${command}'s usage`);
    const probes = [...PROBE_NAMES.map((n) => `--${n}`), ...PROBE_LETTERS.map((l) => `-${l}`)];
    for (const arg of probes) {
      const taken = await takes(command, arg);
      if (taken) assert.ok(lists(text, arg), `ublk ${command} takes ${arg}: not in its help`);
    }
    for (const [name, option] of Object.entries(COMMANDS[command].options)) {
      assert.ok(await takes(command, `--${name}`), `${command} --${name} is listed, not taken`);
      if ('short' in option) {
        assert.ok(await takes(command, `-${option.short}`), `${command} -${option.short}`);
      }
    }
  }
});

test('every command the CLI takes is in ublk help, and every one listed is taken', () => {
  const help = cli('help');
  assert.equal(help.status, 0, help.stderr);
  assert.equal(help.stdout, usage());
  const words = [
    ...Object.keys(COMMANDS),
    ...['stop', 'start', 'set_affinity', 'show', 'status', 'info', 'resize', 'update-size'],
    ...['daemon', 'serve', 'version', 'recovery', 'delete', 'remove', 'rm', 'ls', 'feature'],
    ...['start_user_recovery', 'end_user_recovery', 'targets', 'filters', 'kill', 'vm', 'run'],
    ...['-v', '--version', '-h', '--help', '-V', '-?', '--usage', 'usage'],
  ];
  for (const word of words) {
    // A probe option no command has: a known command fails on it, or on what it misses, before
    // anything is done; only an unknown command says so.
    const r = cli(word, '--no-such-probe-option');
    const taken = !/unknown command/.test(r.stderr);
    const listed = new RegExp(`^ublk (.* )?${escape(word)}( |$)`, 'm').test(help.stdout);
    assert.equal(listed, taken, `'ublk ${word}': taken ${taken}, listed in help ${listed}`);
  }
});

test('ublk COMMAND --help prints that command alone; add -t TYPE --help adds its options', () => {
  for (const command of Object.keys(COMMANDS) as CommandName[]) {
    if (command === 'help') continue;
    const r = cli(command, '--help');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, commandUsage(command));
  }
  const r = cli('add', '-t', 'loop', '--filter', 'cow', '-h');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ublk add -t TYPE/);
  assert.match(r.stdout, /\n\t-f, --file VALUE +backing file/);
  assert.match(r.stdout, /\n\t {4}--cow_file VALUE /);
});

test('ublk help -t TYPE and --filter FILTER list every option of each built-in', async () => {
  for (const type of Object.keys(BUILT_IN_TARGETS)) {
    const target = await loadTarget(targetSource(type));
    const text = await targetUsage(type, []);
    assert.equal(await helpCommand(['-t', type]), text);
    for (const [name, spec] of Object.entries(target.options ?? {})) {
      assert.ok(lists(text, `--${name}`), `help -t ${type} lists --${name}`);
      if (spec.short) assert.ok(lists(text, `-${spec.short}`), `help -t ${type}: -${spec.short}`);
    }
  }
  for (const name of Object.keys(BUILT_IN_FILTERS)) {
    const filter = await loadFilter(filterSource(name));
    const text = await helpCommand(['--filter', name]);
    for (const option of Object.keys(filter.options ?? {})) {
      assert.ok(lists(text, `--${option}`), `help --filter ${name} lists --${option}`);
    }
  }
  await assert.rejects(helpCommand(['--bogus']), /help: Unknown option '--bogus'/);
});

test('add: the data-path flags of the table land in the parse result', () => {
  const add = (...argv: string[]) => parseAddArgs(['-t', 'null', ...argv], {});
  assert.equal(add('--manual_zc').dataPath, 'manual-zero-copy');
  assert.equal(add('-z').dataPath, 'zero-copy');
  assert.equal(add('--auto_zc').dataPath, 'auto-zero-copy');
  assert.equal(add('--no_auto_zc').dataPath, 'copy');
  assert.equal(add('--usercopy').dataPath, 'user-copy');
  assert.equal(add('-b').batchIo, true);
  assert.equal(add().dataPath, 'auto');
});

const ACCESS: ControlAccess = {
  controlExists: true,
  mayControl: true,
  driver: 'loaded',
  release: '6.18.1-test',
  checkout: true,
};

test('no ublk on the host: one line that says what to do, npm run vm in a checkout', () => {
  const problem = (access: Partial<ControlAccess>, argv = ['list']) =>
    controlProblem(argv, { ...ACCESS, ...access });
  assert.equal(problem({}), undefined);

  const none = problem({ controlExists: false, driver: 'none' }, [
    'add',
    '-t',
    'loop',
    '-f',
    'a b',
  ]);
  assert.match(none!, /^no \/dev\/ublk-control, and this kernel \(6\.18\.1-test\) has no ublk/);
  assert.match(none!, /'modprobe ublk_drv' cannot help/);
  assert.match(none!, /CONFIG_BLK_DEV_UBLK/);
  assert.match(
    none!,
    /; in this repository, run it in a VM whose kernel has ublk: npm run vm -- ublk add -t loop -f 'a b'$/,
  );

  const module = problem({ controlExists: false, driver: 'module' });
  assert.match(module!, /load the ublk driver with 'modprobe ublk_drv'/);
  assert.match(
    module!,
    /; or, in this repository, run it in a VM whose kernel has ublk: npm run vm -- ublk list$/,
  );

  const loaded = problem({ controlExists: false, driver: 'loaded' });
  assert.match(loaded!, /ublk_drv loaded: is devtmpfs mounted on \/dev\?/);

  const installed = problem({ controlExists: false, driver: 'none', checkout: false });
  assert.doesNotMatch(installed!, /npm run vm/);

  const user = problem({ mayControl: false }, ['del', '-n', '0']);
  assert.match(user!, /^ublk del needs root .*: use sudo; .*--unprivileged/);
  assert.match(
    user!,
    /; or, in this repository, run it as root in a VM: npm run vm -- ublk del -n 0$/,
  );
  for (const line of [none, module, loaded, installed, user]) assert.doesNotMatch(line!, /\n/);
});

test("ublk_drv's place, read from /sys/module and /lib/modules as modprobe would", () => {
  const root = mkdtempSync(join(tmpdir(), 'ublk-driver-'));
  try {
    assert.equal(ublkDriver('1.0', root), 'none', 'no /lib/modules/RELEASE');
    const dir = join(root, 'lib/modules/1.0');
    mkdirSync(dir, { recursive: true });
    assert.equal(ublkDriver('1.0', root), 'module', 'no depmod lists: modprobe may know');
    writeFileSync(join(dir, 'modules.dep'), 'kernel/drivers/block/loop.ko.xz:\n');
    assert.equal(ublkDriver('1.0', root), 'none');
    writeFileSync(join(dir, 'modules.dep'), 'kernel/drivers/block/ublk_drv.ko.xz:\n');
    assert.equal(ublkDriver('1.0', root), 'module');
    writeFileSync(join(dir, 'modules.builtin'), 'kernel/drivers/block/ublk_drv.ko\n');
    assert.equal(ublkDriver('1.0', root), 'built-in');
    mkdirSync(join(root, 'sys/module/ublk_drv'), { recursive: true });
    assert.equal(ublkDriver('1.0', root), 'loaded');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('on this host without ublk, list, del and add fail with that one line, exit 1', (t) => {
  if (existsSync('/dev/ublk-control')) {
    t.skip('this host has ublk');
    return;
  }
  for (const args of [['list'], ['del', '-n', '0'], ['add', '-t', 'null'], ['features']]) {
    const r = cli(...args);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^ublk: no \/dev\/ublk-control/);
    assert.ok(
      lines[0].endsWith(`: npm run vm -- ublk ${args.join(' ')}`),
      `names the VM command: ${lines[0]}`,
    );
  }
  // A bad option is told before the host is.
  const r = cli('list', '--bogus');
  assert.equal(r.status, 1);
  assert.equal(r.stderr, "ublk: list: Unknown option '--bogus'; run 'ublk help' for usage\n");
});
