// intentd console. Plain browser JavaScript, no framework, nothing loaded from elsewhere.
//
// The API key lives in sessionStorage (this tab only) and goes out as `x-api-key` on every
// call. Live views read the server's SSE routes with fetch() and a stream reader, because
// an EventSource cannot send headers. Nothing here polls: lists load once, then change when
// a pushed frame says something changed; a stream that ends (`stream.timeout`, a dropped
// connection) is reopened from its cursor.
'use strict';

const KEY_STORE = 'intentd.apiKey';
const SVG_NS = 'http://www.w3.org/2000/svg';
const MAX_ROWS = 500;
const CHART_POINTS = 90;

const state = {
  key: null,
  view: null,
  streams: [],
  intents: new Map(), // intent_id -> summary, for the rows shown
  filter: {},
  openIntent: null,
  samples: [],
  lastStatus: null,
  live: 0,
  armed: null, // the agent whose kill waits for its confirmation (kept across re-renders)
};

// ---------------------------------------------------------------- small helpers

function $(sel) { return document.querySelector(sel); }

/** Builds an element: attributes (`on*` become listeners), then children (strings are text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function bare(address) { return String(address || '').replace(/^agent:\/\//, ''); }

// UUIDv7 ids begin with their creation time, so ids made the same minute share a prefix:
// the random tail is what tells them apart at a glance.
function short(id) { return id ? `…${String(id).slice(-8)}` : ''; }

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

function timeCell(iso) {
  return el('td', {}, el('time', { datetime: iso || null, title: iso || null }, fmtTime(iso)));
}

function relative(iso) {
  if (!iso) return '';
  const s = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  return s >= 0 ? `in ${s} s` : `${-s} s ago`;
}

function badge(text) { return el('span', { class: `badge ${text}` }, text); }

function toast(text) {
  const t = $('#toast');
  t.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ''; }, 6000);
}

/** Runs `fn` once, `ms` after the last of a burst of calls: many frames, one reload. */
const pending = new Map();
function soon(name, fn, ms = 250) {
  clearTimeout(pending.get(name));
  pending.set(name, setTimeout(() => { pending.delete(name); fn(); }, ms));
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---------------------------------------------------------------- API and streams

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { 'x-api-key': state.key, accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!res.ok) {
    const e = (json && json.error) || {};
    if (res.status === 401 && state.key) signOut('The key was refused; sign in again.');
    throw new ApiError(res.status, e.code || 'http_error', e.message || `HTTP ${res.status}`);
  }
  return json;
}

function setLive(delta) {
  state.live = Math.max(0, state.live + delta);
  const live = $('#live');
  live.textContent = state.live > 0 ? 'live' : 'reconnecting';
  live.classList.toggle('on', state.live > 0);
}

/**
 * Follows an SSE route. `handlers[event](data)` is called per frame; a frame's `id` becomes
 * the cursor (`since`) of the next connection. `stream.timeout` reopens at once from its
 * `since`; a failure reopens after a growing pause. `handlers.reset()` may return a new
 * cursor (the feed could not resume from the old one). Returns a stop function.
 */
function follow(path, handlers, since) {
  const ctl = { stopped: false, abort: null };
  let cursor = since;
  let failures = 0;
  (async () => {
    while (!ctl.stopped) {
      const ac = new AbortController();
      ctl.abort = ac;
      let connected = false;
      try {
        const sep = path.includes('?') ? '&' : '?';
        const url = cursor === null || cursor === undefined ? path : `${path}${sep}since=${encodeURIComponent(cursor)}`;
        const res = await fetch(url, {
          headers: { 'x-api-key': state.key, accept: 'text/event-stream' }, signal: ac.signal,
        });
        if (res.status === 401) { signOut('The key was refused; sign in again.'); return; }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        connected = true;
        setLive(1);
        failures = 0;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        let frame = { event: 'message', data: [], id: null };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            let line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (line.endsWith('\r')) line = line.slice(0, -1);
            if (line === '') {
              if (frame.data.length) {
                const data = JSON.parse(frame.data.join('\n'));
                if (frame.event === 'stream.timeout') {
                  if (data.since !== undefined && data.since !== 0) cursor = data.since;
                } else if (frame.event === 'feed.reset') {
                  cursor = handlers.reset ? await handlers.reset(data) : data.horizon;
                } else if (handlers[frame.event]) {
                  handlers[frame.event](data);
                } else if (handlers['*']) {
                  handlers['*'](data, frame.event);
                }
                if (frame.id !== null) cursor = frame.id;
              }
              frame = { event: 'message', data: [], id: null };
            } else if (!line.startsWith(':')) {
              const colon = line.indexOf(':');
              const field = colon < 0 ? line : line.slice(0, colon);
              const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
              if (field === 'event') frame.event = val;
              else if (field === 'data') frame.data.push(val);
              else if (field === 'id') frame.id = val;
            }
          }
        }
      } catch (_) {
        failures += 1;
      } finally {
        if (connected) setLive(-1);
      }
      if (ctl.stopped) return;
      if (failures > 0) {
        // Reconnecting after an error, not polling: the pause grows to 10 s.
        await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** failures)));
      }
    }
  })();
  const stop = () => { ctl.stopped = true; if (ctl.abort) ctl.abort.abort(); };
  state.streams.push(stop);
  return stop;
}

