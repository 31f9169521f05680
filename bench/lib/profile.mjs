// Reads the .cpuprofile files `node --cpu-prof` wrote and ranks functions by self time.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

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
      const row = byKey.get(key) ?? { fn, where, selfUs: 0 };
      row.selfUs += us;
      byKey.set(key, row);
    }
  }
  const rows = [...byKey.values()]
    .sort((a, b) => b.selfUs - a.selfUs)
    .slice(0, limit)
    .map((r) => ({ fn: r.fn, where: r.where, selfMs: r.selfUs / 1000, share: totalUs > 0 ? r.selfUs / totalUs : 0 }));
  return { totalMs: totalUs / 1000, rows, files: files.length };
}
