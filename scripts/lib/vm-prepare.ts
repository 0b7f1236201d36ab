/**
 * Preparation of the real-kernel test VM, cached under .cache/vm/ (git-ignored):
 *
 * - Debian packages: QEMU, busybox-static, the distribution kernel image + headers + source, fio...
 *   Installed with apt-get when root; otherwise the exact apt-get line is printed and we fail.
 * - The kernel: the host's own (bookworm's 6.1), or one of Debian's newer suites (6.12, 7.3)
 *   unpacked into the cache without installing it (debian-suites.ts); `UBLK_VM_KERNEL` chooses.
 * - For 6.1, ublk_drv.ko, built out of tree from the distribution's kernel source against its
 *   headers (bookworm ships the kernel with CONFIG_BLK_DEV_UBLK unset; newer ones ship it).
 * - A modules overlay for the guest: depmod's indexes over the Debian modules plus ublk_drv.ko, so
 *   that `modprobe ublk_drv|null_blk|loop` work in the guest.
 * - An initramfs: static busybox, the virtio/9p/overlay modules and /init (below), which mounts
 *   the host's / read-only over 9p under a tmpfs overlay and runs the job in a chroot of it.
 *
 * Everything derived is keyed by the kernel version, the package versions and the text of this
 * file, built in a private folder, and published with an atomic rename under a lock file.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  openSync,
  closeSync,
  utimesSync,
  symlinkSync,
} from 'node:fs';
import { basename, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheRoot, isRoot, log, run, runOrFail, UserError, verbose, which } from './common.js';
import { dependsOf, newestVersion, unpackedPackages } from './debian-suites.js';

/** What a VM run needs, all absolute paths on the host (and, through 9p, in the guest). */
export interface VmAssets {
  /** Kernel release, as `uname -r` prints it in the guest, e.g. 6.1.0-56-amd64. */
  kver: string;
  /** What QEMU boots: the uncompressed vmlinux (PVH entry) when it could be extracted, else the
   * distribution's bzImage. Decompressing the kernel under emulation costs seconds per boot. */
  kernelImage: string;
  initramfs: string;
  /** Overlay for /lib/modules/<kver> in the guest: depmod indexes + ublk-ts/ublk_drv.ko. */
  modTree: string;
  /** The real (symlink-free) path of the Debian /lib/modules/<kver>. */
  modulesDir: string;
  qemu: string;
  /** True when this call built the assets (a cold cache). */
  built: boolean;
  /** Wall time of preparation, in ms. */
  elapsedMs: number;
}

/** Debian packages the VM needs whatever the kernel version. */
const BASE_PACKAGES = [
  'qemu-system-x86',
  'busybox-static',
  'cpio',
  'fio',
  'kmod',
  'e2fsprogs',
  'xz-utils',
  'make',
  'gcc',
  'linux-image-amd64',
  'linux-headers-amd64',
  // The guest runs the host's programs: NBD servers and tools for the nbd target's tests
  // (nbdkit, qemu-nbd and qemu-img, nbdcopy) and the kernel's own client for the benchmark.
  'nbdkit',
  'qemu-utils',
  'libnbd-bin',
  'nbd-client',
];

/** Modules the initramfs loads (with their dependencies, in dependency order). */
const INITRAMFS_MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'overlay'];

const MANIFEST = 'manifest.json';

/**
 * A kernel the VM can boot: where its parts are on the host, and whether ublk_drv must be built
 * for it (the host's bookworm 6.1 ships ublk disabled; Debian's 6.12 and 7.3 ship the module).
 */
interface KernelSource {
  kver: string;
  /** The distribution's compressed kernel (bzImage). */
  bzImage: string;
  /** Its .config, when the packages carry it (tells whether the vmlinux can be booted). */
  config: string;
  modulesDir: string;
  /** The kernel source tarball and headers to build ublk_drv.ko from; absent when shipped. */
  ublkBuild?: { tarball: string; headersDir: string };
  /** What the cache key covers besides this file's text. */
  stamp: Record<string, unknown>;
}

