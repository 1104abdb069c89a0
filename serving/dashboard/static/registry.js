// The model registry: models (#/registry), one model (#/registry/<model>) and one version
// (#/registry/<model>/<version>) with its lineage, and the services that follow its aliases.

import {
  h, fill, table, entries, facts, section, badge, link, stateBadge, api, enc, age, when, num, pairs,
} from './lib.js';
import { namespaceOf, serviceHref } from './services.js';
import { drawGraph } from './dag.js';

const R = '/api/registry/models';
const gateText = (g) => `${g.metric} ${g.op} ${num(g.threshold)}`;
const modelHref = (m) => `#/registry/${enc(m)}`;
const versionHref = (m, v) => `#/registry/${enc(m)}/${enc(v)}`;
/** registry://m/3 -> v3 (anything else as it is). */
const versionOf = (uri) => String(uri || '?').replace(/^registry:\/\/[^/]+\//, 'v');
const runLink = (run) => (run ? link(`#/pipelines/${enc(run)}`, run, { class: 'mono' }) : '');

/** Which services take `model` from the registry: one row per component whose manifest's
 *  storageUri is registry://model@alias or registry://model/N, with what its traffic runs now. */
export function followers(items, model) {
  const rows = [];
  const pattern = new RegExp(`^registry://${model.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(@[^/]+|/\\d+)$`);
  for (const s of items || []) {
    for (const [kind, comp] of Object.entries(s.spec || {})) {
      const uri = comp?.model?.storageUri || comp?.storageUri ||
        Object.values(comp || {}).find((v) => v && typeof v === 'object' && v.storageUri)?.storageUri;
      const match = typeof uri === 'string' && uri.match(pattern);
      if (!match) continue;
      const traffic = s.status?.components?.[kind]?.traffic || [];
      rows.push({
        service: s, kind, uri, alias: match[1].startsWith('@') ? match[1].slice(1) : null,
        pinned: traffic.map((t) => `${versionOf(t.storageUri)} ${t.percent}%`).join(' · '),
      });
    }
  }
  return rows;
}

function followersTable(rows) {
  return table([
    ['Service', (r) => link(serviceHref(r.service), r.service.metadata.name)],
    ['Namespace', (r) => namespaceOf(r.service)],
    ['Component', (r) => r.kind],
    ['Follows', (r) => r.uri],
    ['Serving now', (r) => r.pinned],
  ], rows, {
    rowProps: (r) => ({ testid: 'follower-row', data: { name: r.service.metadata.name } }),
    empty: 'No InferenceService takes this model from the registry.',
  });
}

// -- models ---------------------------------------------------------------------------------------

export async function registryView(ctx) {
  let models;
  try {
    models = (await api(R)).items || [];
  } catch (err) {
    return ctx.fail(err);
  }
  const follow = h('div');
  fill(ctx.root, h('h2', null, 'Model registry'),
    table([
      ['Model', (m) => link(modelHref(m.name), m.name, { class: 'strong' })],
      ['Latest', (m) => `v${m.latest_version}`],
      ['Aliases', (m) => Object.entries(m.aliases || {}).map(([a, v]) => badge(`${a} → v${v}`, 'neutral'))],
      ['Gates', (m) => (m.gates || []).map((g) => `${g.alias}: ${g.metric} ${g.op} ${num(g.threshold)}`).join('; ')],
      ['Updated', (m) => `${age(m.updated)} ago`],
    ], models, {
      rowProps: (m) => ({ testid: 'model-row', data: { name: m.name } }),
      empty: 'No registered models yet: `servegate registry register NAME PATH`.',
    }),
    section('Services following the registry', follow));
  ctx.live((items) => fill(follow, followersTable(models.flatMap((m) => followers(items, m.name)))));
}

// -- one model ------------------------------------------------------------------------------------

export async function modelView(ctx, name) {
  let model;
  let history;
  try {
    [model, history] = await Promise.all([api(`${R}/${enc(name)}`), api(`${R}/${enc(name)}/history`)]);
  } catch (err) {
    return ctx.fail(err);
  }
  const gatesOf = (alias) => (model.gates || []).filter((g) => g.alias === alias).map(gateText).join(', ');
  const follow = h('div');
  fill(ctx.root,
    h('nav', { class: 'crumbs' }, link('#/registry', 'Registry'), ' / ', name),
    h('h2', null, name), model.description ? h('p', null, model.description) : null,
    section('Aliases', table([
      ['Alias', (a) => a[0]],
      ['Version', (a) => link(versionHref(name, a[1]), `v${a[1]}`)],
      ['Gates', (a) => gatesOf(a[0]) || '–'],
    ], Object.entries(model.aliases || {}), {
      rowProps: (a) => ({ testid: 'alias-row', data: { alias: a[0] } }), empty: 'No aliases.',
    })),
    section('Promotion gates', table([
      ['Alias', (g) => g.alias],
      ['Gate', (g) => `${g.metric} ${g.op} ${num(g.threshold)}`],
    ], model.gates || [], { empty: 'No gates: any version may take any alias.' })),
    section('Versions', table([
      ['Version', (v) => link(versionHref(name, v.version), `v${v.version}`, { class: 'strong' })],
      ['Status', (v) => stateBadge(v.status)],
      ['Format', (v) => v.format],
      ['Metrics', (v) => pairs(v.metrics)],
      ['Aliases', (v) => (v.aliases || []).map((a) => badge(a, 'ok'))],
      ['Run', (v) => runLink(v.source?.run)],
      ['Dataset', (v) => h('span', { class: 'mono' }, v.source?.dataset || '')],
      ['Created', (v) => `${when(v.created)} by ${v.created_by}`],
    ], [...(model.versions || [])].reverse(), {
      rowProps: (v) => ({ testid: 'version-row', data: { version: v.version } }), empty: 'No versions.',
    })),
    section('Services following this model', follow),
    section('Audit history (newest first)', table([
      ['Time', (e) => when(e.time)],
      ['Who', (e) => e.actor],
      ['Action', (e) => e.action],
      ['Details', (e) => pairs(e.details)],
    ], [...(history.items || [])].reverse(), {
      rowProps: () => ({ testid: 'audit-row' }), empty: 'No changes recorded.',
    })));
  ctx.live((items) => fill(follow, followersTable(followers(items, name))));
}

// -- one version, with its lineage ----------------------------------------------------------------

/** Lineage nodes (GET /api/v1/lineage) as graph nodes; a click opens the run or the service. */
function lineageGraph(lineage) {
  const nodes = (lineage.nodes || []).map((n) => {
    const run = String(n.run || '');
    const sub = n.kind === 'step' ? `run ${run.length > 20 ? `…${run.slice(-6)}` : run}`
      : n.kind === 'artifact' ? `sha256 ${String(n.sha256 || '').slice(0, 12)}`
        : n.kind === 'service' ? (n.traffic || []).map((t) => `${t.percent}%`).join(' + ')
          : n.kind === 'registration' ? when(n.time) : '';
    const props = { testid: 'lineage-node', data: { kind: n.kind, id: n.id } };
    return { id: n.id, label: n.label || n.id, sub, kind: n.kind, state: n.state, raw: n, props };
  });
  const edges = (lineage.edges || []).map((e) => ({ from: e.source, to: e.target, label: e.kind }));
  return drawGraph(nodes, edges, {
    onSelect: ({ raw }) => {
      if (raw.kind === 'step' || raw.kind === 'artifact') location.hash = `#/pipelines/${enc(raw.run)}`;
      else if (raw.kind === 'service') location.hash = `#/services/${enc(raw.namespace)}/${enc(raw.name)}`;
    },
  });
}

export async function versionView(ctx, name, version) {
  let v;
  try {
    v = await api(`${R}/${enc(name)}/versions/${enc(version)}`);
  } catch (err) {
    return ctx.fail(err);
  }
  const uri = v.uri || `registry://${name}/${v.version}`;
  const serving = h('div');
  const lineage = h('div', { testid: 'lineage', class: 'lineage' }, h('p', { class: 'muted' }, 'Loading lineage…'));
  const sig = v.signature || {};
  const tensor = (t) => `${t.name} ${t.datatype} [${(t.shape || []).join(', ')}]`;
  const tensors = (list) => (list || []).map(tensor).join('; ');
  fill(ctx.root,
    h('nav', { class: 'crumbs' },
      link('#/registry', 'Registry'), ' / ', link(modelHref(name), name), ' / ', `v${v.version}`),
    h('h2', null, `${name} v${v.version} `, stateBadge(v.status)),
    facts([
      ['URI', uri],
      ['Aliases', (v.aliases || []).length ? v.aliases.map((a) => badge(a, 'ok')) : '–'],
      ['Format', v.format + (v.entry ? ` (${v.entry})` : '')],
      ['Artifact', `${v.artifact_name} (${v.artifact_kind}, ${num(v.size)} bytes)`],
      ['sha256', h('span', { class: 'mono' }, v.sha256)],
      ['Created', `${when(v.created)} by ${v.created_by}`],
      ['Trusted to run code', v.trusted ? 'yes' : 'no'],
      ['Description', v.description],
      ['Source', v.source?.uri],
      ['Pipeline run', runLink(v.source?.run)],
      ['Dataset', v.source?.dataset ? h('span', { class: 'mono' }, v.source.dataset) : null],
      ['Inputs', tensors(sig.inputs)],
      ['Outputs', tensors(sig.outputs)],
    ]),
    section('Metrics', entries(v.metrics, ['Metric', 'Value'], { testid: 'version-metrics', empty: 'No metrics.' })),
    section('Parameters', entries(v.params, ['Name', 'Value'], { empty: 'No parameters.' })),
    section('Tags', entries(v.tags, ['Tag', 'Value'], { empty: 'No tags.' })),
    section('Served by', serving),
    section('Lineage: from its data to the services that serve it', lineage));

  ctx.live((items) => {
    const rows = [];
    for (const s of items) {
      for (const [kind, comp] of Object.entries(s.status?.components || {})) {
        for (const t of comp.traffic || []) if (t.storageUri === uri) rows.push({ s, kind, t });
      }
    }
    fill(serving, table([
      ['Service', (r) => link(serviceHref(r.s), r.s.metadata.name)],
      ['Component', (r) => r.kind],
      ['Revision', (r) => r.t.revisionName],
      ['Traffic', (r) => `${r.t.percent}%`],
    ], rows, {
      rowProps: (r) => ({ testid: 'serving-row', data: { name: r.s.metadata.name } }),
      empty: 'No service sends traffic to this version.',
    }));
  });

  try {
    const answer = await api(`/api/v1/lineage?target=${enc(uri)}&direction=up`);
    fill(lineage, (answer.nodes || []).length
      ? lineageGraph(answer) : h('p', { class: 'muted' }, 'No lineage recorded for this version.'));
  } catch (err) {
    const text = err.status === 404 ? `No lineage recorded: ${err.message}` : `Lineage unavailable: ${err.message}`;
    fill(lineage, h('p', { class: 'muted' }, text));
  }
}