// ---------------------------------------------------------------- sign in and out

async function signIn(key) {
  state.key = key;
  await api('/v1/cluster/status');
  sessionStorage.setItem(KEY_STORE, key);
}

function signOut(message) {
  for (const stop of state.streams) stop();
  state.streams = [];
  state.key = null;
  state.live = 0;
  sessionStorage.removeItem(KEY_STORE);
  $('#login').hidden = false;
  $('#views-nav').hidden = true;
  $('#logout').hidden = true;
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('#live').textContent = 'offline';
  $('#live').classList.remove('on');
  $('#login-error').textContent = message || '';
  $('#api-key').value = '';
  $('#api-key').focus();
}

async function start() {
  $('#login').hidden = true;
  $('#views-nav').hidden = false;
  $('#logout').hidden = false;
  $('#live').textContent = 'connecting';
  const cursor = await loadIntents();
  follow('/v1/admin/intents/stream?wait_seconds=60', {
    'intent.changed': onIntentChanged,
    reset: () => loadIntents(),
  }, cursor);
  startMesh();
  follow('/v1/admin/console/stream?interval_seconds=2&wait_seconds=600', { status: onStatus });
  showView(location.hash.slice(1) || 'intents');
}

// ---------------------------------------------------------------- views

const VIEWS = ['intents', 'agents', 'deliveries', 'webhooks', 'cluster'];

