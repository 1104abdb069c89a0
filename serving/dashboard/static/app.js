// servegate's dashboard: the session (login form, logout), the live feed of InferenceServices, and
// the hash router that draws one view at a time into <main>. Views live in their own modules; each
// gets a `ctx` whose timers and subscriptions end when the page moves on.

import { h, fill, link, api, session, hooks } from './lib.js';
import { servicesView, serviceView } from './services.js';
import { registryView, modelView, versionView } from './registry.js';
import { runsView, runView } from './pipelines.js';
import { graphsView, graphView } from './graphs.js';

const $ = (id) => document.getElementById(id);
const main = $('view');

// -- live InferenceServices: server-sent events, else polling ---------------------------------------

const POLL_MS = 3000;

const live = {
  items: null,
  listeners: new Set(),
  source: null,
  poller: null,
  running: false,

  subscribe(fn) {
    this.listeners.add(fn);
    if (this.items) fn(this.items);
    return () => this.listeners.delete(fn);
  },
  publish(items) {
    this.items = items;
    for (const fn of [...this.listeners]) {
      try { fn(items); } catch (err) { console.error(err); }
    }
  },
  status(text) {
    $('live-status').textContent = text;
  },
  start() {
    if (this.running) return;
    this.running = true;
    this.poll();
    if (!window.EventSource) return this.startPolling();
    const source = this.source = new EventSource('/ui/live');
    source.addEventListener('open', () => this.status('live'));
    source.addEventListener('services', (ev) => {
      try { this.publish(JSON.parse(ev.data).items || []); } catch (err) { console.error(err); }
    });
    // The gateway ends the stream when the session does (logged out, expired, token revoked).
    source.addEventListener('ended', () => {
      this.stop();
      hooks.onUnauthorized();
    });
    // A stream that fails (a proxy that buffers, a gateway without it, an expired session) gives
    // way to polling, which also notices a 401 and brings the login form back.
    source.addEventListener('error', () => {
      source.close();
      if (this.source === source) this.source = null;
      this.startPolling();
    });
  },
  startPolling() {
    if (!this.running || this.poller) return;
    this.status(`polling every ${POLL_MS / 1000}s`);
    this.poller = setInterval(() => this.poll(), POLL_MS);
  },
  async poll() {
    try {
      const answer = await api('/api/v1/inferenceservices');
      if (this.running) this.publish(answer.items || []);
    } catch (err) {
      if (err.status !== 401) this.status(`offline: ${err.message}`);
    }
  },
  stop() {
    this.running = false;
    this.source?.close();
    this.source = null;
    clearInterval(this.poller);
    this.poller = null;
    this.items = null;
    this.status('');
  },
};

// A hidden tab needs no updates: it stops the stream and starts it again when shown.
document.addEventListener('visibilitychange', () => {
  if (!session.ready) return;
  if (document.hidden) live.stop();
  else live.start();
});

// -- views and the router -------------------------------------------------------------------------

function notFound(message) {
  return h('div', { class: 'not-found', testid: 'not-found' },
    h('h2', null, 'Not found'), h('p', null, message), h('p', null, link('#/services', 'Back to the services')));
}

function failure(message, retry = route) {
  return h('div', { class: 'failure', testid: 'error' },
    h('h2', null, 'Something went wrong'), h('p', { class: 'error' }, message),
    h('p', null, h('button', { type: 'button', on: { click: () => retry() } }, 'Try again')));
}

