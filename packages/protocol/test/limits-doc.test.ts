/**
 * docs/limits.md must list every constant of limits.ts with its exact value, so the document cannot
 * drift from the code. A row looks like `| `MAX_FRAME_BYTES` | 67108864 (64 MiB) | limits.ts | ... |`:
 * the first cell names the constant (backticks optional), the second starts with its value in decimal.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import * as limits from '../src/limits.js';

// Compiled to packages/protocol/dist/test/limits-doc.test.js: four levels below the repository root.
const docPath = resolve(dirname(fileURLToPath(import.meta.url)), '../../../../docs/limits.md');

interface Row {
  line: number;
  name: string;
  value: string;
  cells: string[];
}

/** The table rows of the document whose first cell is an UPPER_CASE identifier. */
function constantRows(text: string): Row[] {
  const rows: Row[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line.startsWith('|')) return;
    const cells = line
      .slice(1, line.endsWith('|') ? -1 : undefined)
      .split('|')
      .map((c) => c.trim());
    const name = (cells[0] ?? '').replace(/`/g, '');
    if (!/^[A-Z][A-Z0-9_]*$/.test(name)) return;
    const value = (cells[1] ?? '').replace(/`/g, '').split(/\s/)[0] ?? '';
    rows.push({ line: i + 1, name, value, cells });
  });
  return rows;
}

const numeric = Object.entries(limits).filter(
  (entry): entry is [string, number] => typeof entry[1] === 'number',
);

test('limits.ts exports the constants this test checks', (t) => {
  t.true(numeric.length >= 15, `found ${numeric.length} numeric constants`);
});

test('docs/limits.md lists every constant of limits.ts with its exact value', (t) => {
  const rows = constantRows(readFileSync(docPath, 'utf8'));
  for (const [name, value] of numeric) {
    const found = rows.filter((r) => r.name === name);
    t.is(found.length, 1, `${name}: expected exactly one row in docs/limits.md, found ${found.length}`);
    if (found.length !== 1) continue;
    const row = found[0]!;
    t.is(row.value, String(value), `${name} (docs/limits.md line ${row.line}): the code says ${value}`);
  }
});

test('every row of docs/limits.md that cites limits.ts names a constant that exists', (t) => {
  const rows = constantRows(readFileSync(docPath, 'utf8')).filter((r) =>
    r.cells.slice(2).some((c) => /\blimits\.ts\b/.test(c)),
  );
  t.true(rows.length > 0, 'the document cites limits.ts');
  const names = new Set(numeric.map(([name]) => name));
  for (const row of rows) {
    t.true(names.has(row.name), `docs/limits.md line ${row.line}: ${row.name} is not exported by limits.ts`);
  }
});
