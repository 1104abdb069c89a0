// Directed graphs drawn in SVG: dagre (vendored) places the nodes and routes the edges; the nodes,
// edges and labels are drawn here, so they take the page's CSS classes and test ids.

import { h } from './lib.js';

const CHAR_PX = 7.2;
const MAX_LABEL = 30;
let arrows = 0; // each SVG gets its own marker id

const clip = (text) => (text.length > MAX_LABEL ? `${text.slice(0, MAX_LABEL - 1)}…` : text);

function layout(nodes, edges, rankdir) {
  const g = new window.dagre.graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir, nodesep: 18, ranksep: rankdir === 'TB' ? 36 : 56, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  const known = new Set(nodes.map((n) => n.id));
  for (const n of nodes) {
    const longest = Math.max(clip(n.label).length, clip(n.sub || '').length);
    g.setNode(n.id, { width: Math.max(90, longest * CHAR_PX + 24), height: n.sub ? 44 : 30 });
  }
  edges.forEach((e, i) => {
    if (known.has(e.from) && known.has(e.to)) {
      g.setEdge(e.from, e.to, e.label ? { label: e.label, width: e.label.length * 6.5, height: 14 } : {}, `e${i}`);
    }
  });
  window.dagre.layout(g);
  return g;
}

/** What the drawing covers: dagre's own size leaves out edges routed around the nodes. */
function bounds(g) {
  const xs = [];
  const ys = [];
  for (const id of g.nodes()) {
    const { x, y, width, height } = g.node(id);
    xs.push(x - width / 2, x + width / 2);
    ys.push(y - height / 2, y + height / 2);
  }
  for (const e of g.edges()) {
    const { points = [], x, y, width = 0 } = g.edge(e);
    for (const p of points) { xs.push(p.x); ys.push(p.y); }
    if (x != null) { xs.push(x - width / 2, x + width / 2); ys.push(y - 10, y + 10); }
  }
  if (!xs.length) return { x: 0, y: 0, width: 100, height: 40 };
  const pad = 8;
  const x = Math.min(...xs) - pad;
  const y = Math.min(...ys) - pad;
  return { x, y, width: Math.max(...xs) + pad - x, height: Math.max(...ys) + pad - y };
}

/**
 * nodes: [{id, label, sub?, kind?, state?, props?}] (props: extra attributes of the node's <g>,
 *        e.g. {testid: 'dag-node', data: {step}}); edges: [{from, to, label?}].
 * onSelect(node): called on click or Enter; maxWidth: past it, the graph is laid out top to bottom.
 * Returns a scrollable <div> holding the <svg>.
 */
export function drawGraph(nodes, edges, { onSelect, maxWidth = window.innerWidth - 64 } = {}) {
  // Left to right reads best; a graph too wide for the screen goes top to bottom instead.
  let g = layout(nodes, edges, 'LR');
  if (bounds(g).width > maxWidth) g = layout(nodes, edges, 'TB');
  const box = bounds(g);
  const width = Math.ceil(box.width);
  const height = Math.ceil(box.height);
  const marker = `arrow-${++arrows}`;
  const svg = h('svg:svg', {
    class: 'dag', width, height,
    viewBox: `${box.x.toFixed(1)} ${box.y.toFixed(1)} ${width} ${height}`, role: 'img',
  }, h('svg:defs', null, h('svg:marker', {
    id: marker, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
  }, h('svg:path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'dag-arrow' }))));

  for (const e of g.edges()) {
    const { points = [], label, x, y } = g.edge(e);
    const d = points.map((p, i) => `${i ? 'L' : 'M'} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(' ');
    svg.append(h('svg:path', { d, class: 'dag-edge', 'marker-end': `url(#${marker})`, data: { from: e.v, to: e.w } }));
    if (label) svg.append(h('svg:text', { x, y: y + 4, class: 'dag-edge-label', 'text-anchor': 'middle' }, label));
  }

  const byId = new Map(nodes.map((n) => [n.id, n]));
  for (const id of g.nodes()) {
    const n = byId.get(id);
    const { x, y, width: w, height: hgt } = g.node(id);
    const state = String(n.state || '').toLowerCase();
    const select = (ev) => {
      ev?.preventDefault();
      onSelect(n);
    };
    const group = h('svg:g', {
      ...(n.props || {}),
      class: `dag-node kind-${n.kind || 'node'}${state ? ` state-${state}` : ''}${onSelect ? ' clickable' : ''}`,
      transform: `translate(${(x - w / 2).toFixed(1)} ${(y - hgt / 2).toFixed(1)})`,
      tabindex: onSelect ? 0 : null, role: onSelect ? 'button' : null,
      on: onSelect ? { click: select, keydown: (ev) => (ev.key === 'Enter' || ev.key === ' ') && select(ev) } : null,
    },
    h('svg:title', null, [n.label, n.sub].filter(Boolean).join('\n')),
    h('svg:rect', { width: w, height: hgt, rx: 6, ry: 6 }),
    h('svg:text', { x: w / 2, y: n.sub ? 18 : 19, 'text-anchor': 'middle', class: 'dag-label' }, clip(n.label)),
    n.sub ? h('svg:text', { x: w / 2, y: 35, 'text-anchor': 'middle', class: 'dag-sub' }, clip(n.sub)) : null);
    svg.append(group);
  }
  return h('div', { class: 'dag-box' }, svg);
}

/** Mark one node of a drawn graph as selected (by its id in `nodes`' props data). */
export function markSelected(box, attr, value) {
  for (const el of box.querySelectorAll('.dag-node')) el.classList.toggle('selected', el.dataset[attr] === value);
}