function showView(name) {
  if (!VIEWS.includes(name)) name = 'intents';
  state.view = name;
  for (const v of VIEWS) $(`#view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll('#views-nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (name === 'agents') loadAgents();
  if (name === 'deliveries') loadDeadLetters();
  if (name === 'webhooks') loadWebhooks();
  if (name === 'cluster' && state.lastStatus) renderCluster(state.lastStatus);
}

// ---- intents

function readFilter() {
  const f = new FormData($('#intent-filter'));
  const iso = (name) => (f.get(name) ? new Date(f.get(name)).toISOString() : '');
  return {
    status: f.get('status') || '',
    intent_type: (f.get('intent_type') || '').trim(),
    agent: (f.get('agent') || '').trim(),
    created_after: iso('created_after'),
    created_before: iso('created_before'),
  };
}

function matchesFilter(i) {
  const f = state.filter;
  if (f.status && i.status !== f.status) return false;
  if (f.intent_type && i.intent_type !== f.intent_type) return false;
  if (f.agent && bare(i.to_agent) !== bare(f.agent) && bare(i.from_agent) !== bare(f.agent)) return false;
  if (f.created_after && new Date(i.created_at) < new Date(f.created_after)) return false;
  if (f.created_before && new Date(i.created_at) >= new Date(f.created_before)) return false;
  return true;
}

/** Loads the list under the current filter; answers the feed cursor it is valid at. */
async function loadIntents() {
  state.filter = readFilter();
  const q = new URLSearchParams({ limit: '200' });
  for (const [k, v] of Object.entries(state.filter)) if (v) q.set(k, v);
  const body = await api(`/v1/admin/intents?${q}`);
  state.intents = new Map(body.intents.map((i) => [i.intent_id, i]));
  fill($('#intents-table tbody'), body.intents.map((i) => intentRow(i, false)));
  $('#intents-more').textContent = body.next_before
    ? 'Older intents exist; narrow the filter to see them.' : '';
  return body.cursor;
}

function intentRow(i, fresh) {
  const open = () => openTimeline(i.intent_id);
  return el('tr', {
    'data-intent-id': i.intent_id, 'data-status': i.status,
    class: [fresh ? 'fresh' : '', state.openIntent === i.intent_id ? 'selected' : ''].join(' ').trim() || null,
  },
  timeCell(i.created_at),
  el('td', {}, el('button', { type: 'button', class: 'link mono open-intent', onclick: open,
    'aria-label': `Open the timeline of intent ${i.intent_id}` }, short(i.intent_id))),
  el('td', {}, i.intent_type),
  el('td', { class: 'mono' }, bare(i.from_agent)),
  el('td', { class: 'mono' }, bare(i.to_agent)),
  el('td', {}, badge(i.status)),
  el('td', {}, `${i.delivery_attempt}/${i.max_delivery_attempts}`));
}

function onIntentChanged(data) {
  const i = data.intent;
  const known = state.intents.get(i.intent_id);
  if (known && known.last_seq > i.last_seq) return; // an older frame than what is shown
  const tbody = $('#intents-table tbody');
  const old = tbody.querySelector(`tr[data-intent-id="${i.intent_id}"]`);
  if (matchesFilter(i)) {
    state.intents.set(i.intent_id, i);
    const row = intentRow(i, true);
    if (old) old.replaceWith(row);
    else if (!known) {
      tbody.prepend(row);
      while (tbody.rows.length > MAX_ROWS) {
        state.intents.delete(tbody.lastElementChild.dataset.intentId);
        tbody.lastElementChild.remove();
      }
    }
  } else if (old) {
    old.remove();
    state.intents.delete(i.intent_id);
  }
  if (state.openIntent === i.intent_id) soon('timeline', () => openTimeline(i.intent_id, true));
  if (state.view === 'deliveries' && i.dead_lettered) soon('deliveries', loadDeadLetters);
  if (state.view === 'webhooks') soon('webhooks', loadWebhooks, 500);
  if (state.view === 'agents') soon('agents', loadAgents, 500);
}

function fact(dl, name, value) {
  if (value === null || value === undefined || value === '') return;
  dl.append(el('dt', {}, name), el('dd', {}, value));
}

async function openTimeline(id, quiet) {
  state.openIntent = id;
  for (const tr of document.querySelectorAll('#intents-table tr.selected')) tr.classList.remove('selected');
  const row = document.querySelector(`#intents-table tr[data-intent-id="${id}"]`);
  if (row) row.classList.add('selected');
  let body;
  try {
    body = await api(`/v1/admin/intents/${id}`);
  } catch (e) {
    toast(`Intent ${short(id)}: ${e.message}`);
    return;
  }
  if (state.openIntent !== id) return;
  const s = body.summary;
  const panel = $('#timeline');
  panel.hidden = false;
  panel.dataset.intentId = id;
  $('#timeline-title').textContent = `Timeline of ${s.intent_type} ${short(id)}`;
  const dl = $('#timeline-facts');
  dl.replaceChildren();
  fact(dl, 'Intent', el('code', {}, id));
  fact(dl, 'Status', badge(s.status));
  fact(dl, 'From', bare(s.from_agent));
  fact(dl, 'To', bare(s.to_agent));
  fact(dl, 'Created', fmtTime(s.created_at));
  fact(dl, 'Attempt', `${s.delivery_attempt} of ${s.max_delivery_attempts}`);
  if (s.lease) {
    fact(dl, 'Lease', `${s.lease.consumer}, attempt ${s.lease.attempt}, expires ${relative(s.lease.expires_at)}`);
  }
  if (s.next_delivery_at) fact(dl, 'Next retry', `${fmtTime(s.next_delivery_at)} (${relative(s.next_delivery_at)})`);
  if (s.not_before) fact(dl, 'Held until', fmtTime(s.not_before));
  if (s.deadline_at) fact(dl, 'Deadline', fmtTime(s.deadline_at));
  fact(dl, 'Waiting for', s.waiting_reason);
  if (body.dead_letter) {
    fact(dl, 'Dead letter', `${body.dead_letter.reason}${body.dead_letter.replayed_as ? `; replayed as ${short(body.dead_letter.replayed_as)}` : ''}`);
  }
  if (s.replayed_from) fact(dl, 'Replay of', el('code', {}, s.replayed_from));

  const wf = body.intent.workflow;
  const wfBox = $('#timeline-workflow');
  wfBox.replaceChildren();
  if (wf) {
    wfBox.append(el('h4', {}, 'Workflow steps'), el('table', { class: 'steps' },
      el('thead', {}, el('tr', {}, ['Step', 'Kind', 'State', 'Attempt', 'Started', 'Finished', 'Timer']
        .map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, wf.steps.map((st) => el('tr', {
        'data-step': st.step_id, class: st.step_id === wf.current_step ? 'selected' : null,
      },
      el('td', { class: 'mono' }, st.step_id), el('td', {}, st.kind), el('td', {}, String(st.state)),
      el('td', {}, String(st.attempt)), timeCell(st.started_at), timeCell(st.finished_at),
      timeCell(st.timer_at || st.deadline_at))))));
  }
  const events = body.events.map((e) => el('li', { 'data-event-type': e.event_type, 'data-seq': e.seq },
    el('div', {}, el('strong', {}, `#${e.seq} ${e.event_type}`), ' → ', badge(e.status)),
    el('div', { class: 'when' }, `${fmtTime(e.at)} · ${e.actor || ''}${e.waiting_reason ? ` · waiting: ${e.waiting_reason}` : ''}`),
    e.details && Object.keys(e.details).length
      ? el('details', {}, el('summary', {}, 'details'), el('pre', {}, JSON.stringify(e.details, null, 2)))
      : null));
  $('#timeline-events').replaceChildren(...events);
  if (!quiet) $('#timeline-title').focus();
}

// ---- agents (the mesh)

function startMesh() {
  api('/v1/mesh/events?limit=50').then((body) => {
    fill($('#mesh-events'), body.events.reverse().map(meshEventItem));
    follow('/v1/mesh/events/stream?wait_seconds=120', {
      '*': (e) => {
        $('#mesh-events').prepend(meshEventItem(e));
        if (state.view === 'agents') soon('agents', loadAgents);
      },
    }, body.next_since);
  }).catch((e) => toast(`Mesh events: ${e.message}`));
}

function meshEventItem(e) {
  const change = e.to_health ? ` ${e.from_health || 'new'} → ${e.to_health}` : '';
  return el('li', { 'data-event-type': e.event_type },
    el('div', {}, el('strong', {}, e.event_type), ' ', el('span', { class: 'mono' }, bare(e.address)), change),
    el('div', { class: 'when' }, `${fmtTime(e.at)} · ${e.actor}${e.reason ? ` · ${e.reason}` : ''}`));
}

async function loadAgents() {
  let body;
  try { body = await api('/v1/mesh/agents?limit=1000'); } catch (e) { toast(`Agents: ${e.message}`); return; }
  fill($('#agents-table tbody'), body.agents.map((a) => {
    const armed = state.armed === a.address_id;
    const action = a.killed
      ? el('button', { type: 'button', class: 'primary resume', 'aria-label': `Resume ${a.address_id}`,
        onclick: () => meshAction(a, 'resume') }, 'Resume')
      : el('button', { type: 'button', class: armed ? 'danger kill armed' : 'danger kill',
        'aria-label': `${armed ? 'Confirm the kill of' : 'Kill'} ${a.address_id}`,
        onclick: (ev) => armKill(ev.currentTarget, a) }, armed ? 'Confirm kill' : 'Kill');
    return el('tr', { 'data-agent': a.address_id, 'data-health': a.health },
      el('th', { scope: 'row', class: 'mono' }, a.address_id),
      el('td', {}, badge(a.health)),
      el('td', {}, (a.binding && a.binding.delivery_mode) || ''),
      timeCell(a.last_seen_at),
      el('td', {}, String(a.open_streams)),
      el('td', {}, String(a.in_flight_leases)),
      el('td', {}, String(a.backlog)),
      el('td', {}, String(a.held)),
      el('td', {}, String(a.dead_letters)),
      el('td', {}, action));
  }));
}

/** A kill asks twice: the first press turns the button into its confirmation. */
function armKill(button, agent) {
  if (state.armed === agent.address_id) { state.armed = null; meshAction(agent, 'kill'); return; }
  state.armed = agent.address_id;
  button.textContent = 'Confirm kill';
  button.setAttribute('aria-label', `Confirm the kill of ${agent.address_id}`);
  button.classList.add('armed');
  toast(`Press "Confirm kill" to stop all deliveries to and from ${agent.address_id}.`);
}

async function meshAction(agent, action) {
  const path = `/v1/mesh/agents/${encodeURI(agent.address_id)}/${action}`;
  try {
    await api(path, { method: 'POST', body: action === 'kill' ? { reason: 'killed from the console' } : {} });
    toast(`${agent.address_id}: ${action === 'kill' ? 'killed' : 'resumed'}`);
  } catch (e) {
    toast(`${action} ${agent.address_id}: ${e.message}`);
  }
  await loadAgents();
}

// ---- dead letters

async function loadDeadLetters() {
  let body;
  try { body = await api('/v1/deliveries?status=dead_lettered&limit=500'); } catch (e) { toast(`Dead letters: ${e.message}`); return; }
  const rows = body.deliveries.slice().reverse().map((d) => {
    const dead = d.dead_letter || {};
    return el('tr', { 'data-dead-letter': d.intent_id, 'data-replayed': dead.replayed_as ? 'yes' : 'no' },
      timeCell(dead.at),
      el('td', { class: 'mono' }, short(d.intent_id)),
      el('td', {}, badge(d.intent_status)),
      el('td', { class: 'mono' }, bare(d.principal_id)),
      el('td', { class: 'wrap' }, dead.reason || ''),
      el('td', { class: 'mono replayed-as' }, dead.replayed_as ? short(dead.replayed_as) : ''),
      el('td', {},
        el('button', { type: 'button', class: 'inspect', 'aria-label': `Inspect the delivery of ${d.intent_id}`,
          onclick: () => inspectDelivery(d.intent_id) }, 'Inspect'), ' ',
        el('button', { type: 'button', class: 'primary replay', disabled: Boolean(dead.replayed_as),
          'aria-label': `Replay ${d.intent_id} as a new intent`,
          onclick: () => replayDelivery(d.intent_id) }, 'Replay')));
  });
  fill($('#dead-letters-table tbody'), rows);
}

async function inspectDelivery(id) {
  let body;
  try { body = await api(`/v1/deliveries/${id}`); } catch (e) { toast(e.message); return; }
  const d = body.delivery;
  const panel = $('#delivery-detail');
  panel.hidden = false;
  $('#delivery-title').textContent = `Delivery ${short(id)}`;
  const dl = el('dl', { class: 'facts' });
  fact(dl, 'Intent', el('code', {}, id));
  fact(dl, 'Status', badge(d.intent_status));
  fact(dl, 'To', bare(d.principal_id));
  fact(dl, 'Attempts', `${d.delivery_attempt} of ${d.max_delivery_attempts}`);
  fact(dl, 'Last error', d.last_error ? JSON.stringify(d.last_error) : 'none');
  $('#delivery-body').replaceChildren(dl,
    el('h4', {}, 'Attempts'),
    el('ol', { class: 'events' }, d.attempts.map((e) => el('li', { 'data-event-type': e.event_type },
      el('strong', {}, `#${e.seq} ${e.event_type}`), ' ', el('span', { class: 'when' }, fmtTime(e.at)),
      e.details ? el('pre', {}, JSON.stringify(e.details, null, 2)) : null))),
    el('details', {}, el('summary', {}, 'Payload'), el('pre', {}, JSON.stringify(d.payload, null, 2))));
  $('#delivery-title').focus();
}

async function replayDelivery(id) {
  try {
    const body = await api(`/v1/deliveries/${id}/replay`, { method: 'POST', body: {} });
    toast(`Replayed ${short(id)} as a new intent ${short(body.intent_id)}`);
  } catch (e) {
    toast(`Replay ${short(id)}: ${e.message}`);
  }
  await loadDeadLetters();
}

// ---- webhooks

async function loadWebhooks() {
  let body;
  try { body = await api('/v1/admin/webhooks?limit=100'); } catch (e) { toast(`Webhooks: ${e.message}`); return; }
  fill($('#subscriptions-table tbody'), body.subscriptions.map((s) => el('tr', { 'data-subscription': s.subscription_id },
    el('td', { class: 'mono' }, bare(s.owner_agent)),
    el('td', { class: 'mono wrap' }, s.callback_url),
    el('td', { class: 'wrap' }, (s.event_types || []).join(', ') || 'all'),
    el('td', {}, s.active ? 'yes' : 'no'),
    el('td', {}, String(s.counters.delivered)),
    el('td', {}, String(s.counters.pending)),
    el('td', {}, String(s.counters.dead_lettered)))));
  fill($('#attempts-table tbody'), body.recent_attempts.map((a) => el('tr', { 'data-delivery': a.delivery_id },
    timeCell(a.event_at),
    el('td', {}, a.event_type),
    el('td', { class: 'mono' }, short(a.subscription_id)),
    el('td', {}, badge(a.status)),
    el('td', {}, String(a.attempts)),
    el('td', { class: 'wrap' }, a.last_error || (a.next_attempt_at ? `next ${relative(a.next_attempt_at)}` : '')),
    el('td', {}, el('button', { type: 'button', class: 'replay', 'aria-label': `Replay event ${a.event_id}`,
      onclick: () => replayWebhook(a.event_id) }, 'Replay')))));
}

async function replayWebhook(eventId) {
  try {
    await api(`/v1/webhooks/events/${eventId}/replay`, { method: 'POST', body: {} });
    toast(`Event ${short(eventId)} replayed to its subscriptions`);
  } catch (e) {
    toast(`Replay: ${e.message}`);
  }
  await loadWebhooks();
}

// ---- cluster

/** Prometheus text to {name -> [{labels, value}]}. */
function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: Number(m[4]) });
  }
  return out;
}

