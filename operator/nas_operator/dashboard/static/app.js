// The dashboard page: plain JavaScript over the JSON API (no build step), plots by the plotly.js the server ships.
// Two views chosen by the URL's hash: "#/" the experiments, "#/e/<key>" one experiment. Each view polls the API; an
// unchanged experiment answers {"unchanged": true}, so a running search is followed at the cost of a few bytes.
"use strict";

const PLOT_CONFIG = { displaylogo: false, responsive: true };
const view = { key: null, data: null, timer: null, sort: { column: "index", descending: false }, selected: null };
window.dashboard = { ready: false, renders: 0, firstRenderMs: null, firstDataMs: null, parcoordsMs: null, timings: {} };

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function num(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "";
  return typeof value === "number" ? Number(value.toPrecision(digits)).toString() : String(value);
}
function age(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}
async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
  return response.json();
}
function api(key, path = "") {
  return `/api/experiments/${encodeURIComponent(key)}${path}`;
}
function setLive(text) {
  document.getElementById("live").textContent = text;
}
function markRendered() {
  window.dashboard.renders += 1;
  if (window.dashboard.firstRenderMs === null) window.dashboard.firstRenderMs = performance.now();
  window.dashboard.ready = true;
}

// ------------------------------------------------------------------ the experiments
async function showList() {
  document.getElementById("crumb").textContent = "experiments";
  const main = document.getElementById("main");
  let listing;
  try {
    listing = await getJSON("/api/experiments");
  } catch (error) {
    main.innerHTML = `<p class="error">${esc(error.message)}</p>`;
    return schedule(showList, 5);
  }
  const rows = listing.experiments.map((e) => `
    <tr data-key="${esc(e.key)}">
      <td><a href="#/e/${encodeURIComponent(e.key)}">${esc(e.name)}</a></td><td class="muted">${esc(e.where)}</td>
      <td class="phase phase-${esc(e.phase)}">${esc(e.phase)}</td><td>${esc(e.reason)}</td>
      <td>${esc(e.launched)}${e.budget ? ` / ${esc(e.budget)}` : ""}</td><td>${esc(e.succeeded)}</td>
      <td>${esc(e.failed)}</td><td>${esc(e.running)}</td><td>${num(e.hypervolume)}</td><td>${esc(e.frontSize)}</td>
      <td>${age(e.ageSeconds)}</td><td class="error">${esc(e.problem)}</td>
    </tr>`).join("");
  main.innerHTML = `
    <section><h2>Experiments</h2>
    ${listing.errors.map((e) => `<p class="error">${esc(e)}</p>`).join("")}
    <table id="experiments"><thead><tr><th>Name</th><th>Where</th><th>Phase</th><th>Reason</th><th>Trials</th>
      <th>Succeeded</th><th>Failed</th><th>Running</th><th>Hypervolume</th><th>Front</th><th>Age</th><th></th></tr></thead>
    <tbody>${rows || '<tr><td colspan="12" class="muted">No experiments found.</td></tr>'}</tbody></table></section>`;
  for (const row of main.querySelectorAll("tr[data-key]")) {
    row.addEventListener("click", () => { location.hash = `#/e/${encodeURIComponent(row.dataset.key)}`; });
  }
  setLive(`updated ${new Date().toLocaleTimeString()}`);
  markRendered();
  schedule(showList, listing.refreshSeconds);
}

function schedule(fn, seconds) {
  clearTimeout(view.timer);
  const route = location.hash;
  view.timer = setTimeout(() => { if (location.hash === route) fn(); }, seconds * 1000);
}

// ------------------------------------------------------------------ one experiment
async function showExperiment(key, refresh = false) {
  const main = document.getElementById("main");
  let data;
  try {
    data = await getJSON(api(key, refresh && view.data ? `?version=${encodeURIComponent(view.data.version)}` : ""));
  } catch (error) {
    main.innerHTML = `<p class="error">${esc(error.message)}</p>`;
    return schedule(() => showExperiment(key), 5);
  }
  if (window.dashboard.firstDataMs === null) window.dashboard.firstDataMs = performance.now();
  if (!data.unchanged) {
    const first = !refresh || view.key !== key;
    view.key = key;
    view.data = data;
    if (first) renderSkeleton(data);
    renderExperiment(data);
  }
  setLive(`updated ${new Date().toLocaleTimeString()}`);
  markRendered();
  const running = !["Succeeded", "Failed", "Stopped"].includes(view.data.summary.phase);
  schedule(() => showExperiment(key, true), running ? 3 : 15);
}

