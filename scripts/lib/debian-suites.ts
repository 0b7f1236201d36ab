/**
 * Packages of Debian suites newer than the host's (trixie, trixie-backports, sid), fetched from
 * the mirror the host's apt already uses without touching the host's apt configuration: a private
 * sources list and lists folder under the cache, `apt-get download` of an exact version, and
 * `dpkg-deb -x` into a folder of its own. Nothing is installed on the host.
 *
 * Versions are never written down here: a request names a package and a version prefix
 * (`linux-libc-dev`, `7.3`) and gets the newest version the mirror offers that starts with it.
 */
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { cacheRoot, log, run, runOrFail, UserError, which } from './common.js';

/** Suites searched, after the host's own. */
const SUITES = ['trixie', 'trixie-backports', 'sid'];
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
/** Lists older than this are refreshed (a new kernel upload makes the old .debs vanish). */
const LISTS_MAX_AGE_MS = 12 * 3600 * 1000;

function suitesDir(): string {
  return join(cacheRoot(), 'debian-suites');
}

/** The Debian mirror of the host's own apt sources (deb822 or one-line format). */
export function hostMirror(): string {
  const files = ['/etc/apt/sources.list'];
  const parts = '/etc/apt/sources.list.d';
  if (existsSync(parts)) {
    for (const f of readdirSync(parts).sort()) {
      if (/\.(list|sources)$/.test(f)) files.push(join(parts, f));
    }
  }
  for (const f of files) {
    if (!existsSync(f)) continue;
    const text = readFileSync(f, 'utf8');
    const deb822 = /^URIs:\s*(\S+)/m.exec(text);
    const oneLine = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+/m.exec(text);
    for (const uri of [deb822?.[1], oneLine?.[1]]) {
      // The security archive has no kernels of other suites; take the main archive.
      if (uri && /debian\/?$/.test(uri) && !/security/.test(uri)) return uri.replace(/\/$/, '');
    }
  }
  throw new UserError('cannot find a Debian mirror in /etc/apt/sources.list(.d)');
}

function aptOptions(): string[] {
  const dir = suitesDir();
  return [
    '-o',
    `Dir::Etc::SourceList=${join(dir, 'sources.list')}`,
    '-o',
    'Dir::Etc::SourceParts=/dev/null',
    '-o',
    `Dir::State::Lists=${join(dir, 'lists')}`,
    '-o',
    `Dir::Cache=${join(dir, 'apt-cache')}`,
    '-o',
    'Acquire::Retries=3',
    '-o',
    'APT::Sandbox::User=root',
  ];
}

let listsFresh = false;

/** Writes the private sources list and runs `apt-get update` on it when the lists are stale. */
function ensureLists(): void {
  if (listsFresh) return;
  if (!which('apt-get')) throw new UserError('apt-get is missing: newer kernels come from Debian');
  const dir = suitesDir();
  mkdirSync(join(dir, 'lists', 'partial'), { recursive: true });
  mkdirSync(join(dir, 'apt-cache', 'archives', 'partial'), { recursive: true });
  const mirror = hostMirror();
  const sources = SUITES.map((s) => `deb [signed-by=${KEYRING}] ${mirror} ${s} main\n`).join('');
  const listFile = join(dir, 'sources.list');
  const stamp = join(dir, 'lists', 'updated');
  const same = existsSync(listFile) && readFileSync(listFile, 'utf8') === sources;
  const age = existsSync(stamp) ? Date.now() - Number(readFileSync(stamp, 'utf8')) : Infinity;
  if (same && age < LISTS_MAX_AGE_MS) {
    listsFresh = true;
    return;
  }
  writeFileAtomic(listFile, sources);
  log(`apt-get update for ${SUITES.join(', ')} (private lists in ${dir})`);
  runOrFail('apt-get update of the newer Debian suites', 'apt-get', [...aptOptions(), 'update']);
  writeFileAtomic(stamp, String(Date.now()));
  listsFresh = true;
}