/**
 * The kernel that `request` names (`UBLK_VM_KERNEL` by default):
 * - empty, or the major.minor of the host's own linux-image-amd64 (6.1): that kernel, installed
 *   on the host with apt (the floor, with ublk_drv built out of tree);
 * - a kernel release installed on the host (6.1.0-50-amd64): that one;
 * - another major.minor (6.12, 7.3): the newest linux-image-amd64 of that version in Debian's
 *   newer suites, unpacked into the cache (debian-suites.ts);
 * - a full Debian version of linux-image-amd64 (7.3.4-1~bpo13+1): exactly that one.
 */
function resolveKernel(request: string): KernelSource {
  const host = hostKernelRelease();
  if (request === '' || request === majorMinor(host)) return hostKernel(host);
  if (existsSync(`/boot/vmlinuz-${request}`)) return hostKernel(request);
  const version = /^\d+\.\d+$/.test(request)
    ? newestVersion('linux-image-amd64', request)
    : request;
  return suiteKernel(version);
}

function majorMinor(kver: string): string {
  const mm = /^(\d+\.\d+)/.exec(kver)?.[1];
  if (!mm) throw new UserError(`cannot read a major.minor version from kernel release ${kver}`);
  return mm;
}

function hostKernel(kver: string): KernelSource {
  const sourcePkg = `linux-source-${majorMinor(kver)}`;
  ensurePackages([`linux-image-${kver}`, `linux-headers-${kver}`, sourcePkg]);
  const bzImage = `/boot/vmlinuz-${kver}`;
  const modulesDir = realpathOrFail(`/lib/modules/${kver}`, `linux-image-${kver}`);
  const headersDir = realpathOrFail(
    existsSync(`/lib/modules/${kver}/build`)
      ? `/lib/modules/${kver}/build`
      : `/usr/src/linux-headers-${kver}`,
    `linux-headers-${kver}`,
  );
  const tarball = [`/usr/src/${sourcePkg}.tar.xz`, `/usr/src/${sourcePkg}.tar.bz2`].find((p) =>
    existsSync(p),
  );
  if (!tarball)
    throw new UserError(`/usr/src/${sourcePkg}.tar.xz is missing (package ${sourcePkg})`);
  if (!existsSync(bzImage)) throw new UserError(`${bzImage} is missing`);
  return {
    kver,
    bzImage,
    config: `/boot/config-${kver}`,
    modulesDir,
    ublkBuild: { tarball, headersDir },
    stamp: {
      packages: packageVersions([
        `linux-image-${kver}`,
        `linux-headers-${kver}`,
        sourcePkg,
        'busybox-static',
        'kmod',
      ]),
      image: fileStamp(bzImage),
      tarball: fileStamp(tarball),
      modulesDep: fileStamp(join(modulesDir, 'modules.dep')),
    },
  };
}

/**
 * A kernel of a newer Debian suite: the packages behind its linux-image-amd64 (6.12: one
 * linux-image-KV; 7.3: linux-image-KV split into linux-binary, linux-modules and linux-base),
 * unpacked together. Their modules carry no depmod indexes; buildModTree makes them.
 */
function suiteKernel(metaVersion: string): KernelSource {
  const image = dependsOf('linux-image-amd64', metaVersion).find((d) =>
    /^linux-image-\d/.test(d.name),
  );
  if (!image) throw new UserError(`linux-image-amd64 ${metaVersion} names no linux-image-KVER`);
  const imageVersion = image.version ?? metaVersion;
  const parts = dependsOf(image.name, imageVersion)
    .filter((d) => /^linux-(binary|modules|base)-\d/.test(d.name))
    .map((d) => ({ name: d.name, version: d.version ?? imageVersion }));
  const root = unpackedPackages([{ name: image.name, version: imageVersion }, ...parts]);
  const modulesRoot = join(root, 'usr/lib/modules');
  const kvers = existsSync(modulesRoot) ? readdirSync(modulesRoot) : [];
  if (kvers.length !== 1) {
    throw new UserError(`${image.name} ${imageVersion}: expected one kernel in ${modulesRoot}`);
  }
  const kver = kvers[0];
  const modulesDir = join(modulesRoot, kver);
  const inModules = (name: string) => join(modulesDir, name);
  const inBoot = (name: string) => join(root, 'boot', `${name}-${kver}`);
  const bzImage = [inBoot('vmlinuz'), inModules('vmlinuz')].find((p) => existsSync(p));
  if (!bzImage) throw new UserError(`${image.name} ${imageVersion} has no vmlinuz`);
  const config = [inBoot('config'), inModules('config')].find((p) => existsSync(p)) ?? '';
  return {
    kver,
    bzImage,
    config,
    modulesDir,
    stamp: { packages: [image.name, ...parts.map((p) => p.name)], version: imageVersion },
  };
}