function total(metrics, name, pred) {
  return (metrics.get(name) || []).filter((s) => !pred || pred(s.labels)).reduce((a, s) => a + s.value, 0);
}

function onStatus(data) {
  state.lastStatus = data;
  const n = data.node;
  $('#node-line').textContent = `node ${n.node_id} (${n.role}) · leader ${n.leader_id ?? 'none known'} · term ${n.term} · applied ${n.last_applied}`;
  const m = parseMetrics(data.metrics || '');
  const sample = {
    t: new Date(data.at).getTime(),
    applied: total(m, 'intentd_raft_applied_index'),
    requests: total(m, 'intentd_http_requests_total'),
    creates: total(m, 'intentd_http_requests_total', (l) => l.method === 'POST' && l.route === '/v1/intents'),
    commitSum: total(m, 'intentd_commit_latency_seconds_sum'),
    commitCount: total(m, 'intentd_commit_latency_seconds_count'),
    pushSum: total(m, 'intentd_push_latency_seconds_sum'),
    pushCount: total(m, 'intentd_push_latency_seconds_count'),
  };
  const prev = state.samples[state.samples.length - 1];
  if (prev && sample.t > prev.t) {
    const dt = (sample.t - prev.t) / 1000;
    const avg = (s, c) => (c > 0 ? (s / c) * 1000 : 0);
    sample.rates = {
      applied: Math.max(0, sample.applied - prev.applied) / dt,
      requests: Math.max(0, sample.requests - prev.requests) / dt,
      creates: Math.max(0, sample.creates - prev.creates) / dt,
      commitMs: avg(sample.commitSum - prev.commitSum, sample.commitCount - prev.commitCount),
      pushMs: avg(sample.pushSum - prev.pushSum, sample.pushCount - prev.pushCount),
    };
  }
  state.samples.push(sample);
  if (state.samples.length > CHART_POINTS + 1) state.samples.shift();
  if (state.view === 'cluster') renderCluster(data);
}

