// wtm dashboard: one page, three views (sites, a site, the cluster), fed only by the documented
// API (/v1/...), so what it shows and what the API says cannot disagree. Live through
// /v1/stream (server-sent events, read with fetch so a bearer token can go with it).
// Every string from the logs (sites, paths, user agents, referrers) is attacker-chosen: it only
// ever reaches the page as textContent or an attribute value, never as HTML.
"use strict";

const PAGE_ROWS = 50;
const SERIES_WINDOWS = 60;
const RANGES = [["1h", 3600e3], ["6h", 6 * 3600e3], ["24h", 24 * 3600e3]];

const state = {
  overview: null,
  prevSample: null, // {t, events} of the overview before the newest, for events/s
  eventsPerSec: null,
  hosts: [],
  hostsAt: 0,
  anomaliesRecent: null,
  lastClosed: null,
  view: null, // the current view's object (render/refresh)
  sort: { key: "requests", dir: -1 },
  filter: "",
  page: 0,
};

// ---- tiny DOM helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const nf = new Intl.NumberFormat("en-US");
const fmtInt = (n) => (n === null || n === undefined ? "—" : nf.format(n));
const fmtPct = (x) => (x === null || x === undefined ? "—" : (100 * x).toFixed(2) + "%");
const fmtMs = (x) => (x === null || x === undefined ? "—" : x < 10 ? x.toFixed(2) + " ms" : x.toFixed(0) + " ms");
const fmtTime = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—");
const fmtSecs = (s) => (s === null || s === undefined ? "—" : s < 120 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min");
const toMs = (iso) => Date.parse(iso);
const isoOf = (ms) => new Date(ms).toISOString().replace(/\.000Z$/, "Z");

// A header row; a label ending in "#" is a numeric (right-aligned) column.
function headRow(labels) {
  return h("tr", {}, labels.map((l) => l.endsWith("#")
    ? h("th", { scope: "col", class: "n" }, l.slice(0, -1))
    : h("th", { scope: "col" }, l)));
}

// A value the tests (and a curious user, through the inspector) can read back exactly.
function val(text, raw, cls) {
  return h("span", { class: cls, "data-value": raw === null || raw === undefined ? "" : raw }, text);
}

// ---- API -----------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem("wtm-token");
}

function headers() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

let asking = null;
function askToken() {
  if (asking) return asking;
  const dlg = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  asking = new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      if (input.value) sessionStorage.setItem("wtm-token", input.value.trim());
      input.value = "";
      asking = null;
      resolve();
    }, { once: true });
  });
  if (!dlg.open) dlg.showModal();
  return asking;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  for (;;) {
    const r = await fetch(path, { headers: headers() });
    if (r.status === 401) {
      await askToken();
      continue;
    }
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new ApiError(r.status, (body && body.error) || r.statusText);
    return body;
  }
}

// ---- live stream ---------------------------------------------------------------------------

async function stream() {
  let backoff = 500;
  for (;;) {
    try {
      const r = await fetch("/v1/stream", { headers: headers() });
      if (r.status === 401) {
        await askToken();
        continue;
      }
      if (!r.ok || !r.body) throw new Error("stream: " + r.status);
      setLive("on", "live");
      backoff = 500;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (!data.length) continue;
          if (event === "overview") onOverview(JSON.parse(data.join("\n")));
          else if (event === "windows") onWindows();
        }
      }
    } catch (e) {
      console.warn("stream interrupted, reconnecting:", e.message);
    }
    setLive("off", "reconnecting…");
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

function setLive(cls, text) {
  const el = document.getElementById("live");
  el.className = "live " + cls;
  el.textContent = text + (state.overview ? " · updated " + new Date().toLocaleTimeString() : "");
}

function onOverview(o) {
  const now = performance.now();
  if (state.overview) {
    const prev = { t: state.lastSampleT, events: state.overview.events };
    const dt = (now - prev.t) / 1000;
    if (dt > 0.2) state.eventsPerSec = Math.max(0, (o.events - prev.events) / dt);
  }
  state.lastSampleT = now;
  state.overview = o;
  setLive("on", "live");
  if (state.view && state.view.onOverview) state.view.onOverview();
}

