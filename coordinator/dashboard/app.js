// Strata swarm dashboard: polls the coordinator's JSON endpoints about once a second and redraws
// the page in place. Every string that comes from a node (ids, addresses, versions, backends,
// event details) reaches the DOM through textContent or setAttribute only, never as HTML.
'use strict';

const POLL_MS = 1000;
const STALE_HEARTBEAT_MS = 3000;  // a node this late is flagged before the coordinator drops it
const MAX_CHART_POINTS = 300;

const state = {
  lastEventKey: '',
  historySince: 0,
  charts: null,
  history: [],
};

// ---- small DOM helpers ---------------------------------------------------------------------

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else e.setAttribute(k, String(v));
    }
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return e;
}

function replaceChildren(parent, children) {
  while (parent.firstChild) parent.removeChild(parent.firstChild);
  for (const c of children) parent.appendChild(c);
}

// ---- formatting ----------------------------------------------------------------------------

function fmtNum(x, digits) {
  if (typeof x !== 'number' || !isFinite(x)) return '–';
  return x.toFixed(digits === undefined ? (Math.abs(x) >= 100 ? 0 : 1) : digits);
}

function fmtBytes(b) {
  if (typeof b !== 'number' || !isFinite(b)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(b) >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i === 0 ? b.toFixed(0) : b.toFixed(1)) + ' ' + units[i];
}

function fmtDuration(ms) {
  if (typeof ms !== 'number' || !isFinite(ms) || ms < 0) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + ' min ' + (s % 60) + ' s';
  const h = Math.floor(m / 60);
  if (h < 48) return h + ' h ' + (m % 60) + ' min';
  return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
}

function fmtTime(unixMs) {
  const d = new Date(unixMs);
  const pad = (n) => String(n).padStart(2, '0');
  return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
}

function fmtLayers(first, last) {
  return last - first <= 1 ? String(first) : first + '–' + (last - 1);
}

// Runs of consecutive layers, e.g. [3,4,5,9] -> "3–5, 9".
function fmtLayerList(layers) {
  const runs = [];
  for (let i = 0; i < layers.length; i++) {
    let j = i;
    while (j + 1 < layers.length && layers[j + 1] === layers[j] + 1) j++;
    runs.push(i === j ? String(layers[i]) : layers[i] + '–' + layers[j]);
    i = j;
  }
  return runs.join(', ');
}

// ---- fetching ------------------------------------------------------------------------------

async function getJson(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
  return r.json();
}

function setStatus(text) {
  document.getElementById('status').textContent = text;
}

// ---- rendering -----------------------------------------------------------------------------

function renderSummary(swarm) {
  const online = swarm.nodes.filter((n) => n.state === 'online').length;
  const tokens = swarm.nodes.reduce((a, n) => a + (n.load.tokens_per_s || 0) *
      Math.max(0, n.last_layer - n.first_layer), 0) / Math.max(1, swarm.num_layers);
  const parts = [
    'model ' + (swarm.model_id || '(none yet)'),
    swarm.num_layers + ' layers',
    swarm.nodes.length + ' nodes (' + online + ' online)',
    fmtNum(tokens) + ' tok/s',
    swarm.uncovered.length ? 'GAP: layers ' + fmtLayerList(swarm.uncovered) : 'all layers served',
  ];
  document.getElementById('summary').textContent = parts.join(' · ');
}

function throughputColor(tp, max) {
  // Light to dark blue with the layer's share of the best-served layer.
  const f = max > 0 ? Math.min(1, tp / max) : 0;
  const light = 82 - Math.round(f * 42);
  return 'hsl(214, 70%, ' + light + '%)';
}

