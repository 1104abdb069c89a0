// InferenceServices: the live list (#/services) and one service (#/services/<ns>/<name>).

import {
  h, fill, table, section, badge, link, stateBadge, api, enc, session, age, when, toYaml, shortRevision,
} from './lib.js';
import { ServiceCharts } from './charts.js';

export const namespaceOf = (s) => s.metadata?.namespace || 'default';
const components = (s) => Object.entries(s.status?.components || {});
const predictor = (s) => s.status?.components?.predictor || {};
export const serviceHref = (s) => `#/services/${enc(namespaceOf(s))}/${enc(s.metadata.name)}`;

/** The Ready condition as a badge (its message as the tooltip when not ready). */
export function readyBadge(s) {
  const c = (s.status?.conditions || []).find((x) => x.type === 'Ready');
  if (!c) return badge('Unknown', 'neutral');
  return c.status === 'True' ? badge('Ready', 'ok') : badge('Not ready', 'bad', c.message || c.reason);
}

function bar(props, name, note, percent, kind) {
  const fillEl = h('span', { class: `fill ${kind}` });
  fillEl.style.width = `${Math.max(0, Math.min(100, Number(percent) || 0))}%`;
  return h('div', { class: 'traffic-row', ...props, title: `${name} ${note} ${percent}%` },
    h('span', { class: 'traffic-name' }, name, note ? h('small', null, ` ${note}`) : null),
    h('span', { class: 'bar' }, fillEl),
    h('span', { class: 'pct' }, `${percent}%`));
}

/** The predictor's traffic split, one bar per revision (canary marked), then the A/B variants and
 *  the shadow copy when the manifest has `experiment` / `shadow`. */
export function trafficBars(s) {
  const traffic = predictor(s).traffic || [];
  const rows = traffic.map((t) => {
    const split = traffic.length > 1;
    const note = split ? (t.latestRevision ? 'canary' : 'stable') : '';
    return bar({ testid: 'traffic-bar', data: { revision: t.revisionName, percent: t.percent } },
      shortRevision(t.revisionName), note, t.percent, split && t.latestRevision ? 'canary' : 'stable');
  });
  for (const v of s.spec?.experiment?.variants || []) {
    const target = v.service ? `→ ${v.service}` : v.revision ? `→ ${shortRevision(v.revision)}` : '';
    const props = { testid: 'variant-bar', data: { variant: v.name, percent: v.weight } };
    rows.push(bar(props, `A/B ${v.name}`, target, v.weight, 'variant'));
  }
  const shadow = s.spec?.shadow;
  if (shadow) {
    const percent = shadow.percent ?? 100;
    const target = shadow.service || shortRevision(shadow.revision);
    const props = { testid: 'shadow-bar', data: { target, percent } };
    rows.push(bar(props, 'shadow', `copy → ${target}`, percent, 'shadow'));
  }
  return rows.length ? h('div', { class: 'traffic' }, rows) : h('span', { class: 'muted' }, 'no traffic yet');
}

/** Ready/desired replicas of each revision: "00002 1/1". */
function replicaCounts(s) {
  const out = [];
  for (const [, comp] of components(s)) {
    for (const [rev, pool] of Object.entries(comp.replicas || {})) {
      const full = pool.ready >= pool.desired;
      out.push(h('div', { class: `replica-count ${full ? '' : 'short'}`, data: { revision: rev } },
        `${shortRevision(rev)} ${pool.ready}/${pool.desired}`));
    }
  }
  return out.length ? out : h('span', { class: 'muted' }, '–');
}

// -- the list -------------------------------------------------------------------------------------

/** What a row shows, as a string: rows whose services changed elsewhere (autoscaler readings,
 *  pool events) are not rebuilt on every live update. */
