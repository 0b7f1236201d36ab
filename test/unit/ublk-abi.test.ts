// Checks src/ublk/ublk-cmd.ts against two real <linux/ublk_cmd.h>, compiled: Linux 7.3's (vendored
// from Debian's linux-libc-dev: support/linux-7.3/README.md) and the system's (older: 6.1 here).
// Every constant, struct size and field offset ublk-cmd.ts has must be in 7.3's header and equal
// it, and equal the system's header too wherever that has the name. The lists come from
// ublk-cmd.ts itself (its exports and layout tables), so nothing added there goes unchecked.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import * as abi from '../../src/ublk/ublk-cmd.js';
import type { FieldType, StructLayout } from '../../src/ublk/ublk-cmd.js';
import { evalCExpressions, includeFlags } from './support/cheader.js';
import { linux73IncludeDir } from './support/linux73-headers.js';

const INCLUDES = ['errno.h', 'linux/ioctl.h', 'linux/ublk_cmd.h'];

// Not macros in any header; ublk_drv.c compares queue_id with (u16)-1 and treats a negative dev_id
// as "allocate one".
const NOT_MACROS: Readonly<Record<string, string>> = {
  NO_QUEUE_ID: '(__u16)-1',
  AUTO_DEV_ID: '(__u32)-1',
};

// ublk_params member -> the UBLK_PARAM_TYPE bit that announces it.
const SECTION_TYPE_BITS: Readonly<Record<string, string>> = {
  basic: 'UBLK_PARAM_TYPE_BASIC',
  discard: 'UBLK_PARAM_TYPE_DISCARD',
  devt: 'UBLK_PARAM_TYPE_DEVT',
  zoned: 'UBLK_PARAM_TYPE_ZONED',
  dma: 'UBLK_PARAM_TYPE_DMA_ALIGN',
  seg: 'UBLK_PARAM_TYPE_SEGMENT',
  integrity: 'UBLK_PARAM_TYPE_INTEGRITY',
};

const TYPE_SIZE: Readonly<Record<FieldType, number>> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

/** abi.ts's numbers under their C names: a group object `UBLK_F` holds `UBLK_F_<key>`. */
function tsConstants(): Map<string, bigint> {
  const constants = new Map<string, bigint>();
  for (const [name, value] of Object.entries(abi)) {
    if (isConstant(value)) {
      constants.set(name, BigInt(value));
    } else if (isConstantGroup(value)) {
      for (const [key, v] of Object.entries(value)) constants.set(`${name}_${key}`, BigInt(v));
    }
  }
  return constants;
}

const isConstant = (value: unknown): value is number | bigint =>
  typeof value === 'number' || typeof value === 'bigint';

function isConstantGroup(value: unknown): value is Record<string, number | bigint> {
  return typeof value === 'object' && value !== null && Object.values(value).every(isConstant);
}

function isLayout(value: unknown): value is StructLayout {
  return typeof value === 'object' && value !== null && 'c' in value && 'fields' in value;
}

const LAYOUTS = Object.values(abi).filter(isLayout);
const SECTIONS = Object.values(abi.PARAM_SECTIONS);
const constants = tsConstants();

