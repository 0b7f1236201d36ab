/**
 * The type tests, as tsd runs them: the .ts files here compiled against the built declarations
 * (dist/src/index.d.ts, reached as a user reaches them: `import ... from 'ublk-ts'`). Each
 * misuse sits under a `// @ts-expect-error` line, which tsc itself refuses when the line below
 * compiles (TS2578), so every misuse must be rejected; every other line must compile. A
 * directive may name the error it expects (`// @ts-expect-error TS2322: why`): the files are
 * compiled a second time without the directives to check that the line fails with that error,
 * and that no misuse fails only for a reason of the test's own (a name or module not found).
 *
 * Without FILE arguments it also type-checks the ```ts blocks of README.md and docs/*.md
 * (doc-snippets.mjs), so that no example in the documentation stops compiling.
 *
 * Usage: node test/types/run.mjs [FILE...]   (all the .ts files here by default)
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { checkDocSnippets } from './doc-snippets.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const DIRECTIVE = /^\s*\/\/\s*@ts-expect-error\b(?:\s+TS(\d+))?:?\s*(.*)$/;
const USE = /^\s*\/\/\s*use:/;
/** Errors that mean the test is broken rather than the misuse rejected, unless a directive names them. */
const BROKEN = new Set([2304, 2305, 2307, 2552, 2582, 2724]);

const fail = (message) => {
  console.error(message);
  process.exit(1);
};

if (!existsSync(join(ROOT, 'dist/src/index.d.ts'))) {
  fail('types: dist/src/index.d.ts is missing: run `npm run compile` first');
}

const config = ts.getParsedCommandLineOfConfigFile(join(HERE, 'tsconfig.json'), undefined, {
  ...ts.sys,
  onUnRecoverableConfigFileDiagnostic: (d) => fail(`${format([d])}types: FAILED`),
});
if (config.errors.length > 0) fail(`${format(config.errors)}types: FAILED`);
const files =
  process.argv.length > 2 ? process.argv.slice(2).map((f) => resolve(f)) : config.fileNames;
const options = config.options;

const resolved = ts.resolveModuleName('ublk-ts', join(HERE, 'index.ts'), options, ts.sys);
const entry = resolved.resolvedModule?.resolvedFileName;
if (entry === undefined) fail("types: 'ublk-ts' resolves to no declaration file");

function format(diagnostics) {
  return ts.formatDiagnosticsWithColorAndContext(diagnostics, {
    getCanonicalFileName: (f) => f,
    getCurrentDirectory: () => ROOT,
    getNewLine: () => '\n',
  });
}

// Every directive and use marker of each file, by line (0-based).
const directives = new Map();
let uses = 0;
for (const file of files) {
  const lines = readFileSync(file, 'utf8').split('\n');
  const found = new Map();
  lines.forEach((line, i) => {
    const match = DIRECTIVE.exec(line);
    if (match) found.set(i, { code: match[1] && Number(match[1]), why: match[2] });
    if (USE.test(line)) uses++;
  });
  directives.set(file, found);
}
const misuses = [...directives.values()].reduce((n, found) => n + found.size, 0);

// Pass 1: everything compiles, every directive is used.
const program = ts.createProgram({ rootNames: files, options });
const errors = ts.getPreEmitDiagnostics(program);
if (errors.length > 0) {
  const accepted = errors
    .filter((d) => d.code === 2578 && d.file)
    .map((d) => {
      const line = d.file.getLineAndCharacterOfPosition(d.start).line;
      const why = directives.get(d.file.fileName)?.get(line)?.why ?? '';
      return `  ${where(d.file.fileName, line + 2)}: compiles, but should not: ${why}`;
    });
  console.error(format(errors));
  if (accepted.length > 0)
    console.error(
      `Misuses accepted (no error on the line under their @ts-expect-error):\n${accepted.join('\n')}\n`,
    );
  fail(`types: FAILED, ${errors.length} error(s) in the type tests`);
}

// Pass 2: without the directives, each misuse line fails, with the error its directive names.
const host = ts.createCompilerHost(options);
const getSourceFile = host.getSourceFile;
host.getSourceFile = (fileName, languageVersion, ...rest) => {
  if (!directives.has(resolve(fileName))) return getSourceFile(fileName, languageVersion, ...rest);
  const text = readFileSync(fileName, 'utf8').replace(/@ts-expect-error/g, '@ts-expect-errxr');
  return ts.createSourceFile(fileName, text, languageVersion);
};
const bare = ts.createProgram({ rootNames: files, options, host, oldProgram: program });
const byLine = new Map();
for (const d of ts.getPreEmitDiagnostics(bare)) {
  if (!d.file) continue;
  const key = `${resolve(d.file.fileName)}:${d.file.getLineAndCharacterOfPosition(d.start).line}`;
  byLine.set(key, [...(byLine.get(key) ?? []), d]);
}
const wrong = [];
for (const [file, found] of directives) {
  for (const [line, { code, why }] of found) {
    const got = byLine.get(`${file}:${line + 1}`) ?? [];
    const codes = got.map((d) => d.code);
    const problem =
      code !== undefined
        ? !codes.includes(code) && `expected TS${code}`
        : codes.some((c) => BROKEN.has(c)) &&
          'the test itself is broken (a name or module not found)';
    if (problem) {
      const message = got
        .map((d) => ts.flattenDiagnosticMessageText(d.messageText, ' '))
        .join('; ');
      wrong.push(
        `  ${where(file, line + 2)}: ${why}: ${problem}, got ${codes.map((c) => `TS${c}`).join(', ')}: ${message}`,
      );
    }
  }
}
if (wrong.length > 0) {
  fail(`Misuses rejected for another reason than expected:\n${wrong.join('\n')}\ntypes: FAILED`);
}

function where(file, line) {
  return `${relative(ROOT, file)}:${line}`;
}

console.log(
  `types: ${misuses} misuses rejected, ${uses} uses accepted (${files.length} files, against ${relative(ROOT, entry)})`,
);

if (process.argv.length <= 2) {
  const { errors: snippetErrors, blocks } = checkDocSnippets(ROOT, options);
  if (snippetErrors.length > 0) {
    fail(
      `${snippetErrors.join('\n')}\ntypes: FAILED, the documentation's ts blocks do not compile`,
    );
  }
  console.log(`types: ${blocks} ts blocks of README.md and docs/*.md compile`);
}
