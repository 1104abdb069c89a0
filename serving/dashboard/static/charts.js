// A service's time charts (uPlot, vendored): requests/s, error rate, p50/p99 latency per revision or
// variant, and replicas desired/ready per revision with the autoscaler's decisions as markers.
// Input: GET /api/v1/inferenceservices/{name}/history (series and replicas on their own time axes,
// null for gaps). uPlot wants one shared x axis, so every chart's lines are aligned onto the union
// of their times first.

import { h, fill, table, when, shortRevision } from './lib.js';

const COLORS = ['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed', '#0891b2', '#65a30d', '#dc2626'];
const color = (i) => COLORS[i % COLORS.length];

/** Lines with their own `t` arrays onto one x axis: [xs, ...ys] for uPlot (missing points null). */
export function align(lines) {
  const xs = [...new Set(lines.flatMap((l) => l.t))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const ys = lines.map((l) => {
    const out = new Array(xs.length).fill(null);
    l.t.forEach((x, i) => { out[at.get(x)] = l.values[i] ?? null; });
    return out;
  });
  return [xs, ...ys];
}

const lineName = (s) => shortRevision(s.revision) + (s.variant ? ` (${s.variant})` : '');

/** Each chart: its lines from a history answer, as [{label, t, values, dash}]. */
const CHARTS = [
  {
    key: 'rps', title: 'Requests/s', unit: 'req/s',
    lines: (hist) => (hist.series || []).map((s) => ({ label: lineName(s), t: s.t, values: s.rps })),
  },
  {
    key: 'errors', title: 'Error rate', unit: '%',
    lines: (hist) => (hist.series || []).map((s) => ({
      label: lineName(s), t: s.t, values: (s.errorRate || []).map((v) => (v == null ? null : v * 100)),
    })),
  },
  {
    key: 'latency', title: 'Latency p50 / p99', unit: 'ms',
    lines: (hist) => (hist.series || []).flatMap((s) => [
      { label: `${lineName(s)} p50`, t: s.t, values: s.p50 },
      { label: `${lineName(s)} p99`, t: s.t, values: s.p99, dash: true },
    ]),
  },
  {
    key: 'replicas', title: 'Replicas desired / ready', unit: 'replicas', markers: true,
    lines: (hist) => (hist.replicas || []).flatMap((r) => [
      { label: `${shortRevision(r.revision)} desired`, t: r.t, values: r.desired, dash: true },
      { label: `${shortRevision(r.revision)} ready`, t: r.t, values: r.ready },
    ]),
  },
];

/** Draws each autoscaler decision as a vertical line with a triangle (up or down) on the chart. */
function decisionMarkers(getDecisions) {
  const draw = (u) => {
    const { ctx, bbox } = u;
    for (const d of getDecisions()) {
      const x = Math.round(u.valToPos(d.t, 'x', true));
      if (x < bbox.left || x > bbox.left + bbox.width) continue;
      const up = d.direction === 'up';
      ctx.save();
      ctx.strokeStyle = ctx.fillStyle = up ? '#059669' : '#d97706';
      ctx.setLineDash([4, 4]);
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
      ctx.setLineDash([]);
      const y = bbox.top + 8 * devicePixelRatio;
      const s = 6 * devicePixelRatio;
      ctx.beginPath();
      ctx.moveTo(x - s, up ? y + s : y - s);
      ctx.lineTo(x + s, up ? y + s : y - s);
      ctx.lineTo(x, up ? y - s : y + s);
      ctx.fill();
      ctx.restore();
    }
  };
  return { hooks: { draw } };
}

/** The charts of one service, kept across refreshes: `update(history)` redraws in place. */
export class ServiceCharts {
  constructor() {
    this.el = h('div', { class: 'charts', testid: 'charts' });
    this.decisionsEl = h('div', { testid: 'decisions' });
    this.plots = new Map(); // chart key -> {plot, signature, box}
    this.decisions = [];
    this.onResize = () => {
      for (const { plot, box } of this.plots.values()) plot?.setSize(this.size(box));
    };
    window.addEventListener('resize', this.onResize);
  }

  size(box) {
    return { width: Math.max(240, box.clientWidth - 8), height: 180 };
  }

  update(hist) {
    this.decisions = hist.decisions || [];
    for (const chart of CHARTS) this.draw(chart, chart.lines(hist).filter((l) => l.t && l.t.length));
    fill(this.decisionsEl, this.decisions.length
      ? table([
        ['Time', (d) => when(d.t)],
        ['Revision', (d) => shortRevision(d.revision)],
        ['Change', (d) => `${d.direction === 'up' ? '▲' : '▼'} ${d.from ?? '–'} → ${d.to}`],
        ['Reason', (d) => d.reason],
      ], [...this.decisions].reverse(), { rowProps: () => ({ testid: 'decision' }) })
      : h('p', { class: 'muted' }, 'No autoscaler decisions in this hour.'));
  }

  draw(chart, lines) {
    let entry = this.plots.get(chart.key);
    if (!entry) {
      const box = h('div', { class: 'chart', testid: `chart-${chart.key}` });
      this.el.append(box);
      entry = { box, plot: null, signature: '' };
      this.plots.set(chart.key, entry);
    }
    const signature = lines.map((l) => l.label).join('|');
    const heading = h('h4', null, `${chart.title} (${chart.unit})`);
    if (!lines.length) {
      entry.plot?.destroy();
      entry.plot = null;
      entry.signature = '';
      fill(entry.box, heading, h('p', { class: 'muted empty-chart' }, 'No data in this hour yet.'));
      return;
    }
    const data = align(lines);
    if (entry.plot && signature === entry.signature) {
      entry.plot.setData(data);
      return;
    }
    entry.plot?.destroy();
    fill(entry.box, heading);
    const floor = chart.key === 'replicas' ? 2 : 1;
    const opts = {
      ...this.size(entry.box),
      // From 0, and at least 0..1 (0..2 replicas) so that a quiet service does not chart noise.
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, floor) * 1.1] } },
      axes: [{}, { size: 50 }],
      series: [{}, ...lines.map((l, i) => ({
        label: l.label,
        stroke: color(chart.key === 'latency' || chart.key === 'replicas' ? Math.floor(i / 2) : i),
        width: 2,
        dash: l.dash ? [6, 4] : undefined,
        spanGaps: false,
        value: (u, v) => (v == null ? '–' : +v.toFixed(3)),
      }))],
      plugins: chart.markers ? [decisionMarkers(() => this.decisions)] : [],
    };
    entry.plot = new window.uPlot(opts, data, entry.box);
    entry.signature = signature;
  }

  destroy() {
    window.removeEventListener('resize', this.onResize);
    for (const { plot } of this.plots.values()) plot?.destroy();
    this.plots.clear();
  }
}