// New closed windows are readable: the view refetches what it shows.
function onWindows() {
  if (state.view && state.view.onWindows) state.view.onWindows();
}

// ---- shared loaders ------------------------------------------------------------------------

async function loadHosts() {
  const body = await api(`/v1/hosts?windows=${SERIES_WINDOWS}&sparkline=true`);
  state.hosts = body.hosts;
  state.hostsPartial = body.partial ? body.missing : null;
  state.hostsAt = Date.now();
  // Anomalies of the last hour of data (by the newest window any site has).
  let newest = 0;
  for (const s of state.hosts) newest = Math.max(newest, toMs(s.last_window_start));
  if (newest > 0) {
    const a = await api(`/v1/anomalies?since=${encodeURIComponent(isoOf(newest - 3600e3))}`);
    state.anomaliesRecent = a.anomalies.length;
  }
  return body;
}

// Coalesce refreshes: at most one in flight, and one more queued.
function coalesce(fn) {
  let running = null, again = false;
  const run = async () => {
    if (running) { again = true; return running; }
    running = (async () => {
      try {
        do { again = false; await fn(); } while (again);
      } catch (e) {
        console.warn(e);
        showError(e);
      } finally {
        running = null;
      }
    })();
    return running;
  };
  return run;
}

function showError(e) {
  const el = document.getElementById("view-error");
  if (el) el.textContent = e instanceof ApiError ? `The API said ${e.status}: ${e.message}` : String(e.message || e);
}

// ---- sites view ----------------------------------------------------------------------------

const SITE_COLUMNS = [
  { key: "host", label: "Site", get: (s) => s.host },
  { key: "requests", label: "Requests", n: true, get: (s) => s.requests },
  { key: "error_rate", label: "5xx share", n: true, get: (s) => s.error_rate },
  { key: "p99", label: "p99 (newest window)", n: true, get: (s) => (s.latest ? s.latest.latency_p99_ms : -1) },
  { key: "unique", label: "Unique clients (newest window)", n: true, get: (s) => (s.latest ? s.latest.unique_clients : -1) },
  { key: "bots", label: "Bots", n: true, get: (s) => s.bots },
  { key: "spark", label: `Requests, last ${SERIES_WINDOWS} windows` },
];

function sparkline(values) {
  const w = 120, hgt = 24;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  svg.setAttribute("role", "img");
  if (!values || values.length === 0) return svg;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : 0;
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(hgt - 2 - (v / max) * (hgt - 4)).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts.join(" "));
  svg.append(line);
  svg.setAttribute("aria-label", `requests per window, peak ${max}`);
  return svg;
}