function renderCoverage(swarm) {
  const table = document.getElementById('coverage');
  const L = swarm.num_layers;
  const rows = [];
  const head = el('tr', null, el('th', { class: 'lane', text: 'layer' }));
  for (let l = 0; l < L; l++) head.appendChild(el('th', { class: 'layer-index', text: l }));
  rows.push(head);

  const byLayer = new Map(swarm.coverage.map((c) => [c.layer, c]));
  const maxTp = Math.max(0, ...swarm.coverage.map((c) => c.throughput || 0));
  const total = el('tr', { class: 'total-row' }, el('th', { class: 'lane', text: 'tok/s' }));
  for (let l = 0; l < L; l++) {
    const c = byLayer.get(l) || { node_ids: [], throughput: 0 };
    const gap = c.node_ids.length === 0;
    const td = el('td', {
      class: gap ? 'gap' : 'total',
      'data-layer': l,
      title: gap ? 'layer ' + l + ': not served'
                 : 'layer ' + l + ': ' + fmtNum(c.throughput) + ' tok/s from ' + c.node_ids.join(', '),
      text: gap ? '✕' : fmtNum(c.throughput, 0),
    });
    if (!gap) td.style.background = throughputColor(c.throughput, maxTp);
    total.appendChild(td);
  }
  rows.push(total);

  for (const n of swarm.nodes) {
    const lane = el('tr', { 'data-node-id': n.id },
                    el('th', { class: 'lane', title: n.id + ' (' + n.state + ')', text: n.id }));
    for (let l = 0; l < L; l++) {
      const served = l >= n.first_layer && l < n.last_layer;
      lane.appendChild(el('td', {
        class: served ? 'served' : 'empty',
        title: served ? n.id + ': layer ' + l + ', ' + fmtNum(n.throughput) + ' tok/s' : null,
      }));
    }
    rows.push(lane);
  }
  replaceChildren(table, rows);

  const note = document.getElementById('coverage-summary');
  if (L === 0) {
    note.textContent = 'No model yet: the first node to join defines it.';
    note.className = 'note';
  } else if (swarm.uncovered.length) {
    note.textContent = 'Gap: layers ' + fmtLayerList(swarm.uncovered) + ' are not served by any node.';
    note.className = 'note route-error';
  } else {
    const minTp = Math.min(...swarm.coverage.map((c) => c.throughput || 0));
    note.textContent = 'Every layer is served; the weakest layer offers ' + fmtNum(minTp) + ' tok/s.';
    note.className = 'note';
  }
}

function rttCell(n) {
  if (!n.rtts || n.rtts.length === 0) return el('td', { text: '–' });
  const avg = n.rtts.reduce((a, r) => a + r.rtt_ms, 0) / n.rtts.length;
  const detail = n.rtts.map((r) => r.node_id + ': ' + fmtNum(r.rtt_ms, 2) + ' ms').join('\n');
  return el('td', { class: 'num', title: detail, text: fmtNum(avg, 2) + ' ms (' + n.rtts.length + ')' });
}

function kvCell(load) {
  const cap = load.kv_capacity_bytes || 0;
  const used = load.kv_used_bytes || 0;
  const pct = cap > 0 ? Math.min(100, (100 * used) / cap) : 0;
  const bar = el('span', { class: 'bar' }, el('span'));
  bar.firstChild.style.width = pct.toFixed(1) + '%';
  return el('td', { title: fmtBytes(used) + ' of ' + fmtBytes(cap) },
            bar, fmtBytes(used) + ' / ' + fmtBytes(cap));
}

function renderNodes(swarm) {
  const tbody = document.querySelector('#nodes tbody');
  const rows = [];
  for (const n of swarm.nodes) {
    const stale = n.heartbeat_age_ms > STALE_HEARTBEAT_MS;
    const stateCell = el('td', { class: 'state-' + n.state, text: n.state });
    if (stale) stateCell.appendChild(el('span', { class: 'flag', text: 'no heartbeat ' + fmtDuration(n.heartbeat_age_ms) }));
    if (n.banned) stateCell.appendChild(el('span', { class: 'flag', text: 'banned (' + n.failures + ' failures)' }));
    rows.push(el('tr', { 'data-node-id': n.id, class: (stale ? 'stale ' : '') + (n.banned ? 'banned' : '') },
      el('td', { class: 'id', title: n.id, text: n.id }),
      el('td', { text: n.address }),
      el('td', { text: fmtLayers(n.first_layer, n.last_layer) }),
      stateCell,
      el('td', { text: n.version }),
      el('td', { text: n.backend }),
      el('td', { class: 'num', text: fmtNum(n.throughput) }),
      el('td', { class: 'num', text: fmtNum(n.load.tokens_per_s) }),
      rttCell(n),
      el('td', { class: 'num', text: n.load.queue_depth + ' / ' + fmtNum(n.load.step_ms_p50, 2) + ' ms' }),
      el('td', { class: 'num', text: n.load.active_sessions }),
      kvCell(n.load),
      el('td', { class: 'num', text: fmtDuration(n.uptime_ms) }),
      el('td', { class: 'num', text: fmtDuration(n.heartbeat_age_ms) + ' ago' })));
  }
  if (rows.length === 0) {
    rows.push(el('tr', null, el('td', { colspan: 14, class: 'note', text: 'No nodes.' })));
  }
  replaceChildren(tbody, rows);
}

