// Shared helpers of the dashboard: building DOM safely, calling the gateway's JSON API, formatting,
// and a small JSON -> YAML printer. No module here touches innerHTML: every string from the API goes
// into the page as a text node or an attribute value, so it can never become markup.

// -- DOM ------------------------------------------------------------------------------------------

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An element: `h('td', {class: 'x', testid: 'row', data: {name}, on: {click}}, ...children)`.
 *  Tags written `svg:rect` are SVG. Children: strings (text), numbers, nodes, arrays, null. */
export function h(tag, props, ...children) {
  const el = tag.startsWith('svg:') ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === 'on') for (const [type, fn] of Object.entries(value)) el.addEventListener(type, fn);
    else if (key === 'testid') el.dataset.testid = value;
    else if (key === 'data') for (const [k, v] of Object.entries(value)) { if (v != null) el.dataset[k] = String(v); }
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'style') throw new Error('no style attributes: the page runs under a CSP; use a class');
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Append children to `el` (see `h`); returns `el`. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace everything inside `el`. */
export function fill(el, ...children) {
  const frag = document.createDocumentFragment();
  append(frag, children);
  el.replaceChildren(frag);
  return el;
}

/** A table: `columns` are [header, (row) => cell content]; `rowProps(row)` gives the <tr>'s props. */
export function table(columns, rows, { rowProps, empty = 'none', testid } = {}) {
  if (!rows.length) return h('p', { class: 'muted', testid: testid && `${testid}-empty` }, empty);
  const body = h('tbody');
  const frag = document.createDocumentFragment();
  for (const row of rows) {
    frag.append(h('tr', rowProps ? rowProps(row) : null,
      columns.map(([title, cell]) => h('td', { 'data-label': title }, h('div', { class: 'cell' }, cell(row))))));
  }
  body.append(frag);
  return h('table', { class: 'grid', testid },
    h('thead', null, h('tr', null, columns.map(([title]) => h('th', null, title)))), body);
}

/** A definition list of [term, value] pairs (values may be nodes). */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(([, v]) => v != null && v !== '')
    .map(([term, value]) => [h('dt', null, term), h('dd', null, value)]));
}

export const section = (title, ...children) => h('section', { class: 'panel' }, h('h3', null, title), children);
export const badge = (text, kind = 'neutral', title) => h('span', { class: `badge ${kind}`, title }, text);
export const link = (href, text, props = {}) => h('a', { href, ...props }, text);

/** A state word (SUCCEEDED, Ready, FAILED...) as a coloured badge. */
export function stateBadge(state) {
  const s = String(state || 'unknown');
  const kind = /^(succeeded|ready|true|cached|loaded|uptodate)$/i.test(s) ? 'ok'
    : /fail|error|false|crash/i.test(s) ? 'bad'
      : /running|starting|pending|progress|loading|draining/i.test(s) ? 'warn' : 'neutral';
  return badge(s, kind);
}

// -- the API --------------------------------------------------------------------------------------

/** What the gateway answered with a 4xx/5xx: `message` is its `{"error"}` text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The logged-in session (`GET /api/v1/session`); `onUnauthorized` is set by app.js. */
export const session = { name: '', role: '', csrf: '', canDeploy: false, auth: true };
export const hooks = { onUnauthorized: () => {} };

/** Call the gateway; resolves to the parsed JSON, rejects with ApiError. A 401 means the session
 *  is gone: the login form comes back (unless `login: false`, for the session and login calls). */
