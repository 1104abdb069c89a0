// Pipeline runs (#/pipelines) and one run's DAG (#/pipelines/<run>): click a step for its attempts,
// cache source, parameters, artifacts, metrics and log.

import {
  h, fill, table, entries, facts, section, link, stateBadge, api, enc, when, duration, num, pairs,
} from './lib.js';
import { drawGraph, markSelected } from './dag.js';

const P = '/api/v1/pipelines/runs';
const runHref = (id) => `#/pipelines/${enc(id)}`;
/** Steps by state, "5 succeeded, 1 cached": from a run summary's counts or a run's list of steps. */
function counts(steps) {
  let byState = steps || {};
  if (Array.isArray(steps)) {
    byState = {};
    for (const s of steps) byState[s.state] = (byState[s.state] || 0) + 1;
  }
  return Object.entries(byState).map(([state, n]) => `${n} ${String(state).toLowerCase()}`).join(', ');
}

export function runsView(ctx) {
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  fill(ctx.root, h('h2', null, 'Pipeline runs'), body);
  let shown = '';
  ctx.every(5000, async () => {
    let runs;
    try {
      runs = (await api(`${P}?limit=50`)).items || [];
    } catch (err) {
      shown = '';
      const text = err.status === 404 ? `No pipeline runs (${err.message}).` : err.message;
      fill(body, h('p', { class: 'muted', testid: 'runs-empty' }, text));
      return;
    }
    const sig = JSON.stringify(runs);
    if (sig === shown) return;
    shown = sig;
    fill(body, table([
      ['Run', (r) => link(runHref(r.id), r.id, { class: 'mono strong' })],
      ['Pipeline', (r) => r.pipeline],
      ['Status', (r) => stateBadge(r.status)],
      ['Executor', (r) => r.executor],
      ['Started', (r) => when(r.started)],
      ['Duration', (r) => (r.duration_s == null ? 'running' : duration(r.duration_s))],
      ['Steps', (r) => counts(r.steps)],
    ], runs, {
      rowProps: (r) => ({ testid: 'run-row', data: { run: r.id } }),
      empty: 'No pipeline runs yet: `servegate pipeline run FILE.py`.', testid: 'runs',
    }));
  });
}

function stepNode(step) {
  const attempts = step.attempts > 1 ? ` · ${step.attempts} attempts` : '';
  return {
    id: step.id, label: step.id, sub: `${String(step.state).toLowerCase()}${attempts}`,
    kind: 'step', state: step.state, step, props: { testid: 'dag-node', data: { step: step.id, state: step.state } },
  };
}

function stepPanel(run, step) {
  const log = h('pre', { class: 'log', testid: 'step-log' }, 'Loading…');
  const source = step.cache_source;
  const panel = h('div', { class: 'step-detail', testid: 'step-detail', data: { step: step.id } },
    h('h3', null, `Step ${step.id} `, stateBadge(step.state)),
    facts([
      ['Component', step.component],
      ['Attempts', String(step.attempts ?? 0)],
      ['Started', when(step.started)],
      ['Duration', duration(step.duration_s)],
      ['Cache', source
        ? h('span', null, 'reused from run ', link(runHref(source.run), source.run, { class: 'mono' }),
          ` step ${source.step}`)
        : 'ran (not from cache)'],
    ]),
    step.error ? h('pre', { class: 'error' }, step.error) : null,
    h('h4', null, 'Parameters'),
    entries(step.parameters, ['Name', 'Value'], { empty: 'No parameters.' }),
    h('h4', null, 'Outputs'),
    entries(step.outputs, ['Name', 'Value'], { empty: 'No parameter outputs.' }),
    h('h4', null, 'Artifacts'),
    table([
      ['Name', (a) => a.name],
      ['Type', (a) => a.type],
      ['sha256', (a) => h('span', { class: 'mono', title: a.sha256 }, String(a.sha256 || '').slice(0, 16))],
      ['Size', (a) => num(a.size)],
      ['Path', (a) => h('span', { class: 'url' }, a.path)],
      ['Written by', (a) => (a.run === run.id ? a.step
        : h('span', null, link(runHref(a.run), a.run, { class: 'mono' }), ` ${a.step}`))],
    ], step.artifacts || [], { testid: 'step-artifacts', empty: 'No artifacts.' }),
    h('h4', null, 'Metrics'),
    entries(step.metrics, ['Metric', 'Value'], { testid: 'step-metrics', empty: 'No metrics.' }),
    h('h4', null, 'Log'), log);
  api(`${P}/${enc(run.id)}/steps/${enc(step.id)}/log?lines=200`).then((answer) => {
    const lines = (answer.lines || []).join('\n') || '(empty)';
    log.textContent = !answer.available ? '(no log: the step has not started, or its log file is gone)'
      : (answer.truncated ? '… (last 200 lines)\n' : '') + lines;
    log.scrollTop = log.scrollHeight;
  }, (err) => {
    log.classList.add('error');
    log.textContent = err.message;
  });
  return panel;
}

export async function runView(ctx, runId) {
  let run;
  try {
    run = await api(`${P}/${enc(runId)}`);
  } catch (err) {
    return ctx.fail(err);
  }
  const head = h('div');
  const graph = h('div', { testid: 'dag' });
  const hint = 'Click a step to see its attempts, cache, parameters, artifacts, metrics and log.';
  const detail = h('div', null, h('p', { class: 'muted' }, hint));
  fill(ctx.root, h('nav', { class: 'crumbs' }, link('#/pipelines', 'Pipelines'), ' / ', run.id), head,
    section('Steps', graph), detail);

  let selected = null;
  let shownDag = '';
  const select = (step) => {
    selected = step.id;
    markSelected(graph, 'step', step.id);
    fill(detail, stepPanel(run, step));
  };
  function show() {
    fill(head,
      h('h2', null, `${run.pipeline} `, stateBadge(run.status)),
      facts([
        ['Run', h('span', { class: 'mono' }, run.id)],
        ['Executor', run.executor],
        ['Started', when(run.started)],
        ['Duration', run.duration_s == null ? 'running' : duration(run.duration_s)],
        ['Steps', counts(run.steps)],
        ['Parameters', pairs(run.params)],
        ['Registered', (run.registrations || []).map((r) => {
          const m = /^registry:\/\/([^/]+)\/(\d+)$/.exec(r.uri);
          return h('div', null, m ? link(`#/registry/${enc(m[1])}/${m[2]}`, r.uri) : r.uri, ` by step ${r.step}`);
        })],
      ]));
    const steps = run.steps || [];
    const sig = JSON.stringify(steps.map((s) => [s.id, s.state, s.attempts, s.cache_source]).concat(run.edges || []));
    if (sig !== shownDag) {
      shownDag = sig;
      const edges = (run.edges || []).map(([from, to]) => ({ from, to }));
      fill(graph, steps.length
        ? drawGraph(steps.map(stepNode), edges, { onSelect: (n) => select(n.step) })
        : h('p', { class: 'muted' }, 'No steps recorded.'));
      if (selected) markSelected(graph, 'step', selected);
    }
  }
  show();
  // A running run: follow it until it ends (the open step panel keeps its state until clicked again).
  ctx.every(3000, async () => {
    if (run.finished != null && run.status !== 'RUNNING') return;
    try {
      run = await api(`${P}/${enc(runId)}`);
      show();
    } catch { /* shown on the next try; a 401 brings the login back */ }
  });
}