function renderSkeleton(data) {
  const s = data.summary;
  document.getElementById("crumb").innerHTML = `<a href="#/">experiments</a> / ${esc(s.name)}`;
  document.getElementById("main").innerHTML = `
    <section id="overview"></section>
    <section><h2>Pareto front</h2><div id="pairs" class="grid"></div><div id="parcoords"></div></section>
    <section><h2>Hypervolume over trials</h2><div id="hypervolume" class="plot"></div></section>
    <section id="trial-detail" hidden></section>
    <section><h2>Trials</h2>
      <div class="filters"><input id="trial-filter" type="search" placeholder="filter: name, generator, reason, value">
        <select id="status-filter"><option value="">every status</option>
          ${["succeeded", "failed", "running", "launching", "queued", "stopped", "earlyStopped"].map((x) => `<option value="${x}">${x}</option>`).join("")}
        </select><span id="trial-count" class="muted"></span></div>
      <div class="table-wrap"><table id="trials"><thead></thead><tbody></tbody></table></div></section>
    <section><h2>Model diagnostics (Ax)</h2>
      <p class="muted">Cross-validation of each metric's model and parameter sensitivity, computed by Ax on request.</p>
      <button id="diagnostics-button">Compute model diagnostics</button><div id="diagnostics" class="cards"></div></section>`;
  document.getElementById("trial-filter").addEventListener("input", () => renderTable(view.data));
  document.getElementById("status-filter").addEventListener("change", () => renderTable(view.data));
  document.getElementById("diagnostics-button").addEventListener("click", () => loadDiagnostics(view.key));
}

function renderExperiment(data) {
  const s = data.summary;
  document.getElementById("overview").innerHTML = `
    <h2>${esc(s.name)} <span class="phase phase-${esc(s.phase)}">${esc(s.phase)}</span> <span class="muted">${esc(s.reason)}</span></h2>
    <div class="kv">
      <span>where</span><span>${esc(s.where)}</span>
      <span>trials</span><span id="progress">${esc(s.launched)} launched of ${esc(s.budget)}: ${esc(s.succeeded)} succeeded,
        ${esc(s.failed)} failed, ${s.earlyStopped ? `${esc(s.earlyStopped)} stopped early, ` : ""}${esc(s.running)} running</span>
      <span>hypervolume</span><span id="hv-value">${num(s.hypervolume, 6)}</span>
      <span>Pareto front</span><span id="front-size">${esc(s.frontSize)} trials</span>
      ${data.message ? `<span>message</span><span>${esc(data.message)}</span>` : ""}
      ${s.problem ? `<span>note</span><span class="error">${esc(s.problem)}</span>` : ""}
    </div>
    <p class="downloads"><a id="download-csv" href="${api(view.key, "/trials.csv")}">trials.csv</a>
      <a id="download-front" href="${api(view.key, "/pareto.json")}">pareto.json (front)</a></p>`;
  const timed = (name, fn) => { const t = performance.now(); fn(); window.dashboard.timings[name] = performance.now() - t; };
  timed("pairs", () => renderPairs(data));
  timed("hypervolume", () => renderHypervolume(data));
  timed("table", () => renderTable(data));
  if (view.selected !== null) showTrial(view.selected, false);
}

function objectiveLabel(o) {
  return `${o.metric} (${o.goal})`;
}

function renderPairs(data) {
  const pairs = [];
  data.objectives.forEach((a, i) => data.objectives.slice(i + 1).forEach((b) => pairs.push([a, b])));
  const done = data.trials.filter((t) => t.status === "succeeded");
  const groups = [
    ["outside thresholds", done.filter((t) => !t.feasible), { color: "#b8c0c8", size: 7 }],
    ["within thresholds", done.filter((t) => t.feasible && !t.front), { color: "#3b82c4", size: 8 }],
    ["Pareto front", done.filter((t) => t.front), { color: "#d7263d", size: 11, line: { color: "#7a0010", width: 1 } }],
  ];
  const container = document.getElementById("pairs");
  if (container.children.length !== pairs.length) {
    container.innerHTML = pairs.map((_, k) => `<div id="pair-${k}" class="plot pair"></div>`).join("");
  }
  pairs.forEach(([a, b], k) => {
    const traces = groups.map(([name, trials, marker]) => ({
      type: "scatter", mode: "markers", name, marker,
      x: trials.map((t) => t.metrics[a.metric]), y: trials.map((t) => t.metrics[b.metric]),
      customdata: trials.map((t) => t.index),
      text: trials.map((t) => t.name),
      hovertemplate: "%{text}<br>" + `${a.metric}: %{x}<br>${b.metric}: %{y}<extra></extra>`,
    }));
    const layout = {
      margin: { t: 20, r: 10, b: 50, l: 60 }, xaxis: { title: { text: objectiveLabel(a) } },
      yaxis: { title: { text: objectiveLabel(b) } }, legend: { orientation: "h", y: -0.2 }, uirevision: "keep",
    };
    const element = document.getElementById(`pair-${k}`);
    Plotly.react(element, traces, layout, PLOT_CONFIG).then(() => {
      if (!element.dataset.bound) {
        element.dataset.bound = "1";
        element.on("plotly_click", (event) => showTrial(event.points[0].customdata, true));
      }
    });
  });
  const parcoords = document.getElementById("parcoords");
  if (data.objectives.length < 3 || done.length === 0) {
    parcoords.hidden = true;
    return;
  }
  parcoords.hidden = false;
  parcoords.className = "plot";
  const dimensions = data.objectives.map((o) => ({ label: objectiveLabel(o), values: done.map((t) => t.metrics[o.metric]) }));
  // Drawn after the rest of the page: parallel coordinates are WebGL, the slowest plot where GL is emulated.
  setTimeout(() => {
    Plotly.react(parcoords, [{
      type: "parcoords", dimensions,
      line: { color: done.map((t) => (t.front ? 1 : 0)), colorscale: [[0, "#b8c0c8"], [1, "#d7263d"]] },
    }], { margin: { t: 40, r: 40, b: 20, l: 60 } }, PLOT_CONFIG);
    if (window.dashboard.parcoordsMs === null) window.dashboard.parcoordsMs = performance.now();
  }, 0);
}

