// knock's dashboard: polls the HTTP API every two seconds (not while the tab is hidden) and
// draws what it answers. Plain JavaScript, no build step; charts by uPlot. Every figure comes
// from an endpoint of docs/http-api.md or from /metrics (docs/metrics.md):
//   providers  GET /api/v1/destinations, /api/v1/queue, /api/v1/suspensions
//   charts     queue depth from the destinations' `pending`; deferral rate from the
//              knock_attempts_total and knock_deferrals_total counters of /metrics (trailing
//              minute), seeded from GET /api/v1/stats when the engine has it
//   classes    knock_deferrals_total and knock_bounces_total by class (/metrics)
//   replies    GET /api/v1/diagnose (top replies, EE p50/p95, deferral share), every 10 s
//   messages   GET /api/v1/messages (search), /api/v1/messages/{id} (drill-down)
//   actions    POST /api/v1/suspend, /resume, /retry (a dry run first), /messages/{id}/release
//   domains    GET /api/v1/domains once, /api/v1/domains/{domain}/check when asked
//   fleet      the knock_fleet_nodes and knock_fleet_redis_up gauges of /metrics
"use strict";

(() => {
  const POLL_MS = 2000;
  const DIAGNOSE_EVERY = 5; // polls: diagnosis reads the event log, so every 10 s
  const KEEP_SECONDS = 3600; // of browser-accumulated history
  const RATE_WINDOW_SECONDS = 60;
  const CHART_PROVIDERS = 8;
  const TOKEN_KEY = "knock.token";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  const $ = (sel) => document.querySelector(sel);

  // --- small helpers ------------------------------------------------------------------

  /** An element with attributes and children (strings become text: nothing is parsed as HTML). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k.startsWith("data-")) e.dataset[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fmtInt(n) {
    return n === undefined || n === null ? "–" : Number(n).toLocaleString("en");
  }

  function fmtDuration(s) {
    if (s === undefined || s === null || Number.isNaN(s)) return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 >= 1 && s < 600 ? ` ${Math.floor(s % 60)} s` : ""}`;
    if (s < 86400) return `${Math.floor(s / 3600)} h${s % 3600 >= 60 ? ` ${Math.floor((s % 3600) / 60)} min` : ""}`;
    return `${Math.floor(s / 86400)} d${s % 86400 >= 3600 ? ` ${Math.floor((s % 86400) / 3600)} h` : ""}`;
  }

  function fmtPercent(x) {
    if (x === undefined || x === null) return "–";
    const p = x * 100;
    return `${p < 10 && p > 0 ? p.toFixed(1) : Math.round(p)} %`;
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString("en-GB", { hour12: false });
  }

  function fmtSince(iso) {
    if (!iso) return "–";
    const s = (Date.now() - new Date(iso).getTime()) / 1000;
    return s >= 0 ? `${fmtDuration(s)} ago` : `in ${fmtDuration(-s)}`;
  }

  /**
   * A reply with what differs from one recipient or message to the next taken out, so that
   * replies alike but for an address or an id group as one: email addresses, UUIDs, IPv4
   * addresses, hex ids and other long tokens mixing letters and digits, long digit runs.
   * The status code and the enhanced code stay.
   */
  function normalizeReply(text) {
    return String(text || "")
      .replace(/<[^<>\s]+@[^<>\s]+>/g, "<address>")
      .replace(/[A-Za-z0-9._%+=-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+/g, "<address>")
      .replace(/\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b/gi, "<id>")
      .replace(/\b\d{1,3}(\.\d{1,3}){3}\b/g, "<ip>")
      .replace(/\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b/gi, "<id>")
      .replace(/\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{12,}\b/g, "<id>")
      .replace(/\d{5,}/g, "<n>")
      .replace(/<+(address|id|ip)>+/g, "<$1>")
      .replace(/\s+/g, " ")
      .trim();
  }

  /** The one word for a destination's pacing, as `knock_destination_state` says it. */
  function pacingState(d) {
    const s = d.shaping || {};
    const a = s.allowance || {};
    if (s.outage_since) return "outage";
    if (a.probing_since) return "probing";
    if (s.paused_for_seconds > 0) return "paused";
    if (s.rate_per_minute !== undefined || (a.windows || []).length) return "paced";
    return "open";
  }

  // --- the API ------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super(body && body.error ? `${status}: ${body.error}` : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (resp.status === 401) $("#auth-banner").hidden = false;
    const text = await resp.text();
    let parsed = text;
    if ((resp.headers.get("content-type") || "").includes("json")) {
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch {
        parsed = text;
      }
    }
    if (!resp.ok) throw new HttpError(resp.status, parsed);
    return parsed;
  }

  /** Prometheus text: `[{name, labels, value}]` (comments skipped). */
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
      if (!m) continue;
      const labels = {};
      if (m[3]) {
        for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
          labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
        }
      }
      out.push({ name: m[1], labels, value: Number(m[4]) });
    }
    return out;
  }

  /** Summed samples of `name`, keyed by `key(labels)`. */
  function sumBy(samples, name, key) {
    const out = new Map();
    for (const s of samples) {
      if (s.name !== name) continue;
      const k = key(s.labels);
      out.set(k, (out.get(k) || 0) + s.value);
    }
    return out;
  }

  /** `q` of a Prometheus histogram's cumulative buckets (`[[le, count]]`), as histogram_quantile does. */
  function quantile(q, buckets) {
    buckets.sort((a, b) => a[0] - b[0]);
    const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (!total) return null;
    const rank = q * total;
    let prevLe = 0;
    let prevCount = 0;
    for (const [le, count] of buckets) {
      if (count >= rank) {
        if (le === Infinity) return prevLe;
        return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(count - prevCount, 1e-9);
      }
      prevLe = le;
      prevCount = count;
    }
    return prevLe;
  }

  // --- what the page knows --------------------------------------------------------------

  const state = {
    polls: 0,
    destinations: [],
    domains: [],
    suspensions: [],
    diagnosis: new Map(), // provider -> diagnosis
    topReplies: [],
    samples: [], // [{t, attempts: Map, deferred: Map}] from /metrics
    depth: { xs: [], series: new Map() }, // provider -> [pending|null aligned with xs]
    rate: { xs: [], series: new Map() },
    seeded: null, // {xs, series} from /api/v1/stats, when it answers
    charts: {},
  };

  function providerOf(domain) {
    return domain.provider || "(resolving)";
  }

  function suspendedProvider(name) {
    return state.suspensions.find((s) => s.provider === name);
  }

  /** Per provider: the destination, the queue counts summed over its domains, its diagnosis. */
  function providerRows() {
    const rows = new Map();
    const row = (name) => {
      if (!rows.has(name)) {
        rows.set(name, { name, domains: new Set(), queued: 0, deferred: 0, in_flight: 0, suspended: 0, oldest: 0, pending: 0 });
      }
      return rows.get(name);
    };
    for (const d of state.destinations) {
      const r = row(d.destination);
      // A provider reached from several sources has a destination per source; each shows
      // the provider's pending mail.
      r.sources = (r.sources || []).concat([d]);
      if (!r.destination) r.destination = d;
      r.pending = d.pending;
      d.domains.forEach((x) => r.domains.add(x));
    }
    for (const q of state.domains) {
      const r = row(providerOf(q));
      r.domains.add(q.domain);
      r.queued += q.queued;
      r.deferred += q.deferred;
      r.in_flight += q.in_flight;
      r.suspended += q.suspended || 0;
      r.oldest = Math.max(r.oldest, q.oldest_age_seconds || 0);
    }
    for (const s of state.suspensions) if (s.provider) row(s.provider);
    for (const r of rows.values()) {
      if (!r.destination) r.pending = r.queued + r.deferred;
      r.diagnosis = state.diagnosis.get(r.name);
    }
    return [...rows.values()].sort((a, b) => b.pending - a.pending || a.name.localeCompare(b.name));
  }

  // --- polling --------------------------------------------------------------------------

  let timer = null;
  let polling = false;

  function schedule() {
    clearTimeout(timer);
    if (!document.hidden) timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    if (polling || document.hidden) return;
    polling = true;
    try {
      await refresh(state.polls % DIAGNOSE_EVERY === 0);
      state.polls += 1;
      setStatus("live", `live · updated ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`);
      $("#error-banner").hidden = true;
      document.body.dataset.polls = String(state.polls);
    } catch (e) {
      setStatus("error", "not updating");
      showError(e);
    } finally {
      polling = false;
      schedule();
    }
  }

  async function refresh(withDiagnosis) {
    const [destinations, queue, suspensions, metrics] = await Promise.all([
      api("/api/v1/destinations"),
      api("/api/v1/queue"),
      api("/api/v1/suspensions"),
      api("/metrics"),
    ]);
    if (withDiagnosis) {
      try {
        const d = await api("/api/v1/diagnose?window=1h");
        state.diagnosis = new Map(d.providers.map((p) => [p.provider, p]));
      } catch (e) {
        // Diagnosis reads the event log; the rest of the page does without it.
        console.warn("diagnose", e);
      }
    }
    $("#auth-banner").hidden = true;
    state.destinations = destinations.destinations;
    state.domains = queue.domains;
    state.suspensions = suspensions.suspensions;
    const t = Date.now() / 1000;
    const samples = parseMetrics(metrics);
    state.metrics = samples;
    renderFleet(samples);
    recordSample(t, samples);
    const rows = providerRows();
    recordDepth(t, rows);
    render(rows);
  }

  function setStatus(kind, text) {
    const s = $("#status");
    s.dataset.state = kind;
    s.textContent = text;
  }

  function showError(e) {
    const b = $("#error-banner");
    b.textContent = e.status === 401 ? "" : `The API did not answer: ${e.message}`;
    b.hidden = e.status === 401;
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(timer);
      setStatus("paused", "paused while the tab is hidden");
    } else {
      poll();
    }
  });

  // --- series ---------------------------------------------------------------------------

  /** Appends a point at `t` to every series of `store` (a new series starts with nulls). */
  function appendPoint(store, t, values) {
    store.xs.push(t);
    const n = store.xs.length;
    for (const [name, v] of values) {
      if (!store.series.has(name)) store.series.set(name, new Array(n - 1).fill(null));
    }
    for (const [name, arr] of store.series) arr.push(values.has(name) ? values.get(name) : null);
    while (store.xs.length && store.xs[0] < t - KEEP_SECONDS) {
      store.xs.shift();
      for (const arr of store.series.values()) arr.shift();
    }
  }

  function recordDepth(t, rows) {
    appendPoint(state.depth, t, new Map(rows.filter((r) => r.name !== "(resolving)" || r.pending).map((r) => [r.name, r.pending])));
  }

  /** The deferral rate over the trailing minute, from the counters' growth. */
  function recordSample(t, samples) {
    const attempts = sumBy(samples, "knock_attempts_total", (l) => l.provider || "");
    const deferred = sumBy(samples, "knock_deferrals_total", (l) => l.provider || "");
    state.samples.push({ t, attempts, deferred });
    while (state.samples.length > 2 && state.samples[1].t <= t - RATE_WINDOW_SECONDS) state.samples.shift();
    if (state.samples.length < 2) return;
    const base = state.samples[0];
    const values = new Map();
    for (const [p, a] of attempts) {
      const da = a - (base.attempts.get(p) || 0);
      const dd = (deferred.get(p) || 0) - (base.deferred.get(p) || 0);
      values.set(p || "(none)", da > 0 ? dd / da : null);
    }
    appendPoint(state.rate, t, values);
  }

  /** History from `GET /api/v1/stats` (per minute, per provider), when the engine serves it. */
  async function seedFromStats() {
    try {
      const s = await api("/api/v1/stats?by=provider&from=-1h&step=1m");
      const seeded = { xs: [], series: new Map() };
      const byTime = new Map();
      for (const series of s.series || []) {
        const name = series.provider || "(none)";
        for (const p of series.points || []) {
          const t = new Date(p.t).getTime() / 1000;
          if (!byTime.has(t)) byTime.set(t, new Map());
          byTime.get(t).set(name, p.attempts > 0 ? p.deferred / p.attempts : null);
        }
      }
      for (const t of [...byTime.keys()].sort((a, b) => a - b)) appendPoint(seeded, t, byTime.get(t));
      state.seeded = seeded;
    } catch (e) {
      // 404: this engine keeps no history; the chart starts with the page.
      state.seeded = null;
    }
  }

  // --- charts ---------------------------------------------------------------------------

  /** The providers worth a line: the biggest now, at most CHART_PROVIDERS. */
  function chartNames(store, rank) {
    return [...store.series.keys()].sort((a, b) => rank(b) - rank(a) || a.localeCompare(b)).slice(0, CHART_PROVIDERS);
  }

  function drawChart(id, store, names, opts) {
    const box = $(`#${id}`);
    const width = Math.max(box.clientWidth, 280);
    const data = [store.xs.slice(), ...names.map((n) => store.series.get(n).slice())];
    const key = names.join("\n");
    let chart = state.charts[id];
    if (!names.length || !store.xs.length) {
      if (chart) chart.plot.destroy();
      delete state.charts[id];
      box.replaceChildren(el("p", { class: "empty chart-empty" }, "No data yet: the lines start with the page's first polls."));
      return;
    }
    if (!chart) box.replaceChildren();
    if (chart && chart.key === key) {
      chart.plot.setData(data);
      if (chart.width !== width) {
        chart.plot.setSize({ width, height: 220 });
        chart.width = width;
      }
      return;
    }
    if (chart) chart.plot.destroy();
    const plot = new uPlot(
      {
        width,
        height: 220,
        legend: { show: true },
        cursor: { points: { size: 6 } },
        // At least two minutes wide, so that the first points do not fill the chart.
        scales: { x: { time: true, range: (u, min, max) => [Math.min(min, max - 120), max] }, y: opts.y },
        axes: [{ stroke: "#6b7280", grid: { stroke: "#eef0f3" } }, { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, values: opts.values, size: 56 }],
        series: [
          {},
          ...names.map((n, i) => ({
            label: n, // a provider's name: never a recipient
            stroke: COLORS[i % COLORS.length],
            width: 2,
            spanGaps: false,
            value: (u, v) => (v === null || v === undefined ? "–" : opts.format(v)),
          })),
        ],
      },
      data,
      box,
    );
    state.charts[id] = { plot, key, width };
  }

  function renderCharts(rows) {
    const pending = new Map(rows.map((r) => [r.name, r.pending]));
    const depthNames = chartNames(state.depth, (n) => pending.get(n) || 0);
    drawChart("chart-depth", state.depth, depthNames, {
      y: { range: (u, min, max) => [0, Math.max(5, Math.ceil(max * 1.15))] },
      values: (u, ticks) => ticks.map((v) => fmtInt(v)),
      format: (v) => fmtInt(v),
    });
    const rate = mergedRate();
    const rateNames = chartNames(rate, (n) => pending.get(n) || 0);
    const anyRate = rateNames.some((n) => rate.series.get(n).some((v) => v !== null));
    const source = state.seeded
      ? "per minute from the engine's history (/api/v1/stats), then over the trailing minute of this page's polls"
      : "over the trailing minute, from this page's polls since it was opened";
    $("#deferral-source").textContent = anyRate ? source : `${source}: no attempts yet, the lines start with the next ones`;
    drawChart("chart-deferrals", rate, rateNames, {
      y: { range: [0, 1] },
      values: (u, ticks) => ticks.map((v) => `${Math.round(v * 100)} %`),
      format: (v) => fmtPercent(v),
    });
  }

  /** The seeded history (if any) followed by the live series. */
  function mergedRate() {
    if (!state.seeded || !state.seeded.xs.length) return state.rate;
    const out = { xs: [], series: new Map() };
    const live0 = state.rate.xs.length ? state.rate.xs[0] : Infinity;
    const seeded = state.seeded.xs.map((t, i) => [t, i]).filter(([t]) => t < live0);
    const names = new Set([...state.seeded.series.keys(), ...state.rate.series.keys()]);
    out.xs = [...seeded.map(([t]) => t), ...state.rate.xs];
    for (const n of names) {
      const s = state.seeded.series.get(n);
      const l = state.rate.series.get(n);
      out.series.set(n, [...seeded.map(([, i]) => (s ? s[i] : null)), ...(l || new Array(state.rate.xs.length).fill(null))]);
    }
    return out;
  }

  // --- rendering ------------------------------------------------------------------------

  function render(rows) {
    renderTotals(rows);
    renderProviders(rows);
    renderCharts(rows);
    renderClasses();
    renderReplies();
    renderSuspensions();
    renderProviderOptions(rows);
  }

  function renderTotals(rows) {
    const sum = (f) => state.domains.reduce((n, d) => n + (d[f] || 0), 0);
    $("#t-queued").textContent = fmtInt(sum("queued"));
    $("#t-deferred").textContent = fmtInt(sum("deferred"));
    $("#t-pending").textContent = fmtInt(sum("queued") + sum("deferred"));
    $("#t-inflight").textContent = fmtInt(sum("in_flight"));
    $("#t-suspended").textContent = fmtInt(sum("suspended"));
    const buckets = new Map();
    for (const s of state.metrics || []) {
      if (s.name !== "knock_ee_seconds_bucket") continue;
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      buckets.set(le, (buckets.get(le) || 0) + s.value);
    }
    const b = [...buckets.entries()];
    const p50 = quantile(0.5, b);
    const p95 = quantile(0.95, b);
    $("#t-ee").textContent = p50 === null ? "–" : `${fmtDuration(p50)} / ${fmtDuration(p95)}`;
    $("#t-ee").title = "since knock started, from the knock_ee_seconds histogram";
    void rows;
  }

  function badge(text, kind) {
    return el("span", { class: `badge ${kind || text}` }, text);
  }

  function pacingCell(r) {
    const d = r.destination;
    const parts = [];
    const suspended = suspendedProvider(r.name);
    const word = d ? pacingState(d) : "idle";
    const badges = [badge(word)];
    if (suspended) badges.unshift(badge("suspended"));
    parts.push(el("div", { class: "badges" }, badges));
    if (d) {
      const s = d.shaping;
      const lines = [];
      if (s.rate_per_minute !== undefined) {
        const stat = s.static_rate_per_minute !== undefined && s.static_rate_per_minute !== s.rate_per_minute ? ` (static ${Math.round(s.static_rate_per_minute)})` : "";
        lines.push(`${Math.round(s.rate_per_minute)}/min${stat}`);
      }
      for (const w of (s.allowance && s.allowance.windows) || []) {
        lines.push(`allows ${w.count} per ${fmtDuration(w.seconds)}${w.settled ? "" : " (narrowing)"}, ${w.used} used`);
      }
      if (s.allowance && s.allowance.next_probe_in_seconds !== undefined) lines.push(`next probe in ${fmtDuration(s.allowance.next_probe_in_seconds)}`);
      if (s.paused_for_seconds > 0) lines.push(`paused ${fmtDuration(s.paused_for_seconds)}`);
      if (s.outage_since) lines.push(`no host answers since ${fmtSince(s.outage_since)}`);
      if (d.greylist_delay_seconds !== undefined) lines.push(`greylist ${fmtDuration(d.greylist_delay_seconds)}`);
      if (s.recent_classes && s.recent_classes.length) lines.push(`last failure ${s.recent_classes[s.recent_classes.length - 1]}`);
      if (d.warmup && !d.warmup.done) lines.push(`warm-up day ${d.warmup.day}${d.warmup.last_step ? ` (${d.warmup.last_step.replace("_", " ")})` : ""}`);
      for (const l of d.limits || []) lines.push(`${fmtInt(l.used)} of ${fmtInt(l.limit)} this ${l.period}`);
      const streams = Object.entries(d.ready_by_stream || {});
      if (streams.length > 1) lines.push(`ready ${streams.map(([k, n]) => `${k} ${fmtInt(n)}`).join(", ")}`);
      if (lines.length) parts.push(el("div", { class: "sub" }, lines.join(" · ")));
    }
    for (const src of r.sources && r.sources.length > 1 ? r.sources : []) {
      const blocked = src.blocked_until ? `, blocked until ${fmtSince(src.blocked_until)}` : "";
      const warm = src.warmup && !src.warmup.done ? `, warm-up day ${src.warmup.day}` : "";
      parts.push(el("div", { class: "sub" }, `via ${src.source}: ${pacingState(src)}, ${src.connections_open} open${blocked}${warm}`));
    }
    return el("td", { class: "pacing" }, parts);
  }

  function renderProviders(rows) {
    const body = $("#providers tbody");
    body.replaceChildren(
      ...rows.map((r) => {
        const d = r.destination;
        const g = r.diagnosis && r.diagnosis.figures;
        const counts = [];
        if (r.queued) counts.push(`${fmtInt(r.queued)} queued`);
        if (r.deferred) counts.push(`${fmtInt(r.deferred)} deferred`);
        if (r.in_flight) counts.push(`${fmtInt(r.in_flight)} active`);
        if (r.suspended) counts.push(`${fmtInt(r.suspended)} held back`);
        const suspended = suspendedProvider(r.name);
        const actions = [];
        if (r.name !== "(resolving)") {
          actions.push(
            suspended
              ? el("button", { type: "button", "data-action": "resume", onclick: () => confirmResume({ provider: r.name }, r.pending) }, "Resume")
              : el("button", { type: "button", "data-action": "suspend", onclick: () => confirmSuspend(r) }, "Suspend"),
            el("button", { type: "button", "data-action": "retry", onclick: () => confirmRetry(r) }, "Retry now"),
          );
        }
        const dx = r.diagnosis;
        const cause = dx && !["healthy", "unknown"].includes(dx.cause) ? el("span", { class: `cause ${dx.confidence}`, title: `${dx.summary} (${dx.confidence} confidence)` }, dx.cause) : null;
        return el(
          "tr",
          { "data-provider": r.name, "data-state": d ? pacingState(d) : "idle", "data-suspended": suspended ? "true" : "false" },
          el("td", {}, el("div", { class: "name" }, r.name, cause), el("div", { class: "sub" }, [...r.domains].sort().join(", "))),
          el("td", { class: "num" }, el("div", { class: "big" }, fmtInt(r.pending)), el("div", { class: "sub" }, counts.join(" · "))),
          el("td", { class: "num" }, r.oldest ? fmtDuration(r.oldest) : "–"),
          pacingCell(r),
          el("td", { class: "num" }, d ? `${d.connections_open} / ${d.shaping.connections}` : "–", d ? el("div", { class: "sub" }, `max ${d.shaping.connection_ceiling ?? d.shaping.max_connections}`) : null),
          el("td", { class: "num" }, g && g.attempts ? fmtPercent(g.deferral_rate) : "–", g && g.attempts ? el("div", { class: "sub" }, `${fmtInt(g.deferrals)} of ${fmtInt(g.attempts)}`) : null),
          el("td", { class: "num" }, g && g.ee_p50_seconds !== undefined ? `${fmtDuration(g.ee_p50_seconds)} / ${fmtDuration(g.ee_p95_seconds)}` : "–"),
          el("td", { class: "actions" }, actions),
        );
      }),
    );
    $("#providers-empty").hidden = rows.length > 0;
  }

  function renderClasses() {
    const samples = state.metrics || [];
    const rows = new Map();
    const add = (name, field) => {
      for (const s of samples) {
        if (s.name !== name || !s.value) continue;
        const c = s.labels.class || "(none)";
        if (!rows.has(c)) rows.set(c, { cls: c, deferred: 0, bounced: 0, providers: new Map() });
        const r = rows.get(c);
        r[field] += s.value;
        const p = s.labels.provider || "(no provider)";
        r.providers.set(p, (r.providers.get(p) || 0) + s.value);
      }
    };
    add("knock_deferrals_total", "deferred");
    add("knock_bounces_total", "bounced");
    const list = [...rows.values()].sort((a, b) => b.deferred - a.deferred || b.bounced - a.bounced);
    const max = Math.max(1, ...list.map((r) => r.deferred + r.bounced));
    $("#classes tbody").replaceChildren(
      ...list.map((r) =>
        el(
          "tr",
          { "data-class": r.cls },
          el("td", {}, badge(r.cls, "class"), el("div", { class: "bar" }, el("span", { class: "d", style: `width:${(100 * r.deferred) / max}%` }), el("span", { class: "b", style: `width:${(100 * r.bounced) / max}%` }))),
          el("td", { class: "num" }, fmtInt(r.deferred)),
          el("td", { class: "num" }, fmtInt(r.bounced)),
          el(
            "td",
            { class: "sub" },
            [...r.providers.entries()]
              .sort((a, b) => b[1] - a[1])
              .slice(0, 3)
              .map(([p, n]) => `${p} ${fmtInt(n)}`)
              .join(", "),
          ),
        ),
      ),
    );
    $("#classes-empty").hidden = list.length > 0;
  }

  function renderReplies() {
    const grouped = new Map();
    for (const [provider, d] of state.diagnosis) {
      for (const r of d.figures.top_replies || []) {
        const text = normalizeReply(r.reply);
        if (!grouped.has(text)) grouped.set(text, { text, count: 0, cls: r.class, providers: new Set() });
        const g = grouped.get(text);
        g.count += r.count;
        g.providers.add(provider);
      }
    }
    const list = [...grouped.values()].sort((a, b) => b.count - a.count).slice(0, 10);
    $("#replies tbody").replaceChildren(
      ...list.map((g) =>
        el(
          "tr",
          {},
          el("td", { class: "num" }, fmtInt(g.count)),
          el("td", {}, g.cls ? badge(g.cls, "class") : "–"),
          el("td", { class: "reply" }, g.text),
          el("td", { class: "sub" }, [...g.providers].sort().join(", ")),
        ),
      ),
    );
    $("#replies-empty").hidden = list.length > 0;
  }

  function renderSuspensions() {
    const list = state.suspensions;
    $("#suspensions tbody").replaceChildren(
      ...list.map((s) => {
        const [kind, name] = s.provider ? ["provider", s.provider] : s.domain ? ["domain", s.domain] : ["message", s.message];
        const target = { [kind]: name };
        const pending = kind === "provider" ? (state.destinations.find((d) => d.destination === name) || {}).pending : undefined;
        const button =
          kind === "message"
            ? el("button", { type: "button", "data-action": "release", onclick: () => confirmRelease(name) }, "Release")
            : el("button", { type: "button", "data-action": "resume", onclick: () => confirmResume(target, pending) }, "Resume");
        return el(
          "tr",
          { "data-target": `${kind}:${name}` },
          el("td", {}, el("span", { class: "kind" }, kind), " ", el("span", { class: "name" }, name)),
          el("td", {}, s.reason || "–"),
          el("td", {}, s.actor || "–"),
          el("td", { title: fmtTime(s.since) }, fmtSince(s.since)),
          el("td", { class: "actions" }, button),
        );
      }),
    );
    $("#suspensions-empty").hidden = list.length > 0;
  }

  function renderProviderOptions(rows) {
    const select = $("#search select[name=provider]");
    const names = rows.map((r) => r.name).filter((n) => n !== "(resolving)").sort();
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\n") === names.join("\n")) return;
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "any provider"), ...names.map((n) => el("option", { value: n }, n)));
    select.value = names.includes(current) ? current : "";
  }

  // --- actions: a confirm step, then the call --------------------------------------------

  /** Shows the confirm dialog; resolves to the reason typed (or "") on OK, null on cancel. */
  function confirmDialog({ title, body, ok, reason }) {
    const dialog = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-body").replaceChildren(...[body].flat());
    $("#confirm-ok").textContent = ok;
    $("#confirm-reason-row").hidden = !reason;
    $("#confirm-reason").value = "";
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => resolve(dialog.returnValue === "ok" ? $("#confirm-reason").value.trim() : null),
        { once: true },
      );
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  function toast(text, kind) {
    const t = $("#toast");
    t.textContent = text;
    t.className = kind || "";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.hidden = true), 6000);
  }

  async function act(label, path, body) {
    try {
      const answer = await api(path, { method: "POST", body });
      toast(label(answer), "ok");
    } catch (e) {
      toast(`${path}: ${e.message}`, "error");
    }
    state.polls = 0; // diagnosis again with the next poll
    clearTimeout(timer);
    poll();
  }

  async function confirmSuspend(r) {
    const reason = await confirmDialog({
      title: `Suspend ${r.name}?`,
      body: [
        el("strong", { "data-count": r.pending }, `${fmtInt(r.pending)} recipient${r.pending === 1 ? "" : "s"}`),
        ` pending for ${r.name} stay queued (and still expire at max_age); nothing more is sent there until it is resumed. Attempts under way finish.`,
      ],
      ok: "Suspend",
      reason: true,
    });
    if (reason === null) return;
    await act(() => `Suspended ${r.name}`, "/api/v1/suspend", reason ? { provider: r.name, reason } : { provider: r.name });
  }

  async function confirmResume(target, pending) {
    const [kind, name] = Object.entries(target)[0];
    const ok = await confirmDialog({
      title: `Resume ${kind} ${name}?`,
      body:
        pending === undefined
          ? "Its mail is due at once, let out at the destination's learned pace."
          : [el("strong", { "data-count": pending }, `${fmtInt(pending)} recipients`), " are due at once, let out at the destination's learned pace (never all at once)."],
      ok: "Resume",
    });
    if (ok === null) return;
    await act((a) => `Resumed ${name}: ${fmtInt(a.recipients)} recipients due`, "/api/v1/resume", target);
  }

  async function confirmRelease(id) {
    const ok = await confirmDialog({ title: `Release message ${id.slice(0, 13)}?`, body: "It goes at its destinations' pace.", ok: "Release" });
    if (ok === null) return;
    await act(() => `Released ${id.slice(0, 13)}`, `/api/v1/messages/${encodeURIComponent(id)}/release`, undefined);
  }

  async function confirmRetry(r) {
    let dry;
    try {
      dry = await api("/api/v1/retry", { method: "POST", body: { provider: r.name, dry_run: true } });
    } catch (e) {
      toast(`retry (dry run): ${e.message}`, "error");
      return;
    }
    const body = [
      el("strong", { "data-count": dry.recipients }, `${fmtInt(dry.recipients)} recipient${dry.recipients === 1 ? "" : "s"}`),
      ` in ${fmtInt(dry.groups)} group${dry.groups === 1 ? "" : "s"} would be due now, let out at ${r.name}'s pace.`,
    ];
    if (dry.greylisted) body.push(` ${fmtInt(dry.greylisted)} greylisted keep their time${dry.not_before ? ` (until ${fmtTime(dry.not_before)})` : ""}: an earlier retry would only reset the receiver's greylist.`);
    if (dry.in_flight) body.push(` ${fmtInt(dry.in_flight)} being delivered now are left alone.`);
    body.push(" Suspended and held mail is not retried.");
    const ok = await confirmDialog({ title: `Retry ${r.name} now?`, body, ok: dry.recipients ? "Retry" : "Retry anyway" });
    if (ok === null) return;
    await act((a) => `Retrying ${fmtInt(a.recipients)} recipients of ${r.name}`, "/api/v1/retry", { provider: r.name });
  }

  // --- message search and drill-down -----------------------------------------------------

  let searchQuery = null;

  async function search(after) {
    const form = $("#search");
    if (!after) {
      const params = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (String(v).trim()) params.set(k, String(v).trim());
      params.set("limit", "50");
      searchQuery = params;
    }
    const params = new URLSearchParams(searchQuery);
    if (after) params.set("after", after);
    let answer;
    try {
      answer = await api(`/api/v1/messages?${params}`);
    } catch (e) {
      toast(`search: ${e.message}`, "error");
      return;
    }
    const body = $("#messages tbody");
    const rows = answer.messages.map((m) =>
      el(
        "tr",
        { "data-id": m.id },
        el("td", {}, el("button", { type: "button", class: "link mono", onclick: () => showMessage(m.id) }, m.id.slice(0, 13))),
        el("td", {}, m.from || "<>"),
        el("td", { class: "num" }, fmtDuration(m.age_seconds)),
        el(
          "td",
          {},
          m.recipients.map((r) =>
            el(
              "div",
              { class: "rcpt" },
              el("span", { class: "addr" }, r.address),
              " ",
              badge(r.in_flight ? "active" : r.state, "state"),
              ` ${r.attempts} attempt${r.attempts === 1 ? "" : "s"}`,
              r.last_attempt ? el("span", { class: "sub reply" }, ` · ${[r.last_attempt.code, r.last_attempt.enhanced, r.last_attempt.text].filter((x) => x !== undefined).join(" ")}`) : null,
            ),
          ),
        ),
      ),
    );
    if (after) body.append(...rows);
    else body.replaceChildren(...rows);
    $("#messages-empty").hidden = body.children.length > 0;
    const more = $("#more");
    more.hidden = !answer.next;
    more.onclick = () => search(answer.next);
  }

  async function showMessage(id) {
    let m;
    try {
      m = await api(`/api/v1/messages/${encodeURIComponent(id)}`);
    } catch (e) {
      toast(`message ${id.slice(0, 13)}: ${e.message}`, "error");
      return;
    }
    $("#detail-id").textContent = m.id;
    $("#detail-envelope").textContent = `from ${m.from || "<>"} · received ${fmtTime(m.received_at)} over ${m.source} · ${fmtInt(m.size)} bytes${m.done_at ? ` · done ${fmtTime(m.done_at)}` : ""}`;
    $("#detail-recipients").replaceChildren(
      ...m.recipients.map((r) =>
        el(
          "div",
          { class: "recipient" },
          el("h3", {}, r.address, " ", badge(r.state, "state"), r.next_attempt ? el("span", { class: "sub" }, ` next attempt ${fmtSince(r.next_attempt)}`) : null),
          r.attempts.length
            ? el(
                "table",
                { class: "grid attempts" },
                el("thead", {}, el("tr", {}, ["at", "MX", "from IP", "reply", "class", "TLS"].map((h) => el("th", {}, h)))),
                el(
                  "tbody",
                  {},
                  r.attempts.map((a) =>
                    el(
                      "tr",
                      {},
                      el("td", { class: "mono" }, fmtTime(a.at)),
                      el("td", {}, a.mx || "–"),
                      el("td", {}, a.local_ip || "–"),
                      el("td", { class: "reply" }, [a.code, a.enhanced, a.text].filter((x) => x !== undefined).join(" ") + (a.failure ? ` (${a.failure})` : "")),
                      el("td", {}, a.class ? badge(a.class, "class") : "–"),
                      el("td", {}, a.tls ? `${a.tls.version}${a.tls.verified ? ", verified" : ""}` : "–"),
                    ),
                  ),
                ),
              )
            : el("p", { class: "sub" }, "not tried yet"),
        ),
      ),
    );
    const detail = $("#detail");
    detail.hidden = false;
    detail.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  // --- the fleet (docs/fleet.md), from the knock_fleet_* gauges of a clustered node ---------

  function renderFleet(samples) {
    const nodes = samples.find((s) => s.name === "knock_fleet_nodes");
    const up = samples.find((s) => s.name === "knock_fleet_redis_up");
    const badge = $("#fleet");
    badge.hidden = !nodes;
    if (!nodes) return;
    const redis = up && up.value === 1;
    badge.dataset.state = redis ? "live" : "error";
    badge.textContent = `fleet of ${nodes.value} · Redis ${redis ? "up" : "down: last share kept"}`;
  }

  // --- sending domains: their DNS checked when asked ---------------------------------------

  async function loadDomains() {
    let list = [];
    try {
      list = (await api("/api/v1/domains")).domains;
    } catch (e) {
      return;
    }
    $("#domains").replaceChildren(
      ...list.map((d) =>
        el(
          "li",
          { "data-domain": d.domain },
          el("span", { class: "name" }, d.domain),
          " ",
          el("span", { class: "sub" }, `selectors ${d.selectors.join(", ")}`),
          " ",
          el("button", { type: "button", "data-action": "check", onclick: () => checkDomain(d.domain) }, "Check"),
        ),
      ),
    );
    $("#domains-empty").hidden = list.length > 0;
  }

  async function checkDomain(domain) {
    const table = $("#domain-checks");
    table.dataset.domain = "";
    table.dataset.state = "checking";
    let view;
    try {
      view = await api(`/api/v1/domains/${encodeURIComponent(domain)}/check`);
    } catch (e) {
      table.dataset.state = "failed";
      toast(`check of ${domain}: ${e.message}`);
      return;
    }
    $("#domain-checks tbody").replaceChildren(
      ...view.checks.map((c) =>
        el(
          "tr",
          { "data-check": c.check, "data-status": c.status },
          el("td", {}, c.check),
          el("td", {}, badge(c.status)),
          el("td", {}, c.subject),
          el("td", {}, c.detail),
          el("td", {}, c.fix || "–"),
        ),
      ),
    );
    table.hidden = false;
    table.dataset.domain = view.domain;
    table.dataset.state = view.errors ? "errors" : view.warnings ? "warnings" : "ok";
  }

  // --- start ----------------------------------------------------------------------------

  function start() {
    const input = $("#token");
    input.value = token();
    $("#token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
      seedFromStats();
      clearTimeout(timer);
      poll();
    });
    $("#search").addEventListener("submit", (e) => {
      e.preventDefault();
      search();
    });
    $("#detail-close").addEventListener("click", () => ($("#detail").hidden = true));
    $("#domain-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const domain = $("#domain-form input[name=domain]").value.trim();
      if (domain) checkDomain(domain);
    });
    loadDomains();
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => renderCharts(providerRows()), 150);
    });
    seedFromStats().then(poll);
    search();
  }

  // For the end-to-end test and the curious: the page's pure parts.
  window.knockDashboard = { normalizeReply, pacingState, parseMetrics, quantile };

  start();
})();
