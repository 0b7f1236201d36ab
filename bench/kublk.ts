/**
 * The C server the benchmark sets beside ours: `kublk`, the kernel's own ublk selftest server
 * (tools/testing/selftests/ublk/ in the kernel source), built on the host from the Debian source
 * package of the kernel the VM boots, against that kernel's UAPI headers and the newest liburing
 * Debian offers, linked statically so that it runs in the guest on the host's own libc.
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { cacheRoot, log, run, runOrFail, UserError } from '../scripts/lib/common.js';
import {
  compareVersions,
  suitePackageRoot,
  suiteVersions,
  unpackedPackages,
} from '../scripts/lib/debian-suites.js';

const SELFTEST = 'tools/testing/selftests/ublk';
/** The oldest liburing kublk builds with (io_uring_prep_uring_cmd and friends). */
const LIBURING_MIN = '2.9';

export type KublkBuild = { path: string } | { missing: string };

function majorMinor(kver: string): string {
  const mm = /^(\d+\.\d+)/.exec(kver)?.[1];
  if (!mm) throw new UserError(`cannot read a major.minor version from ${kver}`);
  return mm;
}

/** The source tarball and UAPI include folder of Linux `mm`: the host's own, else a suite's. */
function kernelSource(mm: string): { tarball: string; uapi: string } {
  const hostTarball = `/usr/src/linux-source-${mm}.tar.xz`;
  const hostHeaders = run('dpkg-query', ['-W', '-f=${Version}', 'linux-libc-dev']).stdout;
  if (existsSync(hostTarball) && hostHeaders.startsWith(`${mm}.`)) {
    return { tarball: hostTarball, uapi: '/usr/include' };
  }
  const source = suitePackageRoot(`linux-source-${mm}`, mm);
  return {
    tarball: join(source, `usr/src/linux-source-${mm}.tar.xz`),
    uapi: join(suitePackageRoot('linux-libc-dev', mm), 'usr/include'),
  };
}

function newestLiburing(): { usr: string; version: string } {
  const version = suiteVersions('liburing-dev')[0];
  if (!version) throw new UserError("Debian's newer suites offer no liburing-dev");
  return { usr: join(unpackedPackages([{ name: 'liburing-dev', version }]), 'usr'), version };
}

/** kublk for the kernel release `kver`, built once into the cache; or why there is none. */
export function buildKublk(kver: string): KublkBuild {
  const mm = majorMinor(kver);
  const { tarball, uapi } = kernelSource(mm);
  const stamp = `${statSync(tarball).size}-${Math.floor(statSync(tarball).mtimeMs)}`;
  const dir = join(cacheRoot(), 'kublk', `${mm}-${stamp}`);
  const binary = join(dir, 'kublk');
  if (existsSync(binary)) return { path: binary };
  if (existsSync(join(dir, 'missing'))) return { missing: `Linux ${mm}'s source has no kublk` };

  const top = `linux-source-${mm}`;
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  log(`extracting ${SELFTEST} from ${tarball}`);
  const r = run('tar', ['-xf', tarball, '-C', tmp, '--wildcards', `${top}/${SELFTEST}/*`]);
  const src = join(tmp, top, SELFTEST);
  if (r.status !== 0 || !existsSync(join(src, 'kublk.c'))) {
    // Linux 6.1 predates the selftest server: remember, so that no later run extracts again.
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'missing'), `${tarball} has no ${SELFTEST}/kublk.c\n`);
    rmSync(tmp, { recursive: true, force: true });
    return { missing: `Linux ${mm}'s source has no kublk` };
  }
  const { usr: liburing, version } = newestLiburing();
  if (compareVersions(version, LIBURING_MIN) < 0) {
    throw new UserError(`kublk needs liburing ${LIBURING_MIN}+; Debian offers ${version}`);
  }
  // Every C file but the standalone utilities the Makefile builds on their own.
  const sources = readdirSync(src).filter((f) => f.endsWith('.c') && f !== 'metadata_size.c');
  log(`building kublk (Linux ${mm}, liburing ${version})`);
  runOrFail(
    'building kublk',
    'gcc',
    [
      '-D_GNU_SOURCE',
      '-O2',
      `-I${uapi}`,
      `-I${join(uapi, 'x86_64-linux-gnu')}`,
      `-I${join(liburing, 'include')}`,
      '-o',
      join(tmp, 'kublk'),
      ...sources,
      join(liburing, 'lib/x86_64-linux-gnu/liburing.a'),
      '-lpthread',
    ],
    { cwd: src },
  );
  rmSync(join(tmp, top), { recursive: true, force: true });
  mkdirSync(join(cacheRoot(), 'kublk'), { recursive: true });
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
  return { path: binary };
}