function sitesView() {
  const root = h("div", {});
  const cards = h("section", { class: "cards", "aria-label": "Overview", id: "overview" });
  const search = h("input", {
    type: "search", id: "filter", placeholder: "Filter sites by name", "aria-label": "Filter sites by name",
    value: state.filter,
  });
  const info = h("span", { class: "muted", id: "sites-info" });
  const prev = h("button", { type: "button", id: "prev-page" }, "‹ Previous");
  const next = h("button", { type: "button", id: "next-page" }, "Next ›");
  const table = h("table", { id: "sites", "aria-label": "Sites" });
  root.append(
    h("h1", {}, "Sites"),
    cards,
    h("p", { class: "error", id: "view-error", role: "alert" }),
    h("h2", {}, "Every site"),
    h("div", { class: "row" }, search, info, h("span", { class: "spacer" }), prev, next),
    h("div", { class: "panel" }, table),
    h("p", { class: "note" },
      "Totals cover each site's newest " + SERIES_WINDOWS + " windows (and its open ones). p99 and unique clients are of its newest closed window.")
  );

  function renderCards() {
    const o = state.overview;
    cards.replaceChildren();
    if (!o) return;
    let req = 0, s5 = 0, worst = null, lag = null;
    for (const s of state.hosts) {
      req += s.requests;
      s5 += s.status_5xx;
      if (s.latest && (worst === null || s.latest.latency_p99_ms > worst)) worst = s.latest.latency_p99_ms;
    }
    for (const p of o.partitions) if (p.lag !== null && p.lag !== undefined) lag = (lag || 0) + p.lag;
    const card = (id, k, text, raw, cls) => h("div", { class: "card", id: "card-" + id }, h("div", { class: "k" }, k), val(text, raw, "v " + (cls || "")));
    const share = req ? s5 / req : 0;
    cards.append(
      card("events-per-s", "Events/s", state.eventsPerSec === null ? "—" : fmtInt(Math.round(state.eventsPerSec)), state.eventsPerSec === null ? "" : state.eventsPerSec.toFixed(1)),
      card("events", "Events ingested", fmtInt(o.events), o.events),
      card("requests", `Requests (last ${SERIES_WINDOWS} windows)`, fmtInt(req), req),
      card("error-rate", "5xx share", fmtPct(share), share, share > 0.05 ? "bad" : ""),
      card("p99", "Worst site p99 (newest window)", fmtMs(worst), worst),
      card("sites", "Sites", fmtInt(o.hosts), o.hosts),
      card("anomalies", "Anomalies (last hour)", fmtInt(state.anomaliesRecent), state.anomaliesRecent, state.anomaliesRecent ? "bad" : ""),
      card("consumer-lag", "Consumer lag (records)", lag === null ? "—" : fmtInt(lag), lag),
      card("watermark-lag", "Watermark lag", fmtSecs(o.watermark_lag_seconds), o.watermark_lag_seconds),
      card("invalid", "Invalid records", fmtInt(o.invalid_total), o.invalid_total, o.invalid_total ? "bad" : ""),
      card("late", "Late events", fmtInt(o.late), o.late),
      card("windows", "Windows closed", fmtInt(o.windows_closed), o.windows_closed),
    );
    if (o.partial) cards.append(h("div", { class: "card bad" }, "Partial: no answer from " + o.missing.join(", ")));
    if (o.hosts_overflow) cards.append(h("div", { class: "card bad" }, "More sites than limits.max_hosts: the rest count as (other)"));
  }

  function visible() {
    const f = state.filter.toLowerCase();
    const rows = f ? state.hosts.filter((s) => s.host.toLowerCase().includes(f)) : state.hosts.slice();
    const col = SITE_COLUMNS.find((c) => c.key === state.sort.key) || SITE_COLUMNS[1];
    const dir = state.sort.dir;
    rows.sort((a, b) => {
      const x = col.get(a), y = col.get(b);
      const c = typeof x === "string" ? x.localeCompare(y) : x - y;
      return c !== 0 ? c * dir : a.host.localeCompare(b.host);
    });
    return rows;
  }

  function renderTable() {
    const rows = visible();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    state.page = Math.min(state.page, pages - 1);
    const first = state.page * PAGE_ROWS;
    const shown = rows.slice(first, first + PAGE_ROWS);
    info.textContent = rows.length
      ? `${fmtInt(first + 1)}–${fmtInt(first + shown.length)} of ${fmtInt(rows.length)} sites` + (state.filter ? ` (filtered from ${fmtInt(state.hosts.length)})` : "")
      : state.hosts.length ? "No site matches" : "No sites yet";
    info.dataset.total = rows.length;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    const head = h("tr", {}, SITE_COLUMNS.map((c) => {
      if (!c.get) return h("th", { scope: "col" }, c.label);
      const sorted = state.sort.key === c.key;
      return h("th", { scope: "col", class: c.n ? "n" : null, "aria-sort": sorted ? (state.sort.dir > 0 ? "ascending" : "descending") : "none" },
        h("button", { type: "button", "data-sort": c.key, onclick: () => {
          state.sort = { key: c.key, dir: sorted ? -state.sort.dir : c.key === "host" ? 1 : -1 };
          state.page = 0;
          renderTable();
        } }, c.label));
    }));
    const body = h("tbody", {}, shown.map((s) => {
      const l = s.latest;
      return h("tr", { "data-host": s.host },
        h("td", { class: "site" }, h("a", { href: "#/site/" + encodeURIComponent(s.host), title: s.host }, s.host)),
        h("td", { class: "n" }, val(fmtInt(s.requests), s.requests)),
        h("td", { class: "n" }, val(fmtPct(s.error_rate), s.error_rate, s.error_rate > 0.05 ? "bad" : "")),
        h("td", { class: "n" }, val(l ? fmtMs(l.latency_p99_ms) : "—", l ? l.latency_p99_ms : "")),
        h("td", { class: "n" }, val(l ? fmtInt(l.unique_clients) : "—", l ? l.unique_clients : "")),
        h("td", { class: "n" }, val(fmtInt(s.bots), s.bots)),
        h("td", {}, sparkline(s.requests_per_window)));
    }));
    table.replaceChildren(h("thead", {}, head), body);
  }

  search.addEventListener("input", () => {
    state.filter = search.value;
    state.page = 0;
    renderTable();
  });
  prev.addEventListener("click", () => { state.page = Math.max(0, state.page - 1); renderTable(); });
  next.addEventListener("click", () => { state.page += 1; renderTable(); });

  const refresh = coalesce(async () => {
    await loadHosts();
    document.getElementById("view-error").textContent = "";
    renderCards();
    renderTable();
    root.dataset.loadedAt = String(state.hostsAt);
    // For bench/dashboard.py: when the table first shows real rows.
    if (!performance.getEntriesByName("wtm:sites-table").length) performance.mark("wtm:sites-table");
  });

  return {
    el: root,
    start() {
      renderCards();
      renderTable();
      return refresh();
    },
    onOverview: () => renderCards(),
    onWindows: () => refresh(),
  };
}