export async function prepareVm(request = process.env.UBLK_VM_KERNEL ?? ''): Promise<VmAssets> {
  const started = Date.now();
  ensurePackages(BASE_PACKAGES);
  const kernel = resolveKernel(request.trim());
  const { kver } = kernel;
  const qemu = which('qemu-system-x86_64');
  if (!qemu) throw new UserError('qemu-system-x86_64 is not in PATH (package qemu-system-x86)');
  const busybox = findStaticBusybox();

  const key = cacheKey({
    kver,
    ...kernel.stamp,
    tools: packageVersions(['busybox-static', 'kmod']),
    script: createHash('sha256')
      .update(readFileSync(fileURLToPath(import.meta.url)))
      .digest('hex'),
  });
  const root = cacheRoot();
  const dir = join(root, `build-${kver}-${key}`);
  const assets = (built: boolean): VmAssets => ({
    kver,
    kernelImage: existsSync(join(dir, 'vmlinux')) ? join(dir, 'vmlinux') : kernel.bzImage,
    initramfs: join(dir, 'initramfs.cpio'),
    modTree: join(dir, 'modtree'),
    modulesDir: kernel.modulesDir,
    qemu,
    built,
    elapsedMs: Date.now() - started,
  });
  if (existsSync(join(dir, MANIFEST))) {
    touch(dir);
    return assets(false);
  }

  mkdirSync(root, { recursive: true });
  const release = await lock(join(root, 'lock'));
  try {
    if (existsSync(join(dir, MANIFEST))) return assets(false);
    log(`preparing the test VM for Linux ${kver} in ${relative(process.cwd(), root) || root} ...`);
    const tmp = join(root, `tmp-${key}-${process.pid}`);
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    const ko = kernel.ublkBuild
      ? buildUblkModule(tmp, kernel.ublkBuild.tarball, kernel.ublkBuild.headersDir)
      : undefined;
    buildModTree(tmp, kver, kernel.modulesDir, ko);
    buildInitramfs(tmp, kernel.modulesDir, busybox);
    extractVmlinux(tmp, kernel.bzImage, kernel.config);
    writeFileSync(
      join(tmp, MANIFEST),
      JSON.stringify({ ...kernel, built: new Date().toISOString() }, null, 2),
    );
    rmSync(join(tmp, 'src'), { recursive: true, force: true });
    rmSync(join(tmp, 'ublk'), { recursive: true, force: true });
    try {
      renameSync(tmp, dir);
    } catch (e) {
      // Someone published the same key meanwhile (without our lock, e.g. another cache root).
      rmSync(tmp, { recursive: true, force: true });
      if (!existsSync(join(dir, MANIFEST))) throw e;
    }
    pruneOldBuilds(root, dir);
    log(`test VM prepared in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return assets(true);
  } finally {
    release();
  }
}

// ---------------------------------------------------------------------------------------------
// Debian packages

function dpkgAvailable(): boolean {
  return which('dpkg-query') !== undefined;
}

/** Installed packages among `names` (dpkg's "installed" state only). */
function installedPackages(names: readonly string[]): Set<string> {
  const r = run('dpkg-query', ['-W', '-f=${Package} ${db:Status-Status}\\n', ...names]);
  const out = new Set<string>();
  for (const line of r.stdout.split('\n')) {
    const [pkg, status] = line.trim().split(/\s+/);
    if (pkg && status === 'installed') out.add(pkg.replace(/:.*$/, ''));
  }
  return out;
}

let aptUpdated = false;

function ensurePackages(names: readonly string[]): void {
  if (!dpkgAvailable()) {
    throw new UserError(
      'this machine has no dpkg: the test VM needs Debian packages (qemu-system-x86, linux-image-amd64...)',
    );
  }
  const have = installedPackages(names);
  const missing = names.filter((n) => !have.has(n));
  if (missing.length === 0) return;
  const line = `apt-get update && apt-get install -y --no-install-recommends ${missing.join(' ')}`;
  if (!isRoot()) {
    throw new UserError(`missing Debian packages: ${missing.join(' ')}; as root, run:\n  ${line}`);
  }
  log(`installing Debian packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const aptOpts = ['-o', 'DPkg::Lock::Timeout=600', '-o', 'Acquire::Retries=3'];
  const install = () =>
    run('apt-get', [...aptOpts, 'install', '-y', '--no-install-recommends', ...missing], {
      env,
      stdio: ['ignore', 'inherit', 'inherit'],
    });
  // `apt-get update` only when the package lists do not know a package (fresh machine) or the
  // install fails (stale lists); never twice in one process.
  if (!aptUpdated && !missing.every(hasCandidate)) aptUpdate(env, aptOpts);
  let r = install();
  if (r.status !== 0 && !aptUpdated) {
    aptUpdate(env, aptOpts);
    r = install();
  }
  if (r.status !== 0) {
    throw new UserError(`apt-get install of ${missing.join(' ')} failed (exit ${r.status})`);
  }
  const still = names.filter((n) => !installedPackages([n]).has(n));
  if (still.length) throw new UserError(`packages still not installed: ${still.join(' ')}`);
}

function aptUpdate(env: NodeJS.ProcessEnv, aptOpts: string[]): void {
  aptUpdated = true;
  log('apt-get update');
  const r = run('apt-get', [...aptOpts, 'update'], {
    env,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0) throw new UserError(`apt-get update failed (exit ${r.status})`);
}

function hasCandidate(pkg: string): boolean {
  const r = run('apt-cache', ['policy', pkg]);
  const m = /Candidate:\s*(\S+)/.exec(r.stdout);
  return !!m && m[1] !== '(none)';
}

function packageVersions(names: readonly string[]): Record<string, string> {
  const r = run('dpkg-query', ['-W', '-f=${Package} ${Version}\\n', ...names]);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const [pkg, version] = line.trim().split(/\s+/);
    if (pkg && version) out[pkg] = version;
  }
  return out;
}

/**
 * The kernel release of the host's distribution kernel: what the meta package
 * linux-image-amd64 depends on (linux-image-6.1.0-56-amd64 -> 6.1.0-56-amd64).
 */
function hostKernelRelease(): string {
  const r = run('dpkg-query', ['-W', '-f=${Depends}', 'linux-image-amd64']);
  const m = /linux-image-(\d[^\s,(|]*)/.exec(r.stdout);
  if (!m)
    throw new UserError(
      `cannot tell the kernel version from linux-image-amd64 (${r.stdout.trim()})`,
    );
  return m[1];
}

function findStaticBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (!existsSync(p)) continue;
    const elf = readFileSync(p).subarray(0, 4096);
    // A dynamically linked ELF names its interpreter (/lib64/ld-linux-x86-64.so.2) early on.
    if (!elf.includes('ld-linux')) return realpathSync(p);
  }
  throw new UserError('no static busybox found (package busybox-static)');
}

// ---------------------------------------------------------------------------------------------
// Cache plumbing

function realpathOrFail(p: string, pkg: string): string {
  try {
    return realpathSync(p);
  } catch {
    throw new UserError(`${p} is missing (package ${pkg})`);
  }
}

function fileStamp(p: string): string {
  const st = statSync(p);
  return `${st.size}:${Math.floor(st.mtimeMs)}`;
}

function cacheKey(inputs: unknown): string {
  return createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 16);
}