function renderCluster(data) {
  const n = data.node;
  const dl = $('#cluster-facts');
  dl.replaceChildren();
  fact(dl, 'This node', String(n.node_id));
  fact(dl, 'Role', n.role);
  fact(dl, 'Leader', n.leader_id === null ? 'none known' : String(n.leader_id));
  fact(dl, 'Term', String(n.term));
  fact(dl, 'Applied index', String(n.last_applied));
  fact(dl, 'Last log index', String(n.last_log_index));
  const c = n.clock || {};
  const cl = $('#clock-facts');
  cl.replaceChildren();
  fact(cl, 'Clock', c.synchronized ? 'synchronized' : 'NOT synchronized');
  fact(cl, 'Allowed offset', `${c.max_offset_ms} ms`);
  fact(cl, 'Voters disagreeing', `${c.disagreeing_voters} of ${c.voters}`);
  const mem = data.membership;
  const peers = c.peers || {};
  fill($('#members-table tbody'), Object.entries(mem.nodes).map(([id, addr]) => {
    const nid = Number(id);
    const role = mem.voters.includes(nid) ? (nid === n.leader_id ? 'voter, leader' : 'voter') : 'learner';
    const peer = peers[id];
    const offset = nid === n.node_id ? 'this node'
      : peer && peer.offset_ms !== null && peer.offset_ms !== undefined
        ? `${peer.offset_ms.toFixed(1)} ms ± ${(peer.uncertainty_ms || 0).toFixed(1)} (${peer.verdict})`
        : 'no sample yet';
    return el('tr', { 'data-node': id }, el('td', {}, id), el('td', { class: 'mono' }, addr), el('td', {}, role),
      el('td', { class: 'mono wrap' }, offset));
  }));
  const rated = state.samples.filter((s) => s.rates);
  drawChart($('#chart-throughput'), rated, [
    ['applied entries/s', (s) => s.rates.applied],
    ['HTTP requests/s', (s) => s.rates.requests],
    ['creates/s', (s) => s.rates.creates],
  ], 'Throughput');
  drawChart($('#chart-latency'), rated, [
    ['commit ms', (s) => s.rates.commitMs],
    ['push ms', (s) => s.rates.pushMs],
  ], 'Latency');
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A line chart of the last samples: one polyline per series, the y axis from 0 to max. */
function drawChart(node, samples, series, title) {
  const W = 600; const H = 180; const L = 44; const B = 22; const T = 24;
  const max = Math.max(1, ...samples.flatMap((s) => series.map(([, f]) => f(s))));
  const label = series.map(([name, f]) => `${name} ${samples.length ? f(samples[samples.length - 1]).toFixed(1) : 'n/a'}`).join(', ');
  const kids = [svg('title', {}, `${title}: ${label}`),
    svg('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }),
    svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }),
    svg('text', { x: 4, y: T + 4 }, max.toFixed(max < 10 ? 1 : 0)),
    svg('text', { x: 4, y: H - B }, '0'),
    svg('text', { x: L, y: H - 6 }, `last ${samples.length} samples`)];
  const x = (k) => L + ((W - L - 4) * k) / Math.max(1, CHART_POINTS - 1);
  const y = (v) => H - B - ((H - B - T) * v) / max;
  series.forEach(([name, f], idx) => {
    const pts = samples.map((s, k) => `${x(k).toFixed(1)},${y(f(s)).toFixed(1)}`).join(' ');
    if (pts) kids.push(svg('polyline', { class: `s${idx}`, points: pts }));
    kids.push(svg('line', { class: `s${idx}`, x1: L + 10 + idx * 180, y1: 10, x2: L + 30 + idx * 180, y2: 10 }));
    kids.push(svg('text', { x: L + 34 + idx * 180, y: 14 }, name));
  });
  node.replaceChildren(...kids);
}

// ---------------------------------------------------------------- wiring

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = $('#api-key').value.trim();
    $('#login-error').textContent = '';
    try {
      await signIn(key);
      await start();
    } catch (e) {
      state.key = null;
      $('#login-error').textContent = e.status === 401 ? 'That key was not accepted.'
        : e.status === 403 ? 'That key is not an admin key; the console needs one.'
          : `Could not sign in: ${e.message}`;
    }
  });
  $('#logout').addEventListener('click', () => signOut('Signed out.'));
  $('#intent-filter').addEventListener('submit', (ev) => { ev.preventDefault(); loadIntents().catch((e) => toast(e.message)); });
  window.addEventListener('hashchange', () => { if (state.key) showView(location.hash.slice(1)); });
  for (const h of document.querySelectorAll('h2, h3')) h.setAttribute('tabindex', '-1');
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) {
    signIn(saved).then(start).catch(() => signOut(''));
  } else {
    $('#api-key').focus();
  }
});