// ---- site view -----------------------------------------------------------------------------

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Shade the windows the detector flagged on a chart (uPlot draw hook).
function anomalyBands(getStarts, windowMs) {
  return {
    hooks: {
      draw: [(u) => {
        const starts = getStarts();
        if (!starts.length) return;
        const ctx = u.ctx;
        ctx.save();
        ctx.fillStyle = cssVar("--bad") + "33";
        for (const s of starts) {
          const x0 = u.valToPos(s / 1000, "x", true);
          const x1 = u.valToPos((s + windowMs) / 1000, "x", true);
          ctx.fillRect(x0, u.bbox.top, Math.max(2, x1 - x0), u.bbox.height);
        }
        ctx.restore();
      }],
    },
  };
}

function chart(container, title, series, data, opts) {
  const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--line"), width: 1 }, ticks: { stroke: cssVar("--line") } };
  const width = Math.max(300, container.clientWidth - 8);
  const u = new uPlot({
    title: undefined,
    width,
    height: 200,
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: cssVar(s.color), width: 1.5, value: s.value }))],
    axes: [axis, { ...axis, size: 60, values: opts && opts.yValues }],
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    // Window times are UTC everywhere else on the page and in the API.
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    plugins: opts && opts.plugins ? opts.plugins : [],
    legend: { live: true },
  }, data, container);
  return u;
}