function renderEvents(swarm) {
  const events = swarm.events || [];
  const last = events.length ? events[events.length - 1] : null;
  const key = events.length + ':' + (last ? last.unix_ms + last.kind + last.node_id : '');
  if (key === state.lastEventKey) return;
  state.lastEventKey = key;
  const items = [];
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i];
    items.push(el('li', { class: 'event', 'data-kind': e.kind, 'data-node-id': e.node_id },
      el('span', { class: 'when', title: new Date(e.unix_ms).toISOString(), text: fmtTime(e.unix_ms) }),
      el('span', { class: 'kind kind-' + e.kind.replace(/[^a-z]/g, ''), text: e.kind }),
      el('span', { class: 'node', text: e.node_id }),
      el('span', { class: 'detail', text: e.detail })));
  }
  if (items.length === 0) items.push(el('li', { class: 'note', text: 'No events yet.' }));
  replaceChildren(document.getElementById('events'), items);
}

// The route explorer's inputs: start layer, excluded node ids, number of alternates.
function routeQuery(swarm) {
  const start = Math.max(0, Math.min(swarm.num_layers - 1,
                                     parseInt(document.getElementById('route-start').value, 10) || 0));
  const exclude = document.getElementById('route-exclude').value
      .split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  const alternates = Math.max(0, Math.min(8,
      parseInt(document.getElementById('route-alternates').value, 10) || 0));
  return { start, exclude, alternates };
}

// Layers in [start, L) that no routable node (online, not banned, not excluded) serves; the
// coordinator would answer 503 for them.
function unroutableLayers(swarm, q) {
  const served = new Array(swarm.num_layers).fill(false);
  for (const n of swarm.nodes) {
    if (n.state !== 'online' || n.banned || q.exclude.includes(n.id)) continue;
    for (let l = n.first_layer; l < n.last_layer && l < swarm.num_layers; l++) served[l] = true;
  }
  const out = [];
  for (let l = q.start; l < swarm.num_layers; l++) if (!served[l]) out.push(l);
  return out;
}

function hopsElements(route, start) {
  const parts = [el('span', { class: 'hop', text: start > 0 ? 'layer ' + start : 'client' })];
  for (const h of route.hops) {
    parts.push(el('span', { class: 'arrow', text: '→' }));
    parts.push(el('span', { class: 'hop', 'data-node-id': h.node_id, title: h.address,
                            text: h.node_id + ' [' + fmtLayers(h.first_layer, h.last_layer) + ']' }));
  }
  parts.push(el('span', { class: 'arrow', text: '→' }));
  parts.push(el('span', { class: 'hop', text: 'client' }));
  parts.push(el('span', { class: 'note', text: '  est. ' + fmtNum(route.estimated_step_ms, 2) + ' ms per step' }));
  return parts;
}

