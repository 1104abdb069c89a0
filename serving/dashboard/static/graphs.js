// InferenceGraphs (#/graphs, #/graphs/<name>): routing nodes and the services their steps call,
// drawn as a graph, with each service's Ready state from the live feed.

import { h, fill, table, section, link, api, enc, age, toYaml } from './lib.js';
import { namespaceOf, readyBadge, serviceHref } from './services.js';
import { drawGraph } from './dag.js';

const G = '/api/v1/inferencegraphs';
const graphHref = (g) => `#/graphs/${enc(g.metadata.name)}`;
const nodesOf = (g) => Object.entries(g.spec?.nodes || {});
const stepsOf = (g) => nodesOf(g)
  .flatMap(([node, n]) => (n.steps || []).map((s, i) => ({ node, type: n.routerType, s, i })));
const servicesOf = (g) => [...new Set(stepsOf(g).map((r) => r.s.serviceName).filter(Boolean))];

export async function graphsView(ctx) {
  let graphs;
  try {
    graphs = (await api(G)).items || [];
  } catch (err) {
    return ctx.fail(err);
  }
  fill(ctx.root, h('h2', null, 'InferenceGraphs'), table([
    ['Name', (g) => link(graphHref(g), g.metadata.name, { class: 'strong' })],
    ['Namespace', (g) => namespaceOf(g)],
    ['Nodes', (g) => nodesOf(g).map(([name, n]) => `${name} (${n.routerType})`).join(', ')],
    ['Services', (g) => servicesOf(g).join(', ')],
    ['URL', (g) => h('span', { class: 'url' }, g.status?.url || '')],
    ['Age', (g) => age(g.metadata.creationTimestamp)],
  ], graphs, {
    rowProps: (g) => ({ testid: 'graph-row', data: { name: g.metadata.name } }), empty: 'No InferenceGraphs.',
  }));
}

function edgeLabel(routerType, step, i) {
  if (routerType === 'Splitter') return `${step.weight ?? 0}%`;
  if (routerType === 'Switch') return step.condition || '(no condition)';
  if (routerType === 'Sequence') return `${i + 1}${step.name ? ` ${step.name}` : ''}`;
  return step.name || '';
}

/** The graph's drawing: a `request` entry, one box per node, one per service or URL a step calls. */
function graphDrawing(g, services) {
  const byName = new Map((services || []).map((s) => [s.metadata.name, s]));
  const nodes = [{ id: 'in', label: 'request', kind: 'entry' }];
  const edges = [{ from: 'in', to: 'node:root' }];
  const targets = new Map();
  for (const [name, node] of nodesOf(g)) {
    const props = { testid: 'graph-node', data: { node: name } };
    nodes.push({ id: `node:${name}`, label: name, sub: node.routerType, kind: 'router', props });
    (node.steps || []).forEach((step, i) => {
      let id;
      if (step.nodeName) id = `node:${step.nodeName}`;
      else if (step.serviceName) {
        id = `service:${step.serviceName}`;
        const s = byName.get(step.serviceName);
        const ready = s ? readyBadge(s).textContent : 'unknown service';
        targets.set(id, {
          id, label: step.serviceName, sub: ready, kind: 'service', state: ready === 'Ready' ? 'ready' : 'failed',
          service: s, props: { testid: 'graph-service', data: { service: step.serviceName } },
        });
      } else if (step.serviceUrl) {
        id = `url:${step.serviceUrl}`;
        targets.set(id, { id, label: step.serviceUrl, sub: 'URL', kind: 'url' });
      } else return;
      edges.push({ from: `node:${name}`, to: id, label: edgeLabel(node.routerType, step, i) });
    });
  }
  nodes.push(...targets.values());
  return drawGraph(nodes, edges, { onSelect: (n) => { if (n.service) location.hash = serviceHref(n.service); } });
}

export async function graphView(ctx, name) {
  let g;
  try {
    g = await api(`${G}/${enc(name)}`);
  } catch (err) {
    return ctx.fail(err);
  }
  const drawing = h('div', { testid: 'graph' });
  const stepsBox = h('div');
  const steps = stepsOf(g);
  const manifest = { apiVersion: g.apiVersion, kind: g.kind, metadata: g.metadata, spec: g.spec };
  const target = (r, byName) => {
    if (r.s.nodeName) return `node ${r.s.nodeName}`;
    if (!r.s.serviceName) return r.s.serviceUrl || '';
    const s = byName.get(r.s.serviceName);
    return s ? link(serviceHref(s), r.s.serviceName) : `${r.s.serviceName} (not found)`;
  };
  fill(ctx.root,
    h('nav', { class: 'crumbs' }, link('#/graphs', 'InferenceGraphs'), ' / ', name),
    h('h2', null, name), h('p', { class: 'url muted' }, g.status?.url || ''),
    section('Graph', drawing),
    section('Steps', stepsBox),
    section('Manifest (YAML)', h('pre', { class: 'code', testid: 'manifest' }, toYaml(manifest))));
  let shown = null;
  const draw = (items) => {
    const conditions = (n) => items.find((s) => s.metadata.name === n)?.status?.conditions;
    const states = JSON.stringify(servicesOf(g).map(conditions));
    if (states === shown) return;
    shown = states;
    const byName = new Map(items.map((s) => [s.metadata.name, s]));
    fill(drawing, graphDrawing(g, items));
    fill(stepsBox, table([
      ['Node', (r) => `${r.node} (${r.type})`],
      ['Step', (r) => r.s.name || `#${r.i + 1}`],
      ['Target', (r) => target(r, byName)],
      ['Weight', (r) => (r.s.weight == null ? '' : `${r.s.weight}%`)],
      ['Condition', (r) => r.s.condition || ''],
      ['Data', (r) => r.s.data || ''],
      ['Dependency', (r) => r.s.dependency || ''],
    ], steps, { empty: 'No steps.' }));
  };
  draw([]);
  ctx.live(draw);
}