function renderHypervolume(data) {
  const trace = data.hypervolumeTrace;
  Plotly.react("hypervolume", [{
    type: "scatter", mode: "lines+markers", line: { shape: "hv" }, marker: { size: 4 },
    x: trace.map((p) => p.index), y: trace.map((p) => p.hypervolume), name: "hypervolume",
  }], {
    margin: { t: 20, r: 10, b: 45, l: 60 }, xaxis: { title: { text: "trial index" } },
    yaxis: { title: { text: "hypervolume" } }, uirevision: "keep",
  }, PLOT_CONFIG);
}

// ------------------------------------------------------------------ the trial table
function columns(data) {
  const objectives = data.objectives.map((o) => o.metric);
  const others = data.metrics.filter((m) => !objectives.includes(m));
  return [
    ["index", "#", (t) => t.index], ["name", "trial", (t) => t.name], ["status", "status", (t) => t.status],
    ["front", "front", (t) => (t.front ? "★" : "")], ["generator", "generator", (t) => t.generator],
    ["duration", "duration (s)", (t) => t.duration],
    ...[...objectives, ...others].map((m) => [`m:${m}`, m, (t) => t.metrics[m]]),
    ...data.parameters.map((p) => [`p:${p}`, p, (t) => t.parameters[p]]),
    ["reason", "reason", (t) => t.reason],
  ];
}

function renderTable(data) {
  const cols = columns(data);
  const table = document.getElementById("trials");
  table.tHead.innerHTML = `<tr>${cols.map(([id, label]) => {
    const sorted = view.sort.column === id ? (view.sort.descending ? "sorted-desc" : "sorted-asc") : "";
    return `<th data-sort="${esc(id)}" class="${sorted}">${esc(label)}</th>`;
  }).join("")}</tr>`;
  for (const th of table.tHead.querySelectorAll("th")) {
    th.addEventListener("click", () => {
      const column = th.dataset.sort;
      view.sort = { column, descending: view.sort.column === column ? !view.sort.descending : false };
      renderTable(view.data);
    });
  }
  const needle = document.getElementById("trial-filter").value.trim().toLowerCase();
  const status = document.getElementById("status-filter").value;
  const getter = (cols.find(([id]) => id === view.sort.column) || cols[0])[2];
  const rows = data.trials.filter((t) => (!status || t.status === status) && (!needle || cols.some(([, , get]) =>
    String(get(t) ?? "").toLowerCase().includes(needle))));
  rows.sort((a, b) => {
    const x = getter(a), y = getter(b);
    const order = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
    return view.sort.descending ? -order : order;
  });
  table.tBodies[0].innerHTML = rows.map((t) => `<tr data-index="${t.index}" class="${t.index === view.selected ? "selected" : ""}">${
    cols.map(([id, , get]) => {
      const value = get(t);
      const cls = id === "status" ? `status-${esc(value)}` : id === "reason" ? "reason" : "";
      return `<td class="${cls}" ${id === "reason" ? `title="${esc(value)}"` : ""}>${esc(typeof value === "number" ? num(value, 5) : value)}</td>`;
    }).join("")}</tr>`).join("");
  document.getElementById("trial-count").textContent = `${rows.length} of ${data.trials.length} trials`;
  table.tBodies[0].onclick = (event) => {
    const row = event.target.closest("tr[data-index]");
    if (row) showTrial(Number(row.dataset.index), true);
  };
}

