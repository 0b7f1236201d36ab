/**
 * The ```ts blocks of README.md and docs/*.md, type-checked as the type tests are: against the
 * built declarations, each block a module of its own. A block whose first line is a comment naming
 * a file (`// window.ts`) is that file, for the other blocks of the same document to import
 * (`import window from './window.js'`). The blocks live in memory, in a folder per document under
 * the package root (so that 'ublk-ts' resolves to the package itself, as in test/types).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

const FENCE = /^```ts\n([\s\S]*?)^```$/gm;
const NAMED = /^\/\/ ([\w.-]+\.ts)\n/;

/** Every document's ts blocks, as in-memory files: path -> { text, doc, line }. */
function collect(root) {
  const docs = ['README.md', ...readdirSync(join(root, 'docs')).map((f) => join('docs', f))];
  const files = new Map();
  for (const doc of docs.filter((f) => f.endsWith('.md'))) {
    const text = readFileSync(join(root, doc), 'utf8');
    const dir = join(root, '.doc-snippets', doc.replaceAll('/', '_'));
    let n = 0;
    for (const match of text.matchAll(FENCE)) {
      const block = match[1];
      const name = NAMED.exec(block)?.[1] ?? `block-${++n}.ts`;
      const line = text.slice(0, match.index).split('\n').length + 1;
      files.set(join(dir, name), { text: block, doc, line });
    }
  }
  return files;
}

/**
 * Compiles the blocks with `options` (test/types/tsconfig.json's); returns the formatted errors,
 * each placed at its document's line, or '' and the number of blocks.
 */
export function checkDocSnippets(root, options) {
  const files = collect(root);
  const dirs = new Set([...files.keys()].map((f) => join(f, '..')));
  const host = ts.createCompilerHost(options);
  const { fileExists, readFile, getSourceFile, directoryExists } = host;
  host.fileExists = (f) => files.has(f) || fileExists.call(host, f);
  host.readFile = (f) => files.get(f)?.text ?? readFile.call(host, f);
  host.directoryExists = (d) => dirs.has(d) || (directoryExists?.call(host, d) ?? true);
  host.getSourceFile = (f, version, ...rest) =>
    files.has(f)
      ? ts.createSourceFile(f, files.get(f).text, version, true)
      : getSourceFile.call(host, f, version, ...rest);
  // A snippet shows a use, not a whole program: an unused import or variable is fine there.
  const program = ts.createProgram({
    rootNames: [...files.keys()],
    options: { ...options, rootDir: root, noUnusedLocals: false, noUnusedParameters: false },
    host,
  });
  const errors = ts.getPreEmitDiagnostics(program).map((d) => {
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n  ');
    const at = d.file && files.get(d.file.fileName);
    if (!at) return `${d.file ? relative(root, d.file.fileName) : ''}: TS${d.code}: ${message}`;
    const line = at.line + d.file.getLineAndCharacterOfPosition(d.start).line;
    return `${at.doc}:${line}: TS${d.code}: ${message}`;
  });
  return { errors, blocks: files.size };
}
