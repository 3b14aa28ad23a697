// The mulcot-stream dashboard: plain script, no build step, no dependencies.
// Reads /api/results (first page), /api/stream (server-sent events, read with fetch so a
// bearer token can be sent), /api/stats (chart and counters, polled), /api/alerts (the alerts
// panel, polled; an alert's example posts come from /api/alerts/{id} as cards). Text from results is
// only ever set with textContent. At most MAX_CARDS cards are kept in the DOM; new results
// are queued and rendered in one DOM update at most every FLUSH_EVERY_MS, so 50 results/s cost
// four small updates a second; cards out of view are not laid out (content-visibility).
"use strict";

const MAX_CARDS = 200;
const FLUSH_EVERY_MS = 250; // new cards are added at most 4 times a second
const STATS_EVERY_MS = 3000;
const LABELS = ["positive", "neutral", "negative"];
const CHAIN_FIELDS = [
  ["text_analysis", "Text"],
  ["image_analysis", "Image"],
  ["conflict_resolution", "Conflict"],
  ["final_conclusion", "Conclusion"],
  ["prediction", "Prediction"],
];

const state = {
  label: "",
  aspect: "",
  window: 60,
  token: "",
  queue: [],
  cards: new Map(), // post id -> card element
  arrivals: [], // arrival times (ms) of results in the last 10 s
  aspects: new Set(),
  abort: null,
  lastEventId: null,
  generation: 0,
  flushPending: false,
  lastFlush: 0,
  alertsKey: null,
};

