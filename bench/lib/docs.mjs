// Benchmark results in docs/benchmarks.md: each script owns one section between its own two markers.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT_DIR } from './procs.mjs';

/**
 * Puts `section` (which starts with `start` and ends with `end`) in place of the one between those markers in
 * docs/benchmarks.md, or at the end of the file when it has none yet.
 */
export function writeDocsSection(start, end, section) {
  const docs = join(ROOT_DIR, 'docs/benchmarks.md');
  const text = readFileSync(docs, 'utf8');
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  writeFileSync(
    docs,
    a >= 0 && b > a
      ? text.slice(0, a) + section + text.slice(b + end.length)
      : `${text.trimEnd()}\n\n${section}\n`,
  );
}