// ------------------------------------------------------------------ one trial
async function showTrial(index, scroll) {
  const trial = view.data.trials.find((t) => t.index === index);
  const panel = document.getElementById("trial-detail");
  if (!trial) { panel.hidden = true; return; }
  view.selected = index;
  for (const row of document.querySelectorAll("#trials tr.selected")) row.classList.remove("selected");
  document.querySelector(`#trials tr[data-index="${index}"]`)?.classList.add("selected");
  panel.hidden = false;
  panel.dataset.index = String(index);
  const kv = (object) => Object.entries(object).map(([k, v]) => `<span>${esc(k)}</span><span>${esc(num(v, 6))}</span>`).join("");
  panel.innerHTML = `<h2 id="trial-title">${esc(trial.name)} <span class="status-${esc(trial.status)}">${esc(trial.status)}</span>
      ${trial.front ? "<span>★ on the Pareto front</span>" : ""}</h2>
    <div class="grid"><div><h3>parameters</h3><div class="kv">${kv(trial.parameters)}</div>
      <h3>metrics</h3><div class="kv">${kv(trial.metrics)}</div>
      <p>generator ${esc(trial.generator)}, attempt ${esc(trial.attempt)}, ${trial.duration === null ? "" : `${num(trial.duration)} s`}</p>
      ${trial.reason ? `<pre class="error">${esc(trial.reason)}</pre>` : ""}</div>
      <div id="curves" class="plot"><p class="muted">${view.data.curves ? "Reading learning curves…" : ""}</p></div></div>`;
  if (scroll) panel.scrollIntoView({ block: "nearest" });
  if (!view.data.curves) {
    document.getElementById("curves").innerHTML = '<p class="muted">Learning curves: the trials\' logs are on the cluster\'s volume.</p>';
    return;
  }
  let read;
  try {
    read = await getJSON(api(view.key, `/trials/${index}/curves`));
  } catch (error) {
    document.getElementById("curves").innerHTML = `<p class="error">${esc(error.message)}</p>`;
    return;
  }
  if (view.selected !== index) return;
  const element = document.getElementById("curves");
  const tags = Object.keys(read.curves || {});
  if (!read.readable || tags.length === 0) {
    element.innerHTML = `<p class="muted">${esc(read.reason || "No TensorBoard scalars in this trial's log directory.")}</p>`;
    return;
  }
  element.innerHTML = "";
  Plotly.react(element, tags.map((tag) => ({
    type: "scatter", mode: "lines+markers", name: tag, marker: { size: 4 },
    x: read.curves[tag].map((p) => p[0]), y: read.curves[tag].map((p) => p[1]),
  })), { title: { text: `learning curves: ${trial.name}` }, margin: { t: 40, r: 10, b: 40, l: 60 }, xaxis: { title: { text: "step" } } }, PLOT_CONFIG);
}

// ------------------------------------------------------------------ Ax's diagnostics
async function loadDiagnostics(key) {
  const container = document.getElementById("diagnostics");
  const button = document.getElementById("diagnostics-button");
  button.disabled = true;
  container.innerHTML = '<p class="muted">Fitting the model and computing Ax\'s analyses…</p>';
  let result;
  try {
    result = await getJSON(api(key, "/diagnostics"));
  } catch (error) {
    container.innerHTML = `<p class="error">${esc(error.message)}</p>`;
    button.disabled = false;
    return;
  }
  button.disabled = false;
  if (view.key !== key) return;
  if (!result.cards.length) {
    container.innerHTML = `<p class="muted">${esc(result.reason)}</p>`;
    return;
  }
  const text = (html) => { const d = document.createElement("div"); d.innerHTML = html; return d.textContent; };
  container.innerHTML = result.cards.map((card, k) => `<div class="card" data-kind="${esc(card.kind)}">
      <h3>${esc(card.title)}</h3>
      ${card.figure ? `<div id="diagnostic-${k}" class="plot"></div>` : `<p class="muted diagnostic-error">${esc(card.error)}</p>`}
      <details><summary class="muted">about</summary><p class="muted">${esc(text(card.subtitle))}</p></details></div>`).join("");
  result.cards.forEach((card, k) => {
    if (card.figure) Plotly.newPlot(`diagnostic-${k}`, card.figure.data, { ...card.figure.layout, height: 380 }, PLOT_CONFIG);
  });
}

// ------------------------------------------------------------------ routing
function route() {
  clearTimeout(view.timer);
  const match = location.hash.match(/^#\/e\/(.+)$/);
  if (match) {
    const key = decodeURIComponent(match[1]);
    if (view.key !== key) { view.data = null; view.selected = null; }
    showExperiment(key);
  } else {
    view.key = null;
    view.data = null;
    showList();
  }
}
window.addEventListener("hashchange", route);
route();