function rowSignature(s) {
  const ready = (s.status?.conditions || []).find((c) => c.type === 'Ready');
  const pools = components(s).map(([, c]) => Object.entries(c.replicas || {}).map(([r, p]) => [r, p.ready, p.desired]));
  return JSON.stringify([s.metadata.name, namespaceOf(s), s.status?.url, ready?.status, ready?.message,
    predictor(s).traffic, s.spec?.experiment, s.spec?.shadow, pools, age(s.metadata.creationTimestamp)]);
}

let namespaceFilter = ''; // kept while the page is open
const COLUMNS = ['Name', 'Namespace', 'URL', 'Ready', 'Traffic', 'Replicas', 'Age'];

function serviceRow(s) {
  const name = s.metadata.name;
  const url = s.status?.url || '';
  const cell = (label, ...content) => h('td', { 'data-label': label, class: label === 'Traffic' ? 'wide' : null },
    h('div', { class: 'cell' }, content));
  return h('tr', { testid: 'service-row', data: { name, namespace: namespaceOf(s) } },
    cell('Name', link(serviceHref(s), name, { class: 'strong' })),
    cell('Namespace', namespaceOf(s)),
    cell('URL', h('span', { class: 'url' }, url)),
    cell('Ready', readyBadge(s)),
    cell('Traffic', trafficBars(s)),
    cell('Replicas', replicaCounts(s)),
    cell('Age', age(s.metadata.creationTimestamp)));
}

export function servicesView(ctx) {
  const select = h('select', { testid: 'namespace-filter', 'aria-label': 'Namespace' });
  const count = h('span', { class: 'muted', testid: 'service-count' });
  const body = h('tbody');
  const grid = h('table', { class: 'grid services', testid: 'services' },
    h('thead', null, h('tr', null, COLUMNS.map((t) => h('th', null, t)))),
    body);
  const empty = h('p', { class: 'muted', testid: 'services-empty', hidden: true });
  const waiting = h('p', { class: 'muted' }, 'Loading…');
  select.addEventListener('change', () => { namespaceFilter = select.value; if (latest) render(latest); });
  const toolbar = h('div', { class: 'toolbar' }, h('h2', null, 'InferenceServices'), select, count);
  fill(ctx.root, toolbar, waiting, grid, empty);
  grid.hidden = true;

  const rows = new Map(); // namespace/name -> {sig, tr}: a row is rebuilt only when what it shows changed
  let order = '';
  let latest = null;
  let namespaces = '';
  function render(items) {
    latest = items;
    waiting.remove();
    const all = [...new Set(items.map(namespaceOf))].sort();
    if (namespaceFilter && !all.includes(namespaceFilter)) all.push(namespaceFilter);
    if (all.join('\n') !== namespaces) {
      namespaces = all.join('\n');
      fill(select, h('option', { value: '' }, 'all namespaces'), all.map((n) => h('option', { value: n }, n)));
    }
    select.value = namespaceFilter;
    const shown = items.filter((s) => !namespaceFilter || namespaceOf(s) === namespaceFilter)
      .sort((a, b) => namespaceOf(a).localeCompare(namespaceOf(b)) || a.metadata.name.localeCompare(b.metadata.name));
    const keys = shown.map((s) => `${namespaceOf(s)}/${s.metadata.name}`);
    const trs = shown.map((s, i) => {
      const sig = rowSignature(s);
      const row = rows.get(keys[i]);
      if (row && row.sig === sig) return row.tr;
      const tr = serviceRow(s);
      if (row) row.tr.replaceWith(tr); // in place: the rest of the table is left alone
      rows.set(keys[i], { sig, tr });
      return tr;
    });
    if (keys.join('\n') !== order) { // added, removed or filtered: lay the body out again
      order = keys.join('\n');
      const frag = document.createDocumentFragment();
      frag.append(...trs);
      body.replaceChildren(frag);
      const keep = new Set(keys);
      for (const key of rows.keys()) if (!keep.has(key)) rows.delete(key);
    }
    count.textContent = namespaceFilter ? `${shown.length} of ${items.length}` : `${items.length}`;
    grid.hidden = !shown.length;
    empty.hidden = shown.length > 0;
    empty.textContent = items.length
      ? `No InferenceServices in namespace ${namespaceFilter}.`
      : 'No InferenceServices yet: apply one with `servegate apply -f isvc.yaml`.';
  }
  ctx.live(render);
}

