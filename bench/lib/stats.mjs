// Latency samples, percentiles and text tables for the benchmark suite.

/**
 * Collects per-operation latencies (µs) into a preallocated Float64Array; `cap` bounds both memory and the
 * number of operations a load loop may run.
 */
export class Samples {
  constructor(cap) {
    this.values = new Float64Array(cap);
    this.count = 0;
  }

  get full() {
    return this.count >= this.values.length;
  }

  add(us) {
    if (this.count < this.values.length) this.values[this.count++] = us;
  }
}

/** Merges sample sets into one sorted Float64Array. */
export function mergeSorted(sets) {
  let n = 0;
  for (const s of sets) n += s.count;
  const all = new Float64Array(n);
  let at = 0;
  for (const s of sets) {
    all.set(s.values.subarray(0, s.count), at);
    at += s.count;
  }
  all.sort();
  return all;
}

/** Nearest-rank percentile of a sorted array (p in 0..100); NaN when empty. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

/** Summary of a sorted latency array measured over `seconds`. */
export function summarize(sorted, seconds) {
  return {
    ops: sorted.length,
    seconds,
    opsPerSec: sorted.length / seconds,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Formatting

export function fmtInt(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  return Math.round(n).toLocaleString('en-US');
}

export function fmtUs(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  if (n < 10) return n.toFixed(2);
  if (n < 100) return n.toFixed(1);
  return Math.round(n).toLocaleString('en-US');
}

export function fmtNum(n, digits = 1) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/**
 * Renders rows as an aligned text table. columns: [{ key, title, align: 'left'|'right' }]; rows hold
 * already formatted strings.
 */
export function textTable(columns, rows) {
  const widths = columns.map((c) =>
    Math.max(c.title.length, ...rows.map((r) => String(r[c.key] ?? '').length)),
  );
  const cell = (c, v, w) => (c.align === 'left' ? String(v).padEnd(w) : String(v).padStart(w));
  const lines = [];
  lines.push(columns.map((c, i) => cell(c, c.title, widths[i])).join('  '));
  lines.push(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) lines.push(columns.map((c, i) => cell(c, r[c.key] ?? '', widths[i])).join('  '));
  return lines.join('\n');
}

/** The same rows as a GitHub-flavoured Markdown table. */
export function markdownTable(columns, rows) {
  const esc = (v) => String(v ?? '').replaceAll('|', '\\|');
  const lines = [];
  lines.push(`| ${columns.map((c) => esc(c.title)).join(' | ')} |`);
  lines.push(`|${columns.map((c) => (c.align === 'left' ? '---' : '---:')).join('|')}|`);
  for (const r of rows) lines.push(`| ${columns.map((c) => esc(r[c.key])).join(' | ')} |`);
  return lines.join('\n');
}