async function renderRoute(swarm) {
  const box = document.getElementById('route');
  if (swarm.num_layers === 0) {
    replaceChildren(box, [el('span', { class: 'route-error', text: 'no route: the swarm is empty' })]);
    return;
  }
  const q = routeQuery(swarm);
  const missing = unroutableLayers(swarm, q);
  if (missing.length) {
    replaceChildren(box, [el('span', { class: 'route-error',
      text: 'no route: layers ' + fmtLayerList(missing) + ' are not served by any online node' +
            (q.exclude.length ? ' (with the exclusions)' : '') })]);
    return;
  }
  // errors=body: an unroutable swarm answers 200 with {"error": ...}, not a 503 the browser logs.
  const params = new URLSearchParams({ start_layer: q.start, alternates: q.alternates,
                                       errors: 'body' });
  if (q.exclude.length) params.set('exclude', q.exclude.join(','));
  const r = await getJson('/api/route?' + params.toString());
  if (r.error) {
    replaceChildren(box, [el('span', { class: 'route-error', text: r.error.message })]);
    return;
  }
  const children = [el('div', { class: 'route best' }, ...hopsElements(r.route, q.start))];
  for (const alt of r.alternates || []) {
    children.push(el('div', { class: 'route alternate' },
                     el('span', { class: 'note', text: 'alternate:' }),
                     ...hopsElements(alt, q.start)));
  }
  replaceChildren(box, children);
}

// ---- charts --------------------------------------------------------------------------------

function makeChart(id, datasets) {
  return new window.Chart(document.getElementById(id), {
    type: 'line',
    data: { labels: [], datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      elements: { point: { radius: 0 }, line: { borderWidth: 2, tension: 0 } },
      scales: { y: { beginAtZero: true }, x: { ticks: { maxTicksLimit: 8, autoSkip: true } } },
    },
  });
}

function ensureCharts() {
  if (state.charts) return state.charts;
  if (typeof window.Chart !== 'function') {
    document.getElementById('charts-note').textContent =
        'Charts unavailable: /chart.js did not load (install Debian\'s libjs-chart.js).';
    return null;
  }
  state.charts = {
    tokens: makeChart('tokens-chart', [
      { label: 'tokens/s through the whole model', data: [], borderColor: '#2f6fd6', backgroundColor: '#2f6fd6', fill: false },
      { label: 'rows/s summed over nodes', data: [], borderColor: '#9bb7e0', backgroundColor: '#9bb7e0', fill: false },
    ]),
    sessions: makeChart('sessions-chart', [
      { label: 'client sessions', data: [], borderColor: '#1f8f4e', backgroundColor: '#1f8f4e', fill: false },
      { label: 'node sessions (one per hop)', data: [], borderColor: '#93cfa9', backgroundColor: '#93cfa9', fill: false },
    ]),
  };
  return state.charts;
}

async function updateHistory() {
  const h = await getJson('/api/history?since=' + state.historySince);
  for (const s of h.samples) {
    state.history.push(s);
    state.historySince = Math.max(state.historySince, s.unix_ms);
  }
  if (state.history.length > MAX_CHART_POINTS) {
    state.history.splice(0, state.history.length - MAX_CHART_POINTS);
  }
  const charts = ensureCharts();
  if (!charts || h.samples.length === 0) return;
  const labels = state.history.map((s) => fmtTime(s.unix_ms));
  charts.tokens.data.labels = labels;
  charts.tokens.data.datasets[0].data = state.history.map((s) => s.tokens_per_s);
  charts.tokens.data.datasets[1].data = state.history.map((s) => s.node_rows_per_s);
  charts.sessions.data.labels = labels;
  charts.sessions.data.datasets[0].data = state.history.map((s) => s.sessions);
  charts.sessions.data.datasets[1].data = state.history.map((s) => s.node_sessions);
  charts.tokens.update('none');
  charts.sessions.update('none');
}

// ---- main loop -----------------------------------------------------------------------------

async function poll() {
  try {
    const swarm = await getJson('/api/swarm');
    renderSummary(swarm);
    renderCoverage(swarm);
    renderNodes(swarm);
    renderEvents(swarm);
    await renderRoute(swarm);
    await updateHistory();
    setStatus('');
    document.body.setAttribute('data-updated', String(swarm.unix_ms));
  } catch (err) {
    setStatus('coordinator unreachable: ' + err.message);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById('route-form').addEventListener('submit', (e) => e.preventDefault());
poll();
