// A small line chart as SVG text: throughput against clients, one line per system, one panel per workload.
// Both axes are logarithmic (clients 1..32, ops/s spanning a few hundred to tens of thousands).

const COLORS = { redis: '#d62728', etcd: '#1f77b4', segmem: '#2ca02c' };
const MARKS = { redis: 'square', etcd: 'triangle', segmem: 'circle' };

const esc = (s) => String(s).replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');

function niceTicks(min, max) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= min * 0.999 && v <= max * 1.001) ticks.push(v);
    }
  }
  return ticks;
}

const fmtTick = (v) => (v >= 1000 ? `${v / 1000}k` : String(v));

function marker(kind, x, y, color) {
  if (kind === 'square') return `<rect x="${x - 4}" y="${y - 4}" width="8" height="8" fill="${color}"/>`;
  if (kind === 'triangle')
    return `<path d="M${x},${y - 5} L${x + 5},${y + 4} L${x - 5},${y + 4} Z" fill="${color}"/>`;
  return `<circle cx="${x}" cy="${y}" r="4.5" fill="${color}"/>`;
}

/**
 * panels: [{ title, series: [{ system, label, points: [{ clients, opsPerSec }] }] }]
 * Returns the SVG document as a string.
 */
export function throughputSvg(panels, { title, note = '' }) {
  const pw = 420;
  const ph = 300;
  const m = { l: 64, r: 16, t: 44, b: 48 };
  const width = panels.length * (pw + m.l + m.r);
  const height = ph + m.t + m.b + 46;
  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<title>${esc(title)}: ${esc(panels.map((p) => p.title).join('; '))}</title>`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="18" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
  );
  panels.forEach((panel, pi) => {
    const ox = pi * (pw + m.l + m.r) + m.l;
    const oy = m.t;
    const pts = panel.series.flatMap((s) => s.points).filter((p) => p.opsPerSec > 0);
    const clients = [...new Set(pts.map((p) => p.clients))].sort((a, b) => a - b);
    const cMin = Math.min(...clients);
    const cMax = Math.max(...clients);
    const yMin = 10 ** Math.floor(Math.log10(Math.min(...pts.map((p) => p.opsPerSec))));
    const yMax = 10 ** Math.ceil(Math.log10(Math.max(...pts.map((p) => p.opsPerSec))));
    const x = (c) =>
      ox +
      (cMax === cMin
        ? pw / 2
        : ((Math.log2(c) - Math.log2(cMin)) / (Math.log2(cMax) - Math.log2(cMin))) * pw);
    const y = (v) =>
      oy + ph - ((Math.log10(v) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * ph;
    out.push(
      `<text x="${ox + pw / 2}" y="${oy - 10}" text-anchor="middle" font-size="13" font-weight="bold">${esc(panel.title)}</text>`,
    );
    for (const t of niceTicks(yMin, yMax)) {
      out.push(
        `<line x1="${ox}" y1="${y(t)}" x2="${ox + pw}" y2="${y(t)}" stroke="#e3e3e3"/>`,
        `<text x="${ox - 6}" y="${y(t) + 4}" text-anchor="end">${fmtTick(t)}</text>`,
      );
    }
    for (const c of clients) {
      out.push(
        `<line x1="${x(c)}" y1="${oy}" x2="${x(c)}" y2="${oy + ph}" stroke="#f0f0f0"/>`,
        `<text x="${x(c)}" y="${oy + ph + 16}" text-anchor="middle">${c}</text>`,
      );
    }
    out.push(
      `<rect x="${ox}" y="${oy}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`,
      `<text x="${ox + pw / 2}" y="${oy + ph + 34}" text-anchor="middle">concurrent clients (log scale)</text>`,
      `<text transform="translate(${ox - 48},${oy + ph / 2}) rotate(-90)" text-anchor="middle">operations/s (log scale)</text>`,
    );
    for (const s of panel.series) {
      const ps = s.points.filter((p) => p.opsPerSec > 0).sort((a, b) => a.clients - b.clients);
      if (ps.length === 0) continue;
      const color = COLORS[s.system] ?? '#555';
      out.push(
        `<polyline fill="none" stroke="${color}" stroke-width="2" points="${ps.map((p) => `${x(p.clients).toFixed(1)},${y(p.opsPerSec).toFixed(1)}`).join(' ')}"/>`,
      );
      for (const p of ps) out.push(marker(MARKS[s.system], x(p.clients), y(p.opsPerSec), color));
    }
  });
  // One legend for all panels.
  const labels = panels[0]?.series ?? [];
  let lx = m.l;
  const ly = height - 22;
  for (const s of labels) {
    const color = COLORS[s.system] ?? '#555';
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 24}" y2="${ly}" stroke="${color}" stroke-width="2"/>`,
      marker(MARKS[s.system], lx + 12, ly, color),
      `<text x="${lx + 30}" y="${ly + 4}">${esc(s.label)}</text>`,
    );
    lx += 40 + s.label.length * 6.6;
  }
  if (note)
    out.push(
      `<text x="${width - 8}" y="${height - 6}" text-anchor="end" font-size="10" fill="#666">${esc(note)}</text>`,
    );
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