function siteView(host, params) {
  const root = h("div", {});
  const rangeButtons = h("div", { class: "row", role: "group", "aria-label": "Time range" });
  const fromInput = h("input", { type: "datetime-local", step: 60, "aria-label": "From (UTC)", id: "range-from" });
  const toInput = h("input", { type: "datetime-local", step: 60, "aria-label": "To (UTC)", id: "range-to" });
  const custom = h("form", { class: "row", id: "custom-range" }, h("span", { class: "muted" }, "Custom (UTC):"), fromInput, toInput, h("button", { type: "submit" }, "Show"));
  const charts = h("section", { class: "charts", "aria-label": "Charts" });
  const tops = h("section", { class: "tops", "aria-label": "Top lists" });
  const anomalies = h("section", { "aria-label": "Anomalies", id: "anomalies" });
  const summary = h("p", { class: "muted", id: "range-info" });
  root.append(
    h("p", {}, h("a", { href: "#/" }, "← All sites")),
    h("h1", {}, host),
    h("div", { class: "row" }, rangeButtons, h("span", { class: "spacer" }), custom),
    summary,
    h("p", { class: "error", id: "view-error", role: "alert" }),
    charts,
    h("h2", {}, "Top over the range"),
    tops,
    h("h2", {}, "Anomalies in the range"),
    anomalies,
  );
  let range = params.get("range") || (params.get("from") ? "custom" : "1h");
  let flagged = { requests: [], error_rate: [], latency_p99_ms: [] };
  let windowMs = 60e3;
  let uplots = [];

  function setRange(r, from, to) {
    const q = new URLSearchParams({ range: r });
    if (r === "custom") { q.set("from", from); q.set("to", to); }
    location.hash = "#/site/" + encodeURIComponent(host) + "?" + q.toString();
  }
  for (const [name] of RANGES) {
    rangeButtons.append(h("button", { type: "button", "aria-pressed": range === name ? "true" : "false", "data-range": name, onclick: () => setRange(name) }, "Last " + name));
  }
  custom.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!fromInput.value || !toInput.value) return;
    setRange("custom", fromInput.value + ":00Z", toInput.value + ":00Z");
  });

  // The range in ms: relative ranges end at the site's newest window (the data's time, which a
  // backfill or a replay puts far from the wall clock).
  async function bounds() {
    if (range === "custom") return [toMs(params.get("from")), toMs(params.get("to"))];
    const span = (RANGES.find(([n]) => n === range) || RANGES[0])[1];
    const newest = await api(`/v1/hosts/${encodeURIComponent(host)}/windows`);
    const last = newest.windows.length ? toMs(newest.windows[newest.windows.length - 1].end) : Date.now();
    return [last - span, last];
  }

  const refresh = coalesce(async () => {
    const [from, to] = await bounds();
    fromInput.value = isoOf(from).slice(0, 16);
    toInput.value = isoOf(to).slice(0, 16);
    const q = `from=${encodeURIComponent(isoOf(from))}&to=${encodeURIComponent(isoOf(to))}`;
    const enc = encodeURIComponent(host);
    const [series, paths, refs, uas, codes, nets, anoms] = await Promise.all([
      api(`/v1/hosts/${enc}/windows?${q}`),
      api(`/v1/hosts/${enc}/top?dimension=path&k=10&${q}`),
      api(`/v1/hosts/${enc}/top?dimension=referrer&k=10&${q}`),
      api(`/v1/hosts/${enc}/top?dimension=user_agent&k=10&${q}`),
      api(`/v1/hosts/${enc}/top?dimension=status&k=10&${q}`),
      api(`/v1/hosts/${enc}/top?dimension=network&k=10&${q}`),
      api(`/v1/anomalies?host=${enc}&since=${encodeURIComponent(isoOf(from))}`),
    ]);
    document.getElementById("view-error").textContent = "";
    // Charts show closed windows only: an open one is still filling and would always dip.
    const w = series.windows.filter((x) => x.final);
    const open = series.windows.length - w.length;
    if (w.length) windowMs = toMs(w[0].end) - toMs(w[0].start);
    summary.textContent = `${fmtTime(isoOf(from))} to ${fmtTime(isoOf(to))} (UTC) · ${w.length} closed windows` +
      (open ? ` and ${open} open` : "") + ` · ${fmtInt(paths.requests)} requests` +
      (series.partial ? ` · partial: no answer from ${series.missing.join(", ")}` : "");
    summary.dataset.windows = w.length;
    charts.dataset.newest = w.length ? w[w.length - 1].start : "";
    const inRange = anoms.anomalies.filter((a) => toMs(a.window_start) < to);
    flagged = { requests: [], error_rate: [], latency_p99_ms: [] };
    for (const a of inRange) (flagged[a.metric] || (flagged[a.metric] = [])).push(toMs(a.window_start));
    drawCharts(w);
    drawTops([["Paths", paths], ["Status codes", codes], ["Client networks", nets], ["Referrers", refs], ["User agents", uas]]);
    drawAnomalies(inRange);
    root.dataset.loadedAt = String(Date.now());
  });

  function drawCharts(w) {
    for (const u of uplots) u.destroy();
    uplots = [];
    charts.replaceChildren();
    const xs = w.map((x) => toMs(x.start) / 1000);
    const box = (title, id) => {
      const c = h("div", { class: "panel chart", id });
      c.append(h("h3", {}, title));
      charts.append(c);
      return c;
    };
    const reqBox = box("Requests by status class", "chart-requests");
    const errBox = box("5xx share", "chart-errors");
    const latBox = box("Latency (ms)", "chart-latency");
    const uniqBox = box("Unique clients", "chart-unique");
    const classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    uplots.push(chart(reqBox, "", classes.map((c, i) => ({ label: c, color: "--s" + (i + 1) })),
      [xs, ...classes.map((c) => w.map((x) => x.status[c]))], { plugins: [anomalyBands(() => flagged.requests, windowMs)] }));
    uplots.push(chart(errBox, "", [{ label: "5xx share %", color: "--s5", value: (u, v) => (v === null ? "—" : v.toFixed(2) + "%") }],
      [xs, w.map((x) => 100 * x.error_rate)], { plugins: [anomalyBands(() => flagged.error_rate, windowMs)] }));
    uplots.push(chart(latBox, "", [
      { label: "p50", color: "--s2" }, { label: "p90", color: "--s4" }, { label: "p99", color: "--s5" },
    ], [xs, w.map((x) => x.latency_ms.p50), w.map((x) => x.latency_ms.p90), w.map((x) => x.latency_ms.p99)],
    { plugins: [anomalyBands(() => flagged.latency_p99_ms, windowMs)] }));
    uplots.push(chart(uniqBox, "", [{ label: "unique clients", color: "--s3" }], [xs, w.map((x) => x.unique_clients)]));
  }

  function drawTops(lists) {
    tops.replaceChildren();
    for (const [title, t] of lists) {
      const max = t.entries.length ? t.entries[0].count : 1;
      const table = h("table", { "data-dimension": t.dimension, "aria-label": title },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, title), h("th", { scope: "col", class: "n" }, "Requests"))),
        h("tbody", {}, t.entries.length ? t.entries.map((e) => h("tr", {},
          h("td", { class: "key" }, e.key === "" ? h("span", { class: "muted" }, "(empty)") : e.key),
          h("td", { class: "n" }, h("span", { class: "share", "data-w": Math.round((100 * e.count) / max) }), val(fmtInt(e.count), e.count))))
          : h("tr", {}, h("td", { colspan: 2, class: "muted" }, "Nothing in this range"))));
      tops.append(h("div", { class: "panel" }, table));
    }
    // Bar widths through the CSSOM (allowed by the page's content security policy).
    for (const bar of tops.querySelectorAll(".share")) bar.style.width = bar.dataset.w * 0.6 + "px";
  }

  function drawAnomalies(list) {
    anomalies.replaceChildren();
    if (!list.length) {
      anomalies.append(h("p", { class: "muted" }, "None: the detector flagged no window of this site in the range."));
      return;
    }
    anomalies.append(h("div", { class: "panel" }, h("table", { id: "anomaly-table" },
      h("thead", {}, headRow(["Window", "Metric", "Observed#", "Expected#", "Band#", "Score#", "Kind", "Model"])),
      h("tbody", {}, list.map((a) => h("tr", {},
        h("td", {}, fmtTime(a.window_start)), h("td", {}, a.metric),
        h("td", { class: "n" }, a.observed.toFixed(2)), h("td", { class: "n" }, a.expected.toFixed(2)),
        h("td", { class: "n" }, `${a.lower.toFixed(2)} – ${a.upper.toFixed(2)}`),
        h("td", { class: "n" }, a.score.toFixed(2)), h("td", {}, a.kind), h("td", {}, a.model)))))));
  }

  return {
    el: root,
    start: () => refresh(),
    onWindows() {
      if (range !== "custom") refresh();
    },
    stop() {
      for (const u of uplots) u.destroy();
    },
  };
}