// -- one service ----------------------------------------------------------------------------------

function conditionsTable(s) {
  return table([
    ['Type', (c) => c.type],
    ['Status', (c) => stateBadge(c.status)],
    ['Reason', (c) => c.reason || ''],
    ['Message', (c) => c.message || ''],
    ['Since', (c) => when(c.lastTransitionTime)],
  ], s.status?.conditions || [], { testid: 'conditions', empty: 'No conditions reported.' });
}

function replicasBlock(s, openLog) {
  const blocks = [];
  for (const [kind, comp] of components(s)) {
    const share = new Map((comp.traffic || []).map((t) => [t.revisionName, t.percent]));
    for (const [rev, pool] of Object.entries(comp.replicas || {})) {
      const percent = share.has(rev) ? `${share.get(rev)}% of traffic` : 'no traffic';
      const auto = pool.autoscaler;
      blocks.push(h('div', { class: 'revision', testid: 'revision', data: { revision: rev } },
        h('h4', null, `${kind} ${rev} `,
          h('small', { class: 'muted' }, `${percent} · ${pool.ready}/${pool.desired} ready`)),
        pool.storageUri ? h('p', { class: 'muted url' }, pool.storageUri) : null,
        auto ? h('p', { class: 'muted' }, `autoscaler: ${auto.reason}`,
          auto.panic && !/panic/.test(auto.reason) ? ' (panic)' : '',
          auto.error ? ` — ${auto.error}` : '') : null,
        pool.reason ? h('p', { class: 'error' }, pool.reason) : null,
        table([
          ['Replica', (r) => r.id],
          ['State', (r) => stateBadge(r.state)],
          ['Node', (r) => r.node || ''],
          ['Restarts', (r) => String(r.restarts ?? 0)],
          ['Reason', (r) => r.reason || ''],
          ['Log', (r) => h('button', {
            type: 'button', class: 'linklike', testid: 'replica-log-link', data: { replica: r.id },
            on: { click: () => openLog(r.id) },
          }, 'log')],
        ], pool.replicas || [], {
          rowProps: (r) => ({ testid: 'replica-row', data: { replica: r.id } }), empty: 'No replicas.',
        })));
    }
  }
  return blocks.length ? blocks : h('p', { class: 'muted' }, 'No revisions yet.');
}

const manifestOf = (s) => ({ apiVersion: s.apiVersion, kind: s.kind, metadata: s.metadata, spec: s.spec });

