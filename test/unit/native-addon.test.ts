/**
 * How the package finds its native addons (src/native-addon.ts): by binding.gyp target name, in
 * build/Release or among the prebuilds scripts/prebuild.ts makes (run by `npm run compile`).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { arch, platform } from 'node:process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadNativeAddon } from '../../src/native-addon.js';

// This file runs as dist/test/unit/native-addon.test.js.
const ROOT = new URL('../../../', import.meta.url);

test('compile leaves an N-API prebuild of sys for this platform, and it loads', () => {
  const prebuild = fileURLToPath(
    new URL(`prebuilds/${platform}-${arch}/sys.napi.glibc.node`, ROOT),
  );
  assert.ok(existsSync(prebuild), `${prebuild} exists`);
  const sys = createRequire(import.meta.url)(prebuild) as Record<string, unknown>;
  assert.equal(typeof sys.ioUringSetup, 'function');
});

test('an addon in neither place is refused, naming both and the way to build it', () => {
  assert.throws(
    () => loadNativeAddon('no-such-addon'),
    (err: Error) =>
      err.message.includes(`no native addon "no-such-addon" for ${platform}-${arch}`) &&
      err.message.includes('build/Release/no-such-addon.node') &&
      err.message.includes(`prebuilds/${platform}-${arch}/no-such-addon.napi.`) &&
      err.message.includes('npm rebuild ublk-ts'),
  );
});