function writeFileAtomic(path: string, text: string): void {
  const tmp = `${path}.${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/** Every version of `pkg` the suites offer, newest first (apt-cache madison's order). */
export function suiteVersions(pkg: string): string[] {
  ensureLists();
  const r = run('apt-cache', [...aptOptions(), 'madison', pkg]);
  const versions = r.stdout
    .split('\n')
    .map((line) => line.split('|').map((f) => f.trim()))
    .filter((f) => f.length >= 3 && f[0] === pkg && SUITES.some((s) => f[2].includes(` ${s}/`)))
    .map((f) => f[1]);
  return [...new Set(versions)].sort((a, b) => compareVersions(b, a));
}

function compareVersions(a: string, b: string): number {
  if (a === b) return 0;
  return run('dpkg', ['--compare-versions', a, 'gt', b]).status === 0 ? 1 : -1;
}

/** The newest version of `pkg` whose version starts with `prefix` followed by `.` or `-`. */
export function newestVersion(pkg: string, prefix: string): string {
  // 7.3 matches 7.3.4-1~bpo13+1 and 7.3-1, never 7.30.1.
  const match = suiteVersions(pkg).find(
    (v) => v.startsWith(prefix) && /^([.\-+~]|$)/.test(v.slice(prefix.length)),
  );
  if (!match) {
    throw new UserError(
      `no ${pkg} ${prefix}.x in Debian's ${SUITES.join(', ')} (offered: ${suiteVersions(pkg).join(' ') || 'none'})`,
    );
  }
  return match;
}

/** The Depends of one exact version, as package names (alternatives and versions dropped). */
export function dependsOf(pkg: string, version: string): string[] {
  ensureLists();
  const r = runOrFail(`apt-cache show ${pkg}=${version}`, 'apt-cache', [
    ...aptOptions(),
    'show',
    `${pkg}=${version}`,
  ]);
  const line = /^Depends:\s*(.*)$/m.exec(r)?.[1] ?? '';
  return line
    .split(',')
    .flatMap((alt) => alt.split('|'))
    .map((d) => d.trim().split(/[\s(]/)[0])
    .filter(Boolean);
}

/**
 * The files of `pkg` at `version`, unpacked (not installed) into a cache folder of their own,
 * which is returned. Downloaded and unpacked once; concurrent callers race to the same rename.
 */
export function unpackedPackage(pkg: string, version: string): string {
  const dir = join(suitesDir(), 'unpacked', `${pkg}_${version}`.replace(/[^\w.+-]/g, '_'));
  if (existsSync(join(dir, '.complete'))) return dir;
  ensureLists();
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(join(tmp, 'deb'), { recursive: true });
  // apt's download step may drop privileges to _apt, which must be able to write here.
  chmodSync(join(tmp, 'deb'), 0o777);
  log(`downloading ${pkg} ${version}`);
  runOrFail(
    `apt-get download ${pkg}=${version}`,
    'apt-get',
    [...aptOptions(), 'download', `${pkg}=${version}`],
    { cwd: join(tmp, 'deb') },
  );
  const debs = readdirSync(join(tmp, 'deb')).filter((f) => f.endsWith('.deb'));
  if (debs.length !== 1)
    throw new UserError(`apt-get download ${pkg}=${version} gave ${debs.length} files`);
  runOrFail(`unpacking ${debs[0]}`, 'dpkg-deb', [
    '-x',
    join(tmp, 'deb', debs[0]),
    join(tmp, 'root'),
  ]);
  rmSync(join(tmp, 'deb'), { recursive: true, force: true });
  writeFileSync(join(tmp, '.complete'), `${pkg} ${version}\n`);
  mkdirSync(join(suitesDir(), 'unpacked'), { recursive: true });
  try {
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(join(dir, '.complete'))) throw e;
  }
  return dir;
}

/** The unpacked root (the package's `/`) of the newest `pkg` whose version starts with `prefix`. */
export function suitePackageRoot(pkg: string, prefix: string): string {
  return join(unpackedPackage(pkg, newestVersion(pkg, prefix)), 'root');
}