export async function serviceView(ctx, ns, name) {
  let isvc;
  try {
    isvc = await api(`/api/v1/inferenceservices/${enc(name)}`);
  } catch (err) {
    return ctx.fail(err);
  }
  if (namespaceOf(isvc) !== ns) {
    return ctx.notFound(`InferenceService '${name}' is not in namespace '${ns}' (it is in '${namespaceOf(isvc)}').`);
  }
  const base = `/api/v1/inferenceservices/${enc(name)}`;
  const title = h('h2', null, name, ' ');
  const ready = h('span');
  const url = h('p', { class: 'url muted' });
  const gone = h('p', { class: 'error', hidden: true }, 'This InferenceService no longer exists.');
  const traffic = h('div', { testid: 'traffic' });
  const replicas = h('div');
  const conditions = h('div');
  const events = h('div', { testid: 'events' });
  const manifest = h('pre', { class: 'code', testid: 'manifest' });
  const logTitle = h('h4');
  const logText = h('pre', { class: 'log', testid: 'replica-log' });
  const logBox = h('div', { class: 'log-box', hidden: true }, logTitle, logText);
  const charts = new ServiceCharts();
  const chartNote = h('p', { class: 'muted' });
  ctx.onCleanup(() => charts.destroy());

  let actions = null;
  if (session.canDeploy) {
    const message = h('p', { class: 'action-message', testid: 'action-message', role: 'status' });
    const buttons = [];
    const act = async (what) => {
      buttons.forEach((b) => { b.disabled = true; });
      message.className = 'action-message';
      message.textContent = `${what}…`;
      try {
        const answer = await api(`${base}/${what}`, { method: 'POST' });
        message.classList.add('ok');
        message.textContent = answer?.message || `${what} done`;
      } catch (err) {
        message.classList.add('bad');
        message.textContent = err.message;
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    const button = (what, label, cls) => h('button', {
      type: 'button', testid: what, class: cls, on: { click: () => act(what) },
    }, label);
    buttons.push(button('promote', 'Promote'), button('rollback', 'Rollback', 'secondary'));
    actions = h('div', { class: 'actions' }, buttons, message);
  }

  let logReplica = null;
  async function openLog(replica) {
    logReplica = replica;
    logBox.hidden = false;
    logTitle.textContent = `Log of ${replica} (last 200 lines)`;
    logText.textContent = 'Loading…';
    logText.classList.remove('error');
    try {
      const answer = await api(`${base}/replicas/${enc(replica)}/log?lines=200`);
      if (logReplica !== replica) return;
      logText.textContent = (answer.lines || []).join('\n') || '(empty)';
      logText.scrollTop = logText.scrollHeight;
    } catch (err) {
      if (logReplica !== replica) return;
      logText.classList.add('error');
      logText.textContent = err.message;
    }
  }

  fill(ctx.root,
    h('nav', { class: 'crumbs' }, link('#/services', 'Services'), ' / ', ns, ' / ', name),
    h('div', { class: 'service-head' }, title, ready), url, gone, actions,
    section('Traffic', traffic),
    section('Last hour', chartNote, charts.el, h('h4', null, 'Autoscaler decisions'), charts.decisionsEl),
    section('Revisions and replicas', replicas, logBox),
    section('Conditions', conditions),
    section('Events (newest first)', events),
    section('Manifest (YAML)', manifest));

  const shown = { status: '', spec: '' };
  function show(s) {
    isvc = s;
    const status = JSON.stringify(s.status);
    if (status !== shown.status) {
      shown.status = status;
      fill(ready, readyBadge(s));
      url.textContent = s.status?.url || '';
      fill(traffic, trafficBars(s));
      fill(replicas, replicasBlock(s, openLog));
      fill(conditions, conditionsTable(s));
    }
    const spec = JSON.stringify(manifestOf(s));
    if (spec !== shown.spec) {
      shown.spec = spec;
      manifest.textContent = toYaml(manifestOf(s));
    }
  }
  show(isvc);
  ctx.live((items) => {
    const found = items.find((s) => s.metadata.name === name);
    gone.hidden = Boolean(found);
    if (found) show(found);
  });

  ctx.every(5000, async () => {
    const [hist, evs] = await Promise.allSettled([api(`${base}/history?minutes=60`), api(`${base}/events`)]);
    if (hist.status === 'fulfilled') {
      chartNote.textContent = '';
      charts.update(hist.value || {});
    } else chartNote.textContent = `No metric history: ${hist.reason.message}`;
    if (evs.status === 'fulfilled') {
      const items = [...(evs.value?.items || [])].sort((a, b) => (b.time || 0) - (a.time || 0));
      fill(events, table([
        ['Time', (e) => when(e.time)],
        ['Type', (e) => badge(e.type || '', e.type === 'Warning' ? 'bad' : 'neutral')],
        ['Reason', (e) => e.reason || ''],
        ['Message', (e) => e.message || ''],
        ['By', (e) => e.actor || ''],
      ], items, { rowProps: () => ({ testid: 'event-row' }), empty: 'No events.' }));
    } else fill(events, h('p', { class: 'error' }, evs.reason.message));
  });
}
