// A small SVG line chart (no plotting dependency): records/s against writer processes, one line per
// mechanism, one panel per durability mode; x on a log2 scale, y on a log10 scale.

const PALETTE = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#d62728',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#17becf',
  '#7f7f7f',
];

const esc = (s) =>
  String(s)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;');

function fmtTick(v) {
  if (v >= 1e6) return `${v / 1e6}M`;
  if (v >= 1e3) return `${v / 1e3}k`;
  return String(v);
}

/**
 * panels: [{ title, series: [{ label, points: [[writers, recordsPerSec], ...], color?, dash? }] }]
 * Series with the same label look the same in every panel. Returns the SVG text.
 */
export function renderChart({ title, subtitle, panels, xValues }) {
  const panelW = 470;
  const panelH = 330;
  const m = { left: 64, right: 16, top: 56, bottom: 44 };
  const legendH = 22 * Math.ceil(new Set(panels.flatMap((p) => p.series.map((s) => s.label))).size / 2) + 16;
  const width = m.left + panels.length * (panelW + m.right) + 10;
  const height = m.top + panelH + m.bottom + legendH;
  const labels = [...new Set(panels.flatMap((p) => p.series.map((s) => s.label)))];
  const first = (l) => panels.flatMap((p) => p.series).find((s) => s.label === l);
  const color = new Map(labels.map((l, i) => [l, first(l).color ?? PALETTE[i % PALETTE.length]]));
  const dashOf = (l) => first(l).dash ?? null;
  const empty = (l) =>
    !panels.some((p) => p.series.some((s) => s.label === l && s.points.some((q) => q[1] > 0)));

  const ys = panels.flatMap((p) => p.series.flatMap((s) => s.points.map((q) => q[1]))).filter((v) => v > 0);
  const yMin = 10 ** Math.floor(Math.log10(Math.min(...ys, 1e3)));
  const yMax = 10 ** Math.ceil(Math.log10(Math.max(...ys, 1e4)));
  const xMin = Math.log2(Math.min(...xValues));
  const xMax = Math.log2(Math.max(...xValues));

  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<title>${esc(title)}</title>`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${m.left}" y="20" font-size="15" font-weight="bold">${esc(title)}</text>`);
  if (subtitle) out.push(`<text x="${m.left}" y="38" fill="#555">${esc(subtitle)}</text>`);

  panels.forEach((panel, pi) => {
    const x0 = m.left + pi * (panelW + m.right);
    const y0 = m.top;
    const px = (w) => x0 + ((Math.log2(w) - xMin) / (xMax - xMin || 1)) * panelW;
    const py = (v) =>
      y0 + panelH - ((Math.log10(v) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * panelH;
    out.push(`<g>`);
    out.push(
      `<text x="${x0 + panelW / 2}" y="${y0 - 6}" text-anchor="middle" font-weight="bold">${esc(panel.title)}</text>`,
    );
    out.push(`<rect x="${x0}" y="${y0}" width="${panelW}" height="${panelH}" fill="none" stroke="#999"/>`);
    for (let d = yMin; d <= yMax; d *= 10) {
      const y = py(d).toFixed(1);
      out.push(`<line x1="${x0}" y1="${y}" x2="${x0 + panelW}" y2="${y}" stroke="#ddd"/>`);
      if (pi === 0)
        out.push(`<text x="${x0 - 6}" y="${Number(y) + 4}" text-anchor="end">${fmtTick(d)}</text>`);
      else out.push(`<text x="${x0 + 3}" y="${Number(y) - 3}" fill="#888">${fmtTick(d)}</text>`);
    }
    for (const w of xValues) {
      const x = px(w).toFixed(1);
      out.push(`<line x1="${x}" y1="${y0}" x2="${x}" y2="${y0 + panelH}" stroke="#eee"/>`);
      out.push(`<text x="${x}" y="${y0 + panelH + 16}" text-anchor="middle">${w}</text>`);
    }
    out.push(
      `<text x="${x0 + panelW / 2}" y="${y0 + panelH + 34}" text-anchor="middle">writer processes</text>`,
    );
    if (pi === 0)
      out.push(
        `<text transform="translate(16 ${y0 + panelH / 2}) rotate(-90)" text-anchor="middle">records/s (log scale)</text>`,
      );
    for (const s of panel.series) {
      const pts = s.points.filter((q) => q[1] > 0);
      if (pts.length === 0) continue;
      const c = color.get(s.label);
      const d = pts.map((q, i) => `${i ? 'L' : 'M'}${px(q[0]).toFixed(1)},${py(q[1]).toFixed(1)}`).join(' ');
      out.push(
        `<path d="${d}" fill="none" stroke="${c}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`,
      );
      for (const q of pts)
        out.push(`<circle cx="${px(q[0]).toFixed(1)}" cy="${py(q[1]).toFixed(1)}" r="3" fill="${c}"/>`);
    }
    out.push(`</g>`);
  });

  const ly = m.top + panelH + m.bottom + 8;
  labels.forEach((l, i) => {
    const col = i % 2;
    const row = Math.floor(i / 2);
    const x = m.left + col * 470;
    const y = ly + row * 22;
    const dash = dashOf(l);
    out.push(
      `<line x1="${x}" y1="${y}" x2="${x + 26}" y2="${y}" stroke="${color.get(l)}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`,
    );
    out.push(
      `<text x="${x + 32}" y="${y + 4}">${esc(l)}${empty(l) ? ' (no data: not available yet)' : ''}</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
