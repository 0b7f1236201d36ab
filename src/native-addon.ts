import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { arch, platform } from 'node:process';
import { fileURLToPath } from 'node:url';

// The package root, from this module compiled to dist/src/ (or bundled to dist/bundle/, whose
// import.meta.url names the same depth).
const ROOT = new URL('../../', import.meta.url);

/**
 * node-gyp-build's test for musl, so that the prebuild it accepted at install time is the one
 * loaded; scripts/prebuild.ts names the prebuilds by it.
 */
export const libc = (): string => (existsSync('/etc/alpine-release') ? 'musl' : 'glibc');

/**
 * Loads a native addon by its binding.gyp target name, where node-gyp-build (the package's install
 * step) leaves it: a from-source build in build/Release wins, as node-gyp-build's own loader has
 * it, else the N-API prebuild the tarball carries for this platform (scripts/prebuild.ts names it
 * `<target>.napi.<libc>.node`). node-gyp-build's loader is not used: it takes the first .node file
 * it finds, and the package may carry more than one addon.
 */
export function loadNativeAddon<T>(target: string): T {
  const candidates = [
    `build/Release/${target}.node`,
    `prebuilds/${platform}-${arch}/${target}.napi.${libc()}.node`,
  ].map((path) => fileURLToPath(new URL(path, ROOT)));
  const found = candidates.find((path) => existsSync(path));
  if (found === undefined) {
    throw new Error(
      `ublk-ts: no native addon "${target}" for ${platform}-${arch} (looked for ${candidates.join(', ')}); \`npm rebuild ublk-ts\` builds it from source (with python3, make and a C compiler)`,
    );
  }
  return createRequire(import.meta.url)(found) as T;
}
