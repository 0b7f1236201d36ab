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
import { createHash } from 'node:crypto';
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

/** dpkg's order of two Debian versions: positive when `a` is newer. */
export function compareVersions(a: string, b: string): number {
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

/** The Depends of one exact version: each package with the version it pins, if any. */
export function dependsOf(pkg: string, version: string): { name: string; version?: string }[] {
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
    .map((d) => /^\s*([^\s(]+)\s*(?:\(=\s*([^)\s]+)\s*\))?/.exec(d))
    .filter((m) => m !== null)
    .map((m) => ({ name: m[1], version: m[2] }));
}

export interface PackageVersion {
  name: string;
  version: string;
}

/**
 * The files of `packages`, unpacked (not installed) together into one cache folder, whose root
 * (the packages' `/`) is returned. Downloaded and unpacked once; concurrent callers race to the
 * same rename, and the loser throws its copy away.
 */
export function unpackedPackages(packages: readonly PackageVersion[]): string {
  const label = packages.map((p) => `${p.name}_${p.version}`).join('+');
  const key =
    packages.length === 1 ? label : createHash('sha256').update(label).digest('hex').slice(0, 16);
  const dir = join(suitesDir(), 'unpacked', key.replace(/[^\w.+-]/g, '_'));
  if (existsSync(join(dir, '.complete'))) return join(dir, 'root');
  ensureLists();
  const tmp = `${dir}.tmp-${process.pid}`;
  const debDir = join(tmp, 'deb');
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(debDir, { recursive: true });
  // apt's download step may drop privileges to _apt, which must be able to write here.
  chmodSync(debDir, 0o777);
  log(`downloading ${packages.map((p) => `${p.name} ${p.version}`).join(', ')}`);
  const specs = packages.map((p) => `${p.name}=${p.version}`);
  runOrFail(
    `apt-get download ${specs.join(' ')}`,
    'apt-get',
    [...aptOptions(), 'download', ...specs],
    { cwd: debDir },
  );
  const debs = readdirSync(debDir).filter((f) => f.endsWith('.deb'));
  if (debs.length !== packages.length) {
    throw new UserError(`apt-get download ${specs.join(' ')} gave ${debs.length} files`);
  }
  for (const deb of debs) {
    runOrFail(`unpacking ${deb}`, 'dpkg-deb', ['-x', join(debDir, deb), join(tmp, 'root')]);
  }
  rmSync(debDir, { recursive: true, force: true });
  writeFileSync(join(tmp, '.complete'), `${label}\n`);
  mkdirSync(join(suitesDir(), 'unpacked'), { recursive: true });
  try {
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(join(dir, '.complete'))) throw e;
  }
  return join(dir, 'root');
}

/** The unpacked root (the package's `/`) of the newest `pkg` whose version starts with `prefix`. */
export function suitePackageRoot(pkg: string, prefix: string): string {
  return unpackedPackages([{ name: pkg, version: newestVersion(pkg, prefix) }]);
}
