/**
 * How a target reaches the queue threads, which import it by source: built-in names through the
 * registry (src/targets), module paths and URLs, and Target objects that say where they come from.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createDevice, isUserError } from '../../src/index.js';
import { defineTarget } from '../../src/targets/define.js';
import loopTarget from '../../src/targets/loop.js';
import nullTarget from '../../src/targets/null.js';
import cowFilter from '../../src/targets/filters/cow.js';
import delayFilter from '../../src/targets/filters/delay.js';
import {
  BUILT_IN_FILTERS,
  BUILT_IN_TARGETS,
  filterSource,
  targetSource,
  withBuiltInTarget,
} from '../../src/targets/registry.js';
import { withFilters } from '../../src/ublk/target/filter.js';
import { loadTarget, resolveTarget } from '../../src/ublk/target/loader.js';
import { parseStackSource } from '../../src/ublk/target/module-source.js';
import recorded, { notTheDefault } from './support/recorded-target.js';

const RECORDED_URL = new URL('./support/recorded-target.js', import.meta.url).href;

test('registry: built-in names are their modules’ URLs; unknown names are refused with the list', async () => {
  assert.equal(await withBuiltInTarget('loop'), BUILT_IN_TARGETS.loop);
  assert.equal(targetSource('null'), BUILT_IN_TARGETS.null);
  assert.equal(filterSource('cow'), BUILT_IN_FILTERS.cow);
  assert.ok(fileURLToPath(BUILT_IN_TARGETS.loop).endsWith('/targets/loop.js'));
  await assert.rejects(
    withBuiltInTarget('lop'),
    /^UserError: unknown target type 'lop': use null, loop, mem, nbd, or a path to a target module/,
  );
  assert.throws(() => filterSource('cowz'), /unknown filter 'cowz': use cow, delay, error/);
  assert.equal(await withBuiltInTarget('./x.js'), './x.js', 'a path is the loader’s');
  const url = new URL(RECORDED_URL);
  assert.equal(await withBuiltInTarget(url), url);
});

test('registry: a built-in export is its module’s URL; a withFilters stack of them a stack source', async () => {
  assert.equal(await withBuiltInTarget(loopTarget), BUILT_IN_TARGETS.loop);
  const stack = withFilters(nullTarget, [
    cowFilter,
    { filter: delayFilter, args: { rdelay: '1' } },
  ]);
  const source = await withBuiltInTarget(stack);
  assert.deepEqual(parseStackSource(String(source)), {
    target: BUILT_IN_TARGETS.null,
    filters: [BUILT_IN_FILTERS.cow, { source: BUILT_IN_FILTERS.delay, args: { rdelay: '1' } }],
  });
  const loaded = await loadTarget(String(source));
  assert.equal(loaded.name, 'null');
  assert.ok(Object.hasOwn(loaded.options ?? {}, 'cow_file'), 'the unbound filter’s options');
  assert.ok(!Object.hasOwn(loaded.options ?? {}, 'rdelay'), 'the bound one’s are given');
  // Stacked again: the inner stack's parts are found through it.
  const outer = await withBuiltInTarget(withFilters(stack, [delayFilter]));
  assert.equal(parseStackSource(String(outer))?.target, source);
});

test('a target defined with its import.meta.url is found from there, alone and in a stack', async () => {
  assert.deepEqual(await resolveTarget(recorded), { source: RECORDED_URL, target: recorded });
  assert.equal(await withBuiltInTarget(recorded), RECORDED_URL);
  const stack = await withBuiltInTarget(withFilters(recorded, [cowFilter]));
  assert.deepEqual(parseStackSource(String(stack)), {
    target: RECORDED_URL,
    filters: [BUILT_IN_FILTERS.cow],
  });
  assert.throws(() => defineTarget(nullTarget, 'targets/null.js'), /import\.meta\.url/);
});

test('an object of no known module is refused in one line saying what to do', async () => {
  const loose = defineTarget({ name: 'loose', setup: () => ({ size: 512 }), queue: () => ({}) });
  const refusals: [unknown, RegExp][] = [
    [
      loose,
      /target 'loose' does not say which module it comes from.*defineTarget\(\{ \.\.\. \}, import\.meta\.url\), or pass that module's path$/,
    ],
    [{ ...recorded }, /target 'recorded' does not say which module/],
    [
      notTheDefault,
      /target 'elsewhere' is not the default export of .*recorded-target\.js.*: export it as default$/,
    ],
    [
      withFilters(nullTarget, [{ name: 'inline' }]),
      /filter 'inline' does not say which module.*defineFilter/,
    ],
  ];
  for (const [target, message] of refusals) {
    const err = await withBuiltInTarget(target as never).then(
      () => assert.fail('accepted'),
      (e: unknown) => e,
    );
    assert.ok(isUserError(err), String(err));
    assert.match((err as Error).message, message);
    assert.ok(!(err as Error).message.includes('\n'), 'one line');
  }
  // src/ublk knows no built-in: only the layers above turn loopTarget into its URL.
  await assert.rejects(resolveTarget(loopTarget), /target 'loop' does not say which module/);
  // Refused before any kernel command.
  await assert.rejects(createDevice({ target: loose }), /does not say which module/);
  await assert.rejects(createDevice({ target: 'nope' }), /unknown target type 'nope'/);
});
