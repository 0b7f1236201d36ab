/**
 * The first kernel test: the machine the kernel suite runs on (the test VM, or a host with ublk)
 * has what every other kernel test assumes: a kernel >= 6.0 with the ublk driver loaded and
 * /dev/ublk-control, root, and null_blk and loop available to modprobe.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { release } from 'node:os';
import { test } from 'node:test';

function modprobe(...args: string[]): { status: number | null; output: string } {
  const r = spawnSync('modprobe', args, {
    encoding: 'utf8',
    env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` },
  });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ?? ''}`.trim() };
}

test('runs as root (control commands need CAP_SYS_ADMIN on 6.1)', () => {
  assert.equal(process.getuid?.(), 0);
});

test('the kernel is 6.0 or newer', () => {
  const m = /^(\d+)\.(\d+)/.exec(release());
  assert.ok(m, `uname -r = ${release()}`);
  assert.ok(Number(m[1]) >= 6, `uname -r = ${release()}`);
});

test('modprobe ublk_drv gives /dev/ublk-control', () => {
  if (!existsSync('/dev/ublk-control')) {
    const r = modprobe('ublk_drv');
    assert.equal(r.status, 0, `modprobe ublk_drv: ${r.output}`);
  }
  assert.ok(existsSync('/dev/ublk-control'), '/dev/ublk-control is missing');
  assert.ok(statSync('/dev/ublk-control').isCharacterDevice());
});

test('the ublk_drv module is loaded', () => {
  // /sys/module/<name> exists for a loaded module (and for a built-in one with parameters).
  assert.ok(existsSync('/sys/module/ublk_drv'), '/sys/module/ublk_drv is missing');
  const modules = readFileSync('/proc/modules', 'utf8');
  const builtin = !/^ublk_drv /m.test(modules);
  if (!builtin) {
    assert.equal(readFileSync('/sys/module/ublk_drv/initstate', 'utf8').trim(), 'live');
  }
});

test('null_blk and loop can be loaded with modprobe', () => {
  for (const name of ['null_blk', 'loop']) {
    // A dry run resolves the module and its dependencies without loading it, so that tests which
    // load it with their own parameters still get to.
    const r = modprobe('--dry-run', '--first-time', name);
    const loaded = existsSync(`/sys/module/${name}`);
    assert.ok(r.status === 0 || loaded, `modprobe --dry-run ${name}: ${r.output}`);
  }
});