// ---- cluster view --------------------------------------------------------------------------

function clusterView() {
  const root = h("div", {});
  const members = h("div", { class: "panel" });
  const parts = h("div", { class: "panel" });
  const meta = h("p", { class: "muted", id: "cluster-meta" });
  root.append(h("h1", {}, "Cluster"), meta, h("p", { class: "error", id: "view-error", role: "alert" }),
    h("h2", {}, "Members"), members, h("h2", {}, "Partitions owned by this node"), parts,
    h("h2", {}, "Every partition (from the overview, each from its newest owner)"), h("div", { class: "panel", id: "all-partitions" }));

  const refresh = coalesce(async () => {
    const c = await api("/v1/cluster");
    document.getElementById("view-error").textContent = "";
    meta.textContent = `This node: ${c.node} · source: ${c.source}` + (c.topic ? ` · topic ${c.topic}` : "") + (c.group ? ` · group ${c.group}` : "");
    members.replaceChildren(h("table", { id: "members" },
      h("thead", {}, headRow(["Node", "API", "Cluster address", "State", "Last heartbeat", "Partitions", "Home for sites#", "Actor restarts#"])),
      h("tbody", {}, c.members.map((m) => h("tr", { "data-node": m.id },
        h("td", {}, m.id, m.this_node ? h("span", { class: "muted" }, " (this node)") : null),
        h("td", {}, h("a", { href: `http://${m.api}/` }, m.api)),
        h("td", {}, m.cluster || "—"),
        h("td", {}, h("span", { class: "pill " + (m.alive ? "up" : "down") }, m.alive ? "alive" : "down")),
        h("td", {}, fmtTime(m.last_heartbeat)),
        h("td", {}, m.partitions.join(", ") || "—"),
        h("td", { class: "n" }, val(fmtInt(m.home_hosts), m.home_hosts)),
        h("td", { class: "n" }, val(fmtInt(m.actor_restarts), m.actor_restarts, m.actor_restarts ? "bad" : "")))))));
    parts.replaceChildren(h("table", { id: "partitions" },
      h("thead", {}, headRow(["Partition", "Next offset#", "Committed#", "Lag#", "Watermark", "Newest event", "Owner epoch#"])),
      h("tbody", {}, c.partitions.map((p) => h("tr", { "data-partition": p.partition },
        h("td", {}, p.partition), h("td", { class: "n" }, val(fmtInt(p.next_offset), p.next_offset)),
        h("td", { class: "n" }, fmtInt(p.committed_offset)), h("td", { class: "n" }, val(fmtInt(p.lag), p.lag)),
        h("td", {}, fmtTime(p.watermark)), h("td", {}, fmtTime(p.max_event_time)), h("td", { class: "n" }, p.owner_epoch))))));
    const o = state.overview;
    if (o) {
      document.getElementById("all-partitions").replaceChildren(h("table", {},
        h("thead", {}, headRow(["Partition", "Events#", "Late#", "Lag#", "Watermark", "Finished"])),
        h("tbody", {}, o.partitions.map((p) => h("tr", {},
          h("td", {}, p.partition), h("td", { class: "n" }, fmtInt(p.events)), h("td", { class: "n" }, fmtInt(p.late)),
          h("td", { class: "n" }, fmtInt(p.lag)), h("td", {}, fmtTime(p.watermark)), h("td", {}, p.finished ? "yes" : "no"))))));
    }
    root.dataset.loadedAt = String(Date.now());
  });
  return { el: root, start: () => refresh(), onOverview: () => refresh(), onWindows: () => refresh() };
}

// ---- router --------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  if (state.view && state.view.stop) state.view.stop();
  let view, nav;
  if (path.startsWith("/site/")) {
    view = siteView(decodeURIComponent(path.slice(6)), params);
    nav = "sites";
  } else if (path === "/cluster") {
    view = clusterView();
    nav = "cluster";
  } else {
    view = sitesView();
    nav = "sites";
  }
  for (const a of document.querySelectorAll("nav a[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  state.view = view;
  const main = document.getElementById("main");
  main.replaceChildren(view.el);
  view.start();
}

async function main() {
  window.addEventListener("hashchange", route);
  // The hash is the router's: the skip link moves focus instead of navigating.
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    document.getElementById("main").focus();
  });
  try {
    const c = await api("/v1/cluster");
    document.getElementById("node").textContent = `node ${c.node} · ${c.source}`;
  } catch (e) {
    console.warn(e);
  }
  route();
  stream();
  // The stream sends an overview only when something changed: a quiet second is 0 events/s.
  setInterval(() => {
    if (state.lastSampleT && performance.now() - state.lastSampleT > 2500 && state.eventsPerSec !== 0) {
      state.eventsPerSec = 0;
      if (state.view && state.view.onOverview) state.view.onOverview();
    }
  }, 1000);
}

main();