const $ = (id) => document.getElementById(id);

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function api(path) {
  const resp = await fetch(path, { headers: headers(), cache: "no-store" });
  if (resp.status === 401) {
    $("token-box").hidden = false;
    throw new Error("unauthorized");
  }
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
  return resp.json();
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

// --- cards ------------------------------------------------------------------------------
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function thumbnail(r) {
  if (!r.has_image) return el("div", "thumb none", "text only");
  const img = el("img", "thumb");
  img.alt = "image of post " + r.id;
  img.width = 96;
  img.height = 96;
  img.decoding = "async";
  img.loading = "lazy";
  const url = "/api/results/" + encodeURIComponent(r.id) + "/thumbnail";
  if (!state.token) {
    img.src = url;
  } else {
    fetch(url, { headers: headers() })
      .then((resp) => (resp.ok ? resp.blob() : null))
      .then((blob) => { if (blob) { img.src = URL.createObjectURL(blob); img.dataset.blob = "1"; } })
      .catch(() => {});
  }
  img.addEventListener("error", () => { img.replaceWith(el("div", "thumb none", "no thumbnail")); }, { once: true });
  return img;
}

function card(item, fresh) {
  const r = item.result;
  const c = el("article", fresh ? "card fresh" : "card"); // no highlight animation under a burst
  c.dataset.id = r.id;
  c.dataset.label = r.label;
  c.appendChild(thumbnail(r));
  const body = el("div", "body");
  body.appendChild(el("p", "text", item.text || "(no text kept)"));
  const row = el("div", "labelrow");
  row.appendChild(el("span", "label " + r.label, r.label));
  const bar = el("div", "bar");
  const fill = el("span", r.label);
  fill.style.width = Math.round(100 * (r.confidence || 0)) + "%";
  bar.appendChild(fill);
  row.appendChild(bar);
  row.appendChild(el("span", "conf", (r.confidence || 0).toFixed(2)));
  body.appendChild(row);
  const meta = el("div", "meta");
  if (r.aspect) meta.appendChild(el("span", "aspect", r.aspect));
  const e2e = r.timings && r.timings.end_to_end_ms !== undefined ? " · " + Math.round(r.timings.end_to_end_ms) + " ms" : "";
  meta.appendChild(document.createTextNode(r.id + " · " + r.model_name + " " + r.model_version + e2e));
  meta.title = meta.textContent;
  body.appendChild(meta);
  c.appendChild(body);
  const chain = el("details", "chain");
  chain.appendChild(el("summary", null, r.chain ? "reasoning chain" : "reasoning chain (labels-only result: none)"));
  if (r.chain) {
    const dl = el("dl");
    for (const [key, name] of CHAIN_FIELDS) {
      dl.appendChild(el("dt", null, name));
      dl.appendChild(el("dd", "f-" + key, r.chain[key] || "-"));
    }
    chain.appendChild(dl);
  }
  c.appendChild(chain);
  return c;
}

function matches(r) {
  if (state.label && r.label !== state.label) return false;
  if (state.aspect && norm(r.aspect || "") !== norm(state.aspect)) return false;
  return true;
}

function norm(s) {
  return s.trim().toLowerCase().split(/\s+/).join(" ");
}

function enqueue(items, live) {
  const now = Date.now();
  for (const item of items) {
    if (live) state.arrivals.push(now);
    const a = item.result.aspect;
    if (a && state.aspects.size < 500 && !state.aspects.has(a)) {
      state.aspects.add(a);
      $("aspects").appendChild(el("option", null, a)).value = a;
    }
    if (matches(item.result)) state.queue.push(item);
  }
  if (state.queue.length > MAX_CARDS) state.queue.splice(0, state.queue.length - MAX_CARDS);
  if (!state.flushPending) {
    state.flushPending = true;
    const wait = Math.max(0, state.lastFlush + FLUSH_EVERY_MS - performance.now());
    setTimeout(() => requestAnimationFrame(flush), wait);
  }
}

function dropCard(c) {
  const img = c.querySelector("img[data-blob]");
  if (img) URL.revokeObjectURL(img.src);
  state.cards.delete(c.dataset.id);
  c.remove();
}

function flush() {
  state.flushPending = false;
  state.lastFlush = performance.now();
  const feed = $("feed");
  const items = state.queue;
  state.queue = [];
  if (!items.length) return;
  const frag = document.createDocumentFragment();
  const seen = new Set();
  for (let i = items.length - 1; i >= 0; i--) { // queue is oldest first; the feed is newest first
    const item = items[i];
    if (seen.has(item.result.id)) continue; // an older version of a post already placed
    seen.add(item.result.id);
    const old = state.cards.get(item.result.id);
    if (old) dropCard(old); // a newer result of the same post (label first, then the chain)
    const c = card(item, items.length <= 3);
    state.cards.set(item.result.id, c);
    frag.appendChild(c);
  }
  feed.prepend(frag);
  while (feed.children.length > MAX_CARDS) dropCard(feed.lastElementChild);
  $("empty").hidden = feed.children.length > 0;
}

function clearFeed() {
  for (const c of Array.from($("feed").children)) dropCard(c);
  state.queue = [];
  $("empty").hidden = false;
}

// --- the event stream ------------------------------------------------------------------
function setConn(on, text) {
  const c = $("conn");
  c.className = "conn " + (on ? "on" : "off");
  c.textContent = text;
}

async function follow(generation) {
  while (generation === state.generation) {
    const ctrl = new AbortController();
    state.abort = ctrl;
    try {
      const q = query({ after: state.lastEventId, label: state.label, aspect: state.aspect });
      const resp = await fetch("/api/stream" + q, { headers: headers(), signal: ctrl.signal, cache: "no-store" });
      if (resp.status === 401) { // wait for a token (entering one restarts the stream)
        $("token-box").hidden = false;
        setConn(false, "token needed");
        return;
      }
      if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
      setConn(true, "live");
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        const batch = [];
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let id = null, data = "", event = "message";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (id) state.lastEventId = id;
          if (event === "result" && data) {
            try { batch.push(JSON.parse(data)); } catch (e) { /* skip a malformed event */ }
          }
        }
        if (batch.length && generation === state.generation) enqueue(batch, true);
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
    }
    if (generation !== state.generation) return;
    setConn(false, "reconnecting");
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function restart() {
  state.generation += 1;
  const generation = state.generation;
  if (state.abort) state.abort.abort();
  clearFeed();
  $("filter-note").textContent = "";
  try {
    const page = await api("/api/results" + query({ recent: 50, label: state.label, aspect: state.aspect }));
    if (generation !== state.generation) return;
    state.lastEventId = page.last_event_id;
    enqueue(page.items.slice().reverse(), false);
    if (!page.items.length && (state.label || state.aspect)) {
      $("filter-note").textContent = "no stored result matches these filters yet";
    }
  } catch (err) {
    setConn(false, String(err.message || err));
    state.lastEventId = null;
  }
  follow(generation);
  refreshStats();
  refreshAlerts();
}

// --- chart and counters -----------------------------------------------------------------
function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function timeLabel(sec, window) {
  const d = new Date(sec * 1000);
  if (window >= 86400) return d.toISOString().slice(5, 10);
  return d.toTimeString().slice(0, 5);
}

function drawChart(stats) {
  const chart = $("chart");
  while (chart.firstChild) chart.removeChild(chart.firstChild);
  const W = Math.max(300, Math.round(chart.clientWidth || 900)), H = 200, L = 36, R = 24, T = 10, B = 22;
  chart.setAttribute("viewBox", "0 0 " + W + " " + H);
  const buckets = stats.buckets;
  const max = Math.max(1, ...buckets.map((b) => Math.max(...LABELS.map((l) => b.counts[l]))));
  const x = (i) => L + (buckets.length > 1 ? (i * (W - L - R)) / (buckets.length - 1) : (W - L - R) / 2);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (const frac of [0, 0.5, 1]) {
    const v = Math.round(max * frac);
    chart.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const t = svg("text", { class: "axis", x: 2, y: y(v) + 4 });
    t.textContent = String(v);
    chart.appendChild(t);
  }
  const step = Math.max(1, Math.ceil(buckets.length / 8));
  buckets.forEach((b, i) => {
    if ((buckets.length - 1 - i) % step !== 0) return; // the newest bucket always labelled
    const t = svg("text", { class: "axis", x: x(i), y: H - 5, "text-anchor": i === buckets.length - 1 ? "end" : "middle" });
    t.textContent = timeLabel(b.start, stats.window);
    chart.appendChild(t);
  });
  for (const label of LABELS) {
    const pts = buckets.map((b, i) => x(i).toFixed(1) + "," + y(b.counts[label]).toFixed(1)).join(" ");
    chart.appendChild(svg("polyline", { class: label, points: pts }));
    buckets.forEach((b, i) => {
      if (!b.counts[label]) return;
      const c = svg("circle", { class: "pt " + label, cx: x(i), cy: y(b.counts[label]), r: 3 });
      c.dataset.count = b.counts[label];
      const title = svg("title");
      title.textContent = label + ": " + b.counts[label] + " (" + Math.round(100 * b.shares[label]) + "%) at " + timeLabel(b.start, stats.window);
      c.appendChild(title);
      chart.appendChild(c);
    });
  }
  chart.dataset.points = String(buckets.reduce((n, b) => n + LABELS.filter((l) => b.counts[l]).length, 0));
}

async function refreshStats() {
  try {
    const stats = await api("/api/stats" + query({ window: state.window, last: 30, aspect: state.aspect }));
    drawChart(stats);
    $("chart-scope").textContent = state.aspect ? "aspect: " + state.aspect : "all posts";
    const minute = await (state.window === 60 ? Promise.resolve(stats) : api("/api/stats?window=60&last=1"));
    $("minute").textContent = String(minute.buckets[minute.buckets.length - 1].total);
    $("indexed").textContent = String(stats.results_indexed);
    const dead = $("dead");
    while (dead.firstChild) dead.removeChild(dead.firstChild);
    let total = 0;
    for (const [code, n] of Object.entries(stats.dead_letters).sort()) {
      total += n;
      dead.appendChild(el("li", null, code + ": " + n));
    }
    $("dead-total").textContent = String(total);
  } catch (err) {
    /* shown by the connection badge */
  }
}

// --- alerts -----------------------------------------------------------------------------
const ALERT_KINDS = { negative_shift: "negative share up", positive_shift: "positive share up", volume_spike: "volume spike" };

function pct(x) {
  return Math.round(100 * x) + "%";
}

function utc(ms, withDate) {
  const iso = new Date(ms).toISOString();
  return withDate ? iso.slice(0, 10) + " " + iso.slice(11, 16) : iso.slice(11, 16);
}

function alertFigures(a) {
  const o = a.observed, b = a.baseline;
  if (o.share !== null && o.share !== undefined) {
    const label = a.kind === "negative_shift" ? "negative" : "positive";
    return pct(o.share) + " " + label + " (" + o[label] + " of " + o.count + ") vs " + pct(b.share) + " (" + b[label] + " of " + b.count + ") before";
  }
  return o.count + " posts vs " + a.expected.toFixed(1) + " expected (" + a.effect.toFixed(1) + "x)";
}

function alertItem(a) {
  const li = el("li", "alert " + a.kind);
  li.dataset.id = a.id;
  li.dataset.kind = a.kind;
  li.dataset.scope = a.scope;
  const head = el("div", "alert-head");
  head.appendChild(el("span", "kind", ALERT_KINDS[a.kind] || a.kind));
  head.appendChild(el("span", "scope", a.scope === "all" && a.aspect === null ? "all posts" : a.scope));
  head.appendChild(el("span", "when", utc(a.window_start_ms, true) + "-" + utc(a.window_end_ms, false) + " UTC (" + Math.round(a.window_s / 60) + " min)"));
  li.appendChild(head);
  li.appendChild(el("div", "figures", alertFigures(a) + "; p " + a.p_value.toPrecision(2) + ", q " + a.q_value.toPrecision(2)));
  const ex = el("div", "examples");
  ex.appendChild(document.createTextNode("examples: "));
  for (const pid of a.examples) {
    const link = el("a", "example", pid);
    link.href = "#post=" + encodeURIComponent(pid);
    link.dataset.post = pid;
    link.addEventListener("click", (e) => { e.preventDefault(); showExamples(a, pid); });
    ex.appendChild(link);
    ex.appendChild(document.createTextNode(" "));
  }
  li.appendChild(ex);
  return li;
}

async function showExamples(a, pid) {
  try {
    const detail = await api("/api/alerts/" + encodeURIComponent(a.id));
    const box = $("alert-examples");
    while (box.firstChild) box.removeChild(box.firstChild);
    $("alert-examples-title").textContent = "Example posts of " + (ALERT_KINDS[a.kind] || a.kind) + " in " + a.scope + " (" + detail.examples.length + " still cached)";
    for (const item of detail.examples) box.appendChild(card(item, false));
    $("alert-examples-box").hidden = false;
    const picked = box.querySelector(".card[data-id='" + CSS.escape(pid) + "']");
    if (picked) {
      picked.classList.add("picked");
      picked.scrollIntoView({ block: "nearest" });
    }
  } catch (err) {
    $("alerts-note").textContent = "could not load the alert: " + String(err.message || err);
  }
}

async function refreshAlerts() {
  try {
    const page = await api("/api/alerts?recent=20");
    const key = page.items.map((a) => a.id).join("|");
    if (key === state.alertsKey) return;
    state.alertsKey = key;
    const list = $("alerts");
    while (list.firstChild) list.removeChild(list.firstChild);
    for (const a of page.items) list.appendChild(alertItem(a));
    $("alerts-empty").hidden = page.items.length > 0;
  } catch (err) {
    /* shown by the connection badge */
  }
}

function tickRate() {
  const now = Date.now();
  while (state.arrivals.length && state.arrivals[0] < now - 10000) state.arrivals.shift();
  $("rate").textContent = (state.arrivals.length / 10).toFixed(1);
}

// --- start ------------------------------------------------------------------------------
function init() {
  const hash = new URLSearchParams(location.hash.slice(1));
  state.token = hash.get("token") || sessionStorage.getItem("mulcot-token") || "";
  if (hash.get("token")) {
    sessionStorage.setItem("mulcot-token", state.token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("f-label").addEventListener("change", (e) => { state.label = e.target.value; restart(); });
  $("f-aspect").addEventListener("change", (e) => { state.aspect = e.target.value.trim().slice(0, 200); restart(); });
  $("f-window").addEventListener("change", (e) => { state.window = Number(e.target.value); refreshStats(); });
  $("f-token").addEventListener("change", (e) => {
    state.token = e.target.value.trim();
    sessionStorage.setItem("mulcot-token", state.token);
    restart();
  });
  setInterval(refreshStats, STATS_EVERY_MS);
  setInterval(refreshAlerts, STATS_EVERY_MS);
  setInterval(tickRate, 1000);
  restart();
}

document.addEventListener("DOMContentLoaded", init);