const memberBase = (member: string): string => member.replace(/\[.*$/, '');
const member = (struct: string, name: string) => `((struct ${struct} *)0)->${name}`;

/** One ublk_cmd.h, read and probed. */
interface Header {
  readonly name: string;
  /** Object-like UBLK* macros. */
  readonly macros: ReadonlySet<string>;
  /** Struct tag -> member names (array subscripts dropped). */
  readonly structs: ReadonlyMap<string, ReadonlySet<string>>;
  /** Values of the probe's expressions; keys are prefixed by what they measure. */
  readonly values: ReadonlyMap<string, bigint>;
}

function preprocess(flag: string, includeDirs: readonly string[]): string {
  return execFileSync('cc', [...includeFlags(includeDirs), '-E', flag, '-x', 'c', '-'], {
    input: '#include <linux/ublk_cmd.h>\n',
    encoding: 'utf8',
  });
}

function structMembers(source: string): Map<string, Set<string>> {
  const structs = new Map<string, Set<string>>();
  for (const m of source.matchAll(/struct\s+(\w+)\s*\{/g)) {
    // Brace matching rather than a regex: newer headers nest anonymous unions.
    const start = m.index + m[0].length;
    let end = start;
    for (let depth = 1; depth > 0; end++) {
      if (source[end] === '{') depth++;
      else if (source[end] === '}') depth--;
    }
    const members = source
      .slice(start, end - 1)
      .replace(/[{}]/g, ' ')
      .split(';')
      .map((decl) => /(\w+)\s*(?:\[[^\]]*\])?\s*$/.exec(decl)?.[1])
      .filter((name): name is string => name !== undefined);
    structs.set(m[1], new Set(members));
  }
  return structs;
}

/** The C expressions measuring whatever of abi.ts this header has. */
function probeExpressions(
  macros: ReadonlySet<string>,
  structs: ReadonlyMap<string, ReadonlySet<string>>,
): Record<string, string> {
  const has = (struct: string, name: string) => structs.get(struct)?.has(memberBase(name)) ?? false;
  const exprs: Record<string, string> = { 'align:ublk_params': '_Alignof(struct ublk_params)' };
  for (const name of constants.keys()) {
    const expr = macros.has(name) ? name : NOT_MACROS[name];
    if (expr !== undefined) exprs[`const:${name}`] = expr;
  }
  for (const layout of LAYOUTS) {
    if (structs.has(layout.c)) exprs[`sizeof:${layout.c}`] = `sizeof(struct ${layout.c})`;
    for (const f of Object.values(layout.fields)) {
      if (!has(layout.c, f.c)) continue;
      const key = `${layout.c}.${f.c}`;
      exprs[`offset:${key}`] = `offsetof(struct ${layout.c}, ${f.c})`;
      exprs[`size:${key}`] = `sizeof(${member(layout.c, f.c)})`;
      exprs[`signed:${key}`] = `(__typeof__(${member(layout.c, f.c)}))-1 < 0`;
    }
  }
  for (const s of SECTIONS) {
    if (!has(abi.PARAMS.c, s.c)) continue;
    exprs[`offset:ublk_params.${s.c}`] = `offsetof(struct ublk_params, ${s.c})`;
    exprs[`type:ublk_params.${s.c}`] =
      `__builtin_types_compatible_p(__typeof__(${member('ublk_params', s.c)}), struct ${s.layout.c})`;
  }
  return exprs;
}

function readHeader(name: string, includeDirs: readonly string[] = []): Header {
  const macros = new Set(
    [...preprocess('-dM', includeDirs).matchAll(/^#define (UBLK\w*)\s/gm)].map((m) => m[1]),
  );
  const structs = structMembers(preprocess('-P', includeDirs));
  const values = evalCExpressions(INCLUDES, probeExpressions(macros, structs), includeDirs);
  return { name, macros, structs, values };
}

const latest = readHeader('Linux 7.3', [linux73IncludeDir('linux/ublk_cmd.h')]);
const system = readHeader('the system');
const HEADERS = [latest, system];

function cValue(header: Header, key: string): number {
  const value = header.values.get(key);
  assert.ok(value !== undefined, `the C probe of ${header.name}'s header did not evaluate ${key}`);
  return Number(value);
}

const hasMember = (header: Header, struct: string, name: string): boolean =>
  header.structs.get(struct)?.has(memberBase(name)) ?? false;

/** The headers that have `key`; 7.3's must, as abi.ts models nothing newer. */
function headersWith(key: string): Header[] {
  assert.ok(latest.values.has(key), `${key}: not in Linux 7.3's header`);
  return HEADERS.filter((h) => h.values.has(key));
}

test('abi.ts defines every UBLK constant either header defines', () => {
  for (const header of HEADERS) {
    const missing = [...header.macros].filter((name) => !constants.has(name));
    assert.deepEqual(missing, [], `add these of ${header.name}'s header to src/ublk/ublk-cmd.ts`);
  }
});

test('every abi.ts constant equals 7.3, and the system header where it has it', () => {
  for (const [name, value] of constants) {
    for (const header of headersWith(`const:${name}`)) {
      assert.equal(value, header.values.get(`const:${name}`), `${name} in ${header.name}`);
    }
  }
});

test('struct sizes match both headers (ublk_params: 7.3)', () => {
  for (const layout of LAYOUTS) {
    for (const header of headersWith(`sizeof:${layout.c}`)) {
      // ublk_params grows with the kernel: an older one is checked against its sections below.
      if (layout === abi.PARAMS && header !== latest) continue;
      assert.equal(
        layout.size,
        cValue(header, `sizeof:${layout.c}`),
        `${layout.c} in ${header.name}`,
      );
    }
  }
});

test('field offsets, widths and signedness match both headers', () => {
  for (const layout of LAYOUTS) {
    for (const f of Object.values(layout.fields)) {
      const key = `${layout.c}.${f.c}`;
      const actual = { offset: f.offset, size: TYPE_SIZE[f.type], signed: f.type === 's32' };
      for (const header of headersWith(`offset:${key}`)) {
        const expected = {
          offset: cValue(header, `offset:${key}`),
          size: cValue(header, `size:${key}`),
          signed: cValue(header, `signed:${key}`) === 1,
        };
        assert.deepEqual(actual, expected, `${key} in ${header.name}`);
      }
      assert.ok(f.offset + actual.size <= layout.size, `${key} overruns struct ${layout.c}`);
    }
  }
});

test('ublk_params sections: offsets, struct types, type bits and total size, per header', () => {
  for (const s of SECTIONS) {
    const bit = SECTION_TYPE_BITS[s.c];
    assert.ok(bit !== undefined, `${s.c}: no type bit reference in the test`);
    for (const header of headersWith(`offset:ublk_params.${s.c}`)) {
      const where = `${s.c} in ${header.name}`;
      assert.equal(s.offset, cValue(header, `offset:ublk_params.${s.c}`), `offsetof ${where}`);
      assert.equal(cValue(header, `type:ublk_params.${s.c}`), 1, `${where}: struct ${s.layout.c}`);
      assert.equal(s.type, cValue(header, `const:${bit}`), `type bit of ${where}`);
    }
  }
  for (const header of HEADERS) {
    const align = cValue(header, 'align:ublk_params');
    const inHeader = SECTIONS.filter((s) => hasMember(header, abi.PARAMS.c, s.c));
    const end = Math.max(...inHeader.map((s) => s.offset + s.layout.size));
    assert.equal(
      cValue(header, 'sizeof:ublk_params'),
      Math.ceil(end / align) * align,
      `sizeof(struct ublk_params) in ${header.name}: the sections end there`,
    );
  }
});

test('abi.ts models every struct and member either header declares, bar padding', () => {
  const modelled = new Map<string, Set<string>>();
  for (const layout of LAYOUTS) {
    modelled.set(layout.c, new Set(Object.values(layout.fields).map((f) => memberBase(f.c))));
  }
  for (const s of SECTIONS) modelled.get(abi.PARAMS.c)?.add(s.c);
  for (const header of HEADERS) {
    for (const [struct, members] of header.structs) {
      const ours = modelled.get(struct);
      assert.ok(
        ours !== undefined,
        `struct ${struct} (${header.name}) is not in src/ublk/ublk-cmd.ts`,
      );
      const missing = [...members].filter((m) => !/^(pad|reserved)\d*$/.test(m) && !ours.has(m));
      assert.deepEqual(missing, [], `struct ${struct} (${header.name}): members missing`);
    }
  }
});