function makeContext(root) {
  const cleanups = [];
  const ctx = {
    root,
    alive: true,
    onCleanup: (fn) => cleanups.push(fn),
    /** Run `fn` now and `ms` after each run ends, while this view is shown. */
    every(ms, fn) {
      let timer = null;
      const tick = async () => {
        if (!ctx.alive) return;
        try { await fn(); } catch (err) { console.error(err); }
        if (ctx.alive) timer = setTimeout(tick, ms);
      };
      tick();
      ctx.onCleanup(() => clearTimeout(timer));
    },
    /** Call `fn(items)` with the InferenceServices now and on every live update. */
    live: (fn) => ctx.onCleanup(live.subscribe(fn)),
    notFound: (message) => fill(root, notFound(message)),
    /** An API error as the view: 404 the not-found page; 401 is the login form's business. */
    fail(err) {
      if (err.status === 404) ctx.notFound(err.message);
      else if (err.status !== 401) fill(root, failure(err.message));
    },
    close() {
      ctx.alive = false;
      cleanups.splice(0).forEach((fn) => { try { fn(); } catch (err) { console.error(err); } });
    },
  };
  return ctx;
}

const ROUTES = [
  [/^services$/, servicesView, 'services'],
  [/^services\/([^/]+)\/([^/]+)$/, serviceView, 'services'],
  [/^registry$/, registryView, 'registry'],
  [/^registry\/([^/]+)$/, modelView, 'registry'],
  [/^registry\/([^/]+)\/([^/]+)$/, versionView, 'registry'],
  [/^pipelines$/, runsView, 'pipelines'],
  [/^pipelines\/([^/]+)$/, runView, 'pipelines'],
  [/^graphs$/, graphsView, 'graphs'],
  [/^graphs\/([^/]+)$/, graphView, 'graphs'],
];

let current = null;

async function route() {
  current?.close();
  current = null;
  if (!session.ready) return;
  const path = location.hash.replace(/^#\/?/, '').replace(/\/+$/, '');
  if (!path) {
    location.replace('#/services');
    return;
  }
  const root = h('div', { class: 'view' });
  main.replaceChildren(root);
  const ctx = current = makeContext(root);
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  for (const a of document.querySelectorAll('#nav a')) {
    if (found && a.dataset.section === found[2]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!found) return ctx.notFound(`There is no page at #/${path}.`);
  let params;
  try {
    params = path.match(found[0]).slice(1).map(decodeURIComponent);
  } catch {
    return ctx.notFound(`There is no page at #/${path}.`);
  }
  try {
    await found[1](ctx, ...params);
  } catch (err) {
    // A bug or an odd answer: say so in the page instead of leaving it blank.
    console.error(err);
    if (ctx.alive) ctx.fail(err);
  }
}

// -- the session ----------------------------------------------------------------------------------

function showLogin(message = '') {
  session.ready = false;
  session.csrf = '';
  live.stop();
  current?.close();
  current = null;
  main.replaceChildren();
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-token').focus();
}

function showApp() {
  session.ready = true;
  $('login').hidden = true;
  $('app').hidden = false;
  $('user').textContent = session.auth ? `${session.name} (${session.role})` : 'authentication off';
  $('logout').hidden = !session.auth;
  live.start();
  route();
}

async function boot() {
  try {
    Object.assign(session, await api('/api/v1/session', { login: false }));
  } catch (err) {
    if (err.status === 401) return showLogin();
    $('login').hidden = true;
    $('app').hidden = false;
    fill(main, failure(`The gateway did not say who is logged in: ${err.message}`, boot));
    return;
  }
  showApp();
}

hooks.onUnauthorized = () => {
  if (session.ready || $('login').hidden) showLogin('Your session has ended: log in again.');
};

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('login-token');
  const button = $('login-submit');
  button.disabled = true;
  $('login-error').textContent = '';
  try {
    await api('/ui/login', { method: 'POST', body: { token: input.value.trim() }, login: false });
    input.value = '';
    await boot();
  } catch (err) {
    $('login-error').textContent = err.message;
  } finally {
    button.disabled = false;
  }
});

$('logout').addEventListener('click', async () => {
  try { await api('/ui/logout', { method: 'POST', login: false }); } catch { /* the session is gone either way */ }
  showLogin('Logged out.');
});

window.addEventListener('hashchange', route);
boot();