function touch(p: string): void {
  try {
    const now = new Date();
    utimesSync(p, now, now);
  } catch {
    // read-only cache: fine
  }
}

/** Removes builds of other keys not used for a day (a running VM may still read a recent one). */
function pruneOldBuilds(root: string, keep: string): void {
  const dayAgo = Date.now() - 24 * 3600 * 1000;
  for (const name of readdirSync(root)) {
    const p = join(root, name);
    if (p === keep || !/^(build|tmp)-/.test(name)) continue;
    try {
      if (statSync(p).mtimeMs < dayAgo) rmSync(p, { recursive: true, force: true });
    } catch {
      // raced with another pruner
    }
  }
}

/**
 * An exclusive lock: a file created with O_EXCL holding our pid. A lock whose owner is gone is
 * taken over; waits up to 30 minutes for a live owner (a cold build takes a minute or two).
 */
async function lock(path: string): Promise<() => void> {
  const deadline = Date.now() + 30 * 60 * 1000;
  let said = false;
  for (;;) {
    try {
      const fd = openSync(path, 'wx');
      writeFileSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner = NaN;
    try {
      owner = Number(readFileSync(path, 'utf8').trim());
    } catch {
      continue; // released meanwhile
    }
    if (Number.isInteger(owner) && owner > 0 && !alive(owner)) {
      rmSync(path, { force: true });
      continue;
    }
    if (Date.now() > deadline) throw new UserError(`timed out waiting for the lock ${path}`);
    if (!said) log(`waiting for another run preparing the VM (${path}, pid ${owner})`);
    said = true;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------------
// ublk_drv.ko

function buildUblkModule(tmp: string, tarball: string, headersDir: string): string {
  const t0 = Date.now();
  const src = join(tmp, 'src');
  mkdirSync(src, { recursive: true });
  const top = basename(tarball).replace(/\.tar\.\w+$/, '');
  const members = ['drivers/block/ublk_drv.c', 'include/uapi/linux/ublk_cmd.h'];
  runOrFail('extracting ublk_drv.c from the kernel source', 'tar', [
    '-xf',
    tarball,
    '-C',
    src,
    '--strip-components=1',
    '--occurrence=1',
    ...members.map((m) => `${top}/${m}`),
  ]);
  for (const m of members) {
    if (!existsSync(join(src, m))) throw new UserError(`${m} is not in ${tarball}`);
  }
  const mod = join(tmp, 'ublk');
  mkdirSync(mod, { recursive: true });
  copyFileSync(join(src, 'drivers/block/ublk_drv.c'), join(mod, 'ublk_drv.c'));
  // NOSTDINC_FLAGS comes before the kernel's own include paths, so the source's uapi header wins.
  writeFileSync(
    join(mod, 'Kbuild'),
    `obj-m := ublk_drv.o\nNOSTDINC_FLAGS += -I${join(src, 'include')}\n`,
  );
  if (/\s/.test(mod)) throw new UserError(`kbuild cannot build in a path with spaces: ${mod}`);
  const out = runOrFail('building ublk_drv.ko', 'make', [
    '-C',
    headersDir,
    `M=${mod}`,
    '-j2',
    'modules',
  ]);
  if (verbose()) process.stderr.write(out);
  const ko = join(mod, 'ublk_drv.ko');
  if (!existsSync(ko)) throw new UserError(`the kernel build did not produce ${ko}`);
  log(`built ublk_drv.ko in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return ko;
}

// ---------------------------------------------------------------------------------------------
// vmlinux

/**
 * Extracts the uncompressed kernel from a bzImage (what the kernel's scripts/extract-vmlinux
 * does) into <tmp>/vmlinux, when the kernel can be entered that way: QEMU boots an ELF vmlinux
 * through its PVH entry point (CONFIG_PVH). Leaves nothing behind when it cannot.
 */
function extractVmlinux(tmp: string, bzImage: string, config: string): void {
  if (!existsSync(config) || !/^CONFIG_PVH=y$/m.test(readFileSync(config, 'utf8'))) return;
  const image = readFileSync(bzImage);
  const formats: [Buffer, string, string[]][] = [
    [Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), 'xz', ['-dc', '--single-stream']],
    [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), 'zstd', ['-dc']],
    [Buffer.from([0x1f, 0x8b, 0x08]), 'gzip', ['-dc']],
  ];
  for (const [magic, tool, args] of formats) {
    for (let off = image.indexOf(magic); off >= 0; off = image.indexOf(magic, off + 1)) {
      const r = spawnSync(tool, args, { input: image.subarray(off), maxBuffer: 1 << 30 });
      // gzip and zstd complain about the bytes after the stream but still write it all out.
      const out = r.stdout;
      if (out && out.length > 1 << 20 && out.subarray(0, 4).toString('latin1') === '\x7fELF') {
        writeFileSync(join(tmp, 'vmlinux'), out);
        return;
      }
    }
  }
  log(`could not extract vmlinux from ${bzImage}: booting the bzImage (slower)`);
}

// ---------------------------------------------------------------------------------------------
// modules overlay

/**
 * The overlay for the guest's /lib/modules/<kver>: depmod's indexes over the Debian modules (the
 * packages of newer suites carry none) plus, where we built it, ublk-ts/ublk_drv.ko.
 */
function buildModTree(tmp: string, kver: string, modulesDir: string, ko?: string): void {
  // depmod wants the whole tree: symlink the Debian module folders beside ours.
  const base = join(tmp, 'depmod');
  const tree = join(base, 'lib', 'modules', kver);
  mkdirSync(tree, { recursive: true });
  if (ko) {
    mkdirSync(join(tree, 'ublk-ts'));
    copyFileSync(ko, join(tree, 'ublk-ts', 'ublk_drv.ko'));
  }
  for (const name of readdirSync(modulesDir)) {
    const p = join(modulesDir, name);
    if (name === 'build' || name === 'source' || name === 'ublk-ts') continue;
    if (statSync(p).isDirectory()) {
      symlinkSync(p, join(tree, name));
    } else if (/^modules\.(order|builtin|builtin\.modinfo)$/.test(name)) {
      copyFileSync(p, join(tree, name));
    }
  }
  runOrFail('depmod', 'depmod', ['-b', base, kver]);
  // The overlay layer: depmod's output and our module, never the symlinks (the guest mounts it
  // above the real /lib/modules/<kver>).
  const out = join(tmp, 'modtree');
  mkdirSync(out, { recursive: true });
  if (ko) {
    mkdirSync(join(out, 'ublk-ts'));
    copyFileSync(ko, join(out, 'ublk-ts', 'ublk_drv.ko'));
  }
  for (const name of readdirSync(tree)) {
    if (name.startsWith('modules.')) copyFileSync(join(tree, name), join(out, name));
  }
  const dep = readFileSync(join(out, 'modules.dep'), 'utf8');
  if (!/^\S*ublk_drv\.ko(\.(xz|zst|gz))?:/m.test(dep)) {
    throw new UserError(`depmod found no ublk_drv.ko for Linux ${kver}`);
  }
  rmSync(base, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// initramfs

/**
 * Resolves module names to files (relative to the modules folder) and orders them so that
 * dependencies come first, from the indexes in `modTree`.
 */
function moduleLoadOrder(modTree: string, roots: readonly string[]): string[] {
  const norm = (n: string) => n.replace(/-/g, '_');
  const nameOf = (file: string) => norm(basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, ''));
  const deps = new Map<string, { file: string; deps: string[] }>();
  for (const line of readFileSync(join(modTree, 'modules.dep'), 'utf8').split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    deps.set(nameOf(m[1]), { file: m[1], deps: m[2].split(/\s+/).filter(Boolean) });
  }
  const builtin = new Set(
    (existsSync(join(modTree, 'modules.builtin'))
      ? readFileSync(join(modTree, 'modules.builtin'), 'utf8').split('\n')
      : []
    )
      .filter(Boolean)
      .map(nameOf),
  );
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    const entry = deps.get(name);
    if (!entry) {
      if (builtin.has(name)) return;
      throw new UserError(`module ${name} is neither in modules.dep nor built in (${modTree})`);
    }
    for (const d of entry.deps) visit(nameOf(d));
    order.push(entry.file);
  };
  roots.map(norm).forEach(visit);
  return order;
}

function readModule(path: string): Buffer {
  const m = /\.ko\.(xz|zst|gz)$/.exec(path);
  if (!m) return readFileSync(path);
  // busybox insmod may not know the compression: hand it plain .ko files.
  const tool = { xz: 'xz', zst: 'zstd', gz: 'gzip' }[m[1] as 'xz' | 'zst' | 'gz'];
  const r = spawnSync(tool, ['-dc', path], { maxBuffer: 256 << 20 });
  if (r.status !== 0 || !r.stdout) throw new UserError(`${tool} -dc ${path} failed`);
  return r.stdout;
}

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

/** Writes a newc ("070701") cpio archive, the format the kernel unpacks as initramfs. */
function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  let ino = 1;
  const add = (e: CpioEntry) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`);
    const fields = [
      ino++,
      e.mode,
      0, // uid
      0, // gid
      (e.mode & 0o170000) === 0o040000 ? 2 : 1,
      0, // mtime: reproducible
      data.length,
      0,
      0,
      e.rdev?.[0] ?? 0,
      e.rdev?.[1] ?? 0,
      name.length,
      0,
    ];
    const header = Buffer.from(
      '070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''),
      'ascii',
    );
    parts.push(header, name, pad4(header.length + name.length), data, pad4(data.length));
  };
  entries.forEach(add);
  add({ name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}

function buildInitramfs(tmp: string, modulesDir: string, busybox: string): void {
  const files = moduleLoadOrder(join(tmp, 'modtree'), INITRAMFS_MODULES);
  const names = files.map((f) => basename(f).replace(/\.ko(\.(xz|zst|gz))?$/, ''));
  const dir = (name: string): CpioEntry => ({ name, mode: 0o040755 });
  const entries: CpioEntry[] = [
    ...['bin', 'dev', 'proc', 'sys', 'host', 'ovl', 'newroot', 'modules', 'tmp', 'run'].map(dir),
    { name: 'dev/console', mode: 0o020600, rdev: [5, 1] },
    { name: 'bin/busybox', mode: 0o100755, data: readFileSync(busybox) },
    { name: 'bin/sh', mode: 0o120777, data: Buffer.from('busybox') },
    { name: 'init', mode: 0o100755, data: Buffer.from(INIT_SCRIPT) },
    { name: 'stage2', mode: 0o100755, data: Buffer.from(STAGE2_SCRIPT) },
    { name: 'modules/order', mode: 0o100644, data: Buffer.from(names.join('\n') + '\n') },
    ...files.map((f, i) => ({
      name: `modules/${names[i]}.ko`,
      mode: 0o100644,
      data: readModule(join(modulesDir, f)),
    })),
  ];
  writeFileSync(join(tmp, 'initramfs.cpio'), cpioNewc(entries));
  log(`initramfs: busybox + ${names.join(', ')}`);
}

/**
 * /init of the guest (stage 1, in the initramfs). Reads `ublkvm.run=<dir>` from the kernel
 * command line; <dir> is a host folder (seen through 9p) holding `config` (shell variables) and
 * `job.sh` (the command). Builds the new root: the host's / read-only over 9p, a tmpfs overlay on
 * top, proc/sys/dev/tmp/run/shm inside, the modules overlay on /lib/modules/<kver>; then
 * switch_root, so that PID 1 (and with it the kernel's helpers, such as the modprobe that
 * request_module runs for `mount -t ext4`) lives in the new root.
 * Talks to the host runner through markers on the console (ttyS0).
 */
const INIT_SCRIPT = `#!/bin/busybox sh
# /init of the ublk-ts test VM, generated by scripts/lib/vm-prepare.ts.
/bin/busybox --install -s /bin
export PATH=/bin
fatal() {
  echo "@@ublk-vm:fatal $*@@"
  sleep 1
  echo o >/proc/sysrq-trigger
  while :; do sleep 3600; done
}
mount -t proc proc /proc || fatal "cannot mount /proc"
mount -t sysfs sysfs /sys || fatal "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fatal "cannot mount /dev"
for m in $(cat /modules/order); do
  insmod "/modules/$m.ko" || fatal "insmod $m failed"
done
RUN=
for a in $(cat /proc/cmdline); do
  case "$a" in ublkvm.run=*) RUN="\${a#ublkvm.run=}" ;; esac
done
[ -n "$RUN" ] || fatal "no ublkvm.run= on the kernel command line"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host ||
  fatal "cannot mount the host's / over 9p"
[ -f "/host$RUN/config" ] || fatal "no /host$RUN/config"
. "/host$RUN/config"

# The host's / read-only, a tmpfs on top.
mount -t tmpfs -o "size=$OVL_SIZE,mode=0755" upper /ovl || fatal "cannot mount the overlay's tmpfs"
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work root /newroot ||
  fatal "cannot mount the overlay on /"
R=/newroot
mount -t proc proc $R/proc || fatal "cannot mount /proc in the new root"
mount -t sysfs sysfs $R/sys || fatal "cannot mount /sys in the new root"
mount -t devtmpfs devtmpfs $R/dev || fatal "cannot mount /dev in the new root"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o "mode=1777,size=$SHM_SIZE" shm $R/dev/shm || fatal "cannot mount /dev/shm"
if [ -n "$KEEP_IN_TMP" ]; then
  mkdir -p /keep && mount -o bind "$R$KEEP_IN_TMP" /keep || fatal "cannot keep $KEEP_IN_TMP"
fi
mount -t tmpfs -o "mode=1777,size=$TMP_SIZE" tmp $R/tmp || fatal "cannot mount /tmp"
if [ -n "$KEEP_IN_TMP" ]; then
  mkdir -p "$R$KEEP_IN_TMP" && mount -o move /keep "$R$KEEP_IN_TMP" || fatal "cannot restore $KEEP_IN_TMP"
fi
mount -t tmpfs -o mode=0755 run $R/run || fatal "cannot mount /run"
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
ln -sfn /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
# The Debian modules, with depmod's indexes for them plus ublk_drv.ko on top.
# (A kernel unpacked from a newer suite has its modules in the cache, not in the host's /lib.)
mkdir -p "$R/lib/modules/$KVER"
mount -t overlay -o "lowerdir=/host$MODTREE:/host$MODDIR" modules "$R/lib/modules/$KVER" ||
  fatal "cannot mount the modules overlay"
J=$R/run/ublk-vm
mkdir -p $J
cp /bin/busybox /stage2 "/host$RUN/config" "/host$RUN/job.sh" $J/ || fatal "cannot copy the job"
exec switch_root $R /run/ublk-vm/stage2
fatal "switch_root failed"
`;

/**
 * Stage 2: PID 1 in the new root. Loads ublk_drv, runs the job with its stdout and stderr going
 * through pipes to ttyS1 and ttyS2 (so the command never sees a terminal and nothing adds \r),
 * reports the exit status on the console, and powers off.
 */
const STAGE2_SCRIPT = `#!/run/ublk-vm/busybox sh
# Stage 2 of the ublk-ts test VM's init, generated by scripts/lib/vm-prepare.ts.
J=/run/ublk-vm
BB=$J/busybox
. $J/config
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$BB hostname ublk-vm
$BB ip link set lo up
modprobe ublk_drv || echo "ublk-vm-init: modprobe ublk_drv failed"
[ -c /dev/ublk-control ] || echo "ublk-vm-init: no /dev/ublk-control"
modprobe configfs 2>/dev/null && $BB mount -t configfs configfs /sys/kernel/config
# From here on every kernel message but debug reaches the console; the host shows the bad ones.
echo 7 >/proc/sys/kernel/printk

$BB mkfifo $J/stdout $J/stderr
$BB stty -F /dev/ttyS1 raw -echo 115200
$BB stty -F /dev/ttyS2 raw -echo 115200
$BB cat $J/stdout >/dev/ttyS1 &
P1=$!
$BB cat $J/stderr >/dev/ttyS2 &
P2=$!
D=
if [ -n "$DUMP_AFTER" ]; then
  (
    $BB sleep "$DUMP_AFTER"
    echo "@@ublk-vm:dump@@"
    $BB stty -F /dev/console 115200
    echo w >/proc/sysrq-trigger
  ) &
  D=$!
fi
if [ -n "$POWEROFF_AFTER" ]; then
  (
    $BB sleep "$POWEROFF_AFTER"
    echo o >/proc/sysrq-trigger
  ) &
fi
echo "@@ublk-vm:ready@@"
/bin/sh $J/job.sh </dev/null >$J/stdout 2>$J/stderr
rc=$?
# Let the copies finish (a leftover background process may hold the pipes open: not for long).
(
  $BB sleep 5
  kill $P1 $P2 2>/dev/null
) &
K=$!
wait $P1
wait $P2
kill $K $D 2>/dev/null
# stty sets the line with TCSADRAIN: returns once the UARTs sent everything.
$BB stty -F /dev/ttyS1 raw
$BB stty -F /dev/ttyS2 raw
echo "@@ublk-vm:exit=$rc@@"
echo "@@ublk-vm:exit=$rc@@"
$BB stty -F /dev/console 115200
$BB sleep 0.2
echo o >/proc/sysrq-trigger
while :; do $BB sleep 3600; done
`;