export async function api(path, { method = 'GET', body, login = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let res;
  try {
    res = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `the gateway cannot be reached (${err.message})`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const message = data && typeof data.error === 'string' ? data.error : `${res.status} ${res.statusText}`;
    if (res.status === 401 && login) hooks.onUnauthorized(message);
    throw new ApiError(res.status, message);
  }
  return data;
}

export const enc = encodeURIComponent;

// -- formatting -----------------------------------------------------------------------------------

const toSeconds = (t) => (typeof t === 'number' ? t : Date.parse(t) / 1000);

/** How long ago: 45s, 12m, 3h, 5d. */
export function age(t) {
  const s = Math.max(0, Date.now() / 1000 - toSeconds(t));
  if (!Number.isFinite(s)) return '';
  return duration(s, true);
}

/** 1.2s, 3m 20s, 2h 5m, 4d 3h (`coarse`: one unit). */
export function duration(s, coarse = false) {
  if (s == null || !Number.isFinite(s)) return '';
  if (s < 60) return coarse ? `${Math.floor(s)}s` : `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const units = [[86400, 'd'], [3600, 'h'], [60, 'm'], [1, 's']];
  const parts = [];
  let rest = Math.round(s);
  for (const [size, unit] of units) {
    if (rest >= size || parts.length) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
    if (parts.length === (coarse ? 1 : 2)) break;
  }
  return parts.join(' ');
}

/** A local date and time, 2026-12-04 05:22:51. */
export function when(t) {
  if (t == null) return '';
  const d = new Date(toSeconds(t) * 1000);
  if (Number.isNaN(d.getTime())) return String(t);
  const p = (n) => String(n).padStart(2, '0');
  const day = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  return `${day} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A number, short: 0.973, 12.5, 1,234. */
export function num(v) {
  if (typeof v !== 'number') return v == null ? '' : String(v);
  if (Number.isInteger(v)) return v.toLocaleString('en');
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3);
}

/** `{a: 1, b: 2}` as "a=1 · b=2". */
/** An object's entries as a two-column table: `format` shows a value. */
export function entries(obj, [keyTitle, valueTitle], { format = show, ...opts } = {}) {
  return table([[keyTitle, (e) => e[0]], [valueTitle, (e) => format(e[1])]], Object.entries(obj || {}), opts);
}

/** A value as short text: numbers shortened, objects as JSON. */
export const show = (v) => (typeof v === 'number' ? num(v) : typeof v === 'string' ? v : JSON.stringify(v));

export const pairs = (obj) => Object.entries(obj || {})
  .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : num(v)}`).join(' · ');

/** A revision name without its service and component: mlp-predictor-00002 -> 00002. */
export const shortRevision = (rev) => String(rev || '').replace(/^.*-(predictor|transformer|explainer)-/, '');

// -- JSON -> YAML (for showing manifests; not a general YAML writer) -------------------------------

const PLAIN = /^[A-Za-z_/.][\w./@:-]*( [\w./@:-]+)*$/;
const RESERVED = /^(true|false|yes|no|on|off|null|~|y|n)$/i;

function yamlScalar(v) {
  if (v == null) return 'null';
  if (Array.isArray(v)) return '[]';
  if (typeof v === 'object') return '{}';
  if (typeof v !== 'string') return String(v);
  // Plain when it cannot read as anything else; else JSON's double quotes, which YAML accepts.
  return PLAIN.test(v) && !RESERVED.test(v) && !v.includes(': ') && !v.includes(' #') ? v : JSON.stringify(v);
}

const isLeaf = (v) => v == null || typeof v !== 'object' || Object.keys(v).length === 0;

function yamlLines(v) {
  const out = [];
  if (Array.isArray(v)) {
    for (const item of v) {
      if (isLeaf(item)) { out.push(`- ${yamlScalar(item)}`); continue; }
      const [first, ...rest] = yamlLines(item);
      out.push(`- ${first}`, ...rest.map((l) => `  ${l}`));
    }
  } else {
    for (const [k, item] of Object.entries(v)) {
      const key = yamlScalar(k);
      if (isLeaf(item)) out.push(`${key}: ${yamlScalar(item)}`);
      else if (Array.isArray(item)) out.push(`${key}:`, ...yamlLines(item));
      else out.push(`${key}:`, ...yamlLines(item).map((l) => `  ${l}`));
    }
  }
  return out;
}

/** A JSON value as block-style YAML. */
export const toYaml = (value) => (isLeaf(value) ? yamlScalar(value) : yamlLines(value).join('\n')) + '\n';
