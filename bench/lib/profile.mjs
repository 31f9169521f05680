// Reads the .cpuprofile files `node --cpu-prof` wrote and ranks functions by self time.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fmtInt, fmtNum } from './stats.mjs';

function shortUrl(url, root) {
  if (!url) return '';
  if (url.startsWith('file://')) {
    try {
      return relative(root, fileURLToPath(url));
    } catch {
      return url;
    }
  }
  return url;
}

/**
 * Aggregates self time per function (name + file + line) over every profile in `dir`.
 * Returns { totalMs, rows: [{ fn, where, selfMs, share }] } sorted by self time, longest first.
 */
export function topSelfTime(dir, root, limit = 15) {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  const byKey = new Map();
  let totalUs = 0;
  for (const f of files) {
    const prof = JSON.parse(readFileSync(join(dir, f), 'utf8'));
    const nodeById = new Map(prof.nodes.map((n) => [n.id, n]));
    const parentOf = new Map();
    for (const n of prof.nodes) for (const c of n.children ?? []) parentOf.set(c, n);
    const self = new Map();
    const { samples = [], timeDeltas = [] } = prof;
    for (let i = 0; i < samples.length; i++) {
      // The time until the next sample is spent where this sample was taken.
      const dt = i + 1 < timeDeltas.length ? timeDeltas[i + 1] : 0;
      if (dt <= 0) continue;
      self.set(samples[i], (self.get(samples[i]) ?? 0) + dt);
      totalUs += dt;
    }
    for (const [id, us] of self) {
      const n = nodeById.get(id);
      if (!n) continue;
      const cf = n.callFrame;
      const fn = cf.functionName || '(anonymous)';
      const where = cf.url ? `${shortUrl(cf.url, root)}:${cf.lineNumber + 1}` : '';
      const key = `${fn}\u0000${where}`;
      const row = byKey.get(key) ?? { fn, where, selfUs: 0, callers: new Map() };
      row.selfUs += us;
      // The nearest JavaScript caller (skipping native frames), to tell e.g. a socket write from a file write.
      let p = parentOf.get(id);
      while (p && !p.callFrame.url && p.callFrame.functionName !== '(root)') p = parentOf.get(p.id);
      if (p?.callFrame.url) {
        const ck = `${p.callFrame.functionName || '(anonymous)'} ${shortUrl(p.callFrame.url, root)}:${p.callFrame.lineNumber + 1}`;
        row.callers.set(ck, (row.callers.get(ck) ?? 0) + us);
      }
      byKey.set(key, row);
    }
  }
  const rows = [...byKey.values()]
    .sort((a, b) => b.selfUs - a.selfUs)
    .slice(0, limit)
    .map((r) => {
      const caller = [...r.callers.entries()].sort((a, b) => b[1] - a[1])[0];
      return {
        fn: r.fn,
        where: r.where,
        caller: caller ? caller[0] : '',
        selfMs: r.selfUs / 1000,
        share: totalUs > 0 ? r.selfUs / totalUs : 0,
      };
    });
  return { totalMs: totalUs / 1000, rows, files: files.length };
}

/** Table columns for {@link profileTableRows} (textTable / markdownTable of stats.mjs). */
export function profileColumns(shareTitle = 'share') {
  return [
    { key: 'rank', title: '#' },
    { key: 'fn', title: 'function', align: 'left' },
    { key: 'where', title: 'where', align: 'left' },
    { key: 'caller', title: 'main caller', align: 'left' },
    { key: 'self', title: 'self ms' },
    { key: 'share', title: shareTitle },
  ];
}

/** Rows of {@link topSelfTime} formatted for a table; `shareOf` picks the fraction shown. */
export function profileTableRows(rows, shareOf = (r) => r.share) {
  return rows.map((r, i) => ({
    rank: String(i + 1),
    fn: r.fn,
    where: r.where || '(native / VM)',
    caller: r.caller || '–',
    self: fmtInt(r.selfMs),
    share: `${fmtNum(shareOf(r) * 100)} %`,
  }));
}
