// The savings dashboard: reads GET /admin/stats with the master key the user typed (kept in
// sessionStorage for this tab only) and draws it with Chart.js. Data is written with textContent
// only: key and provider names never become markup.
"use strict";

const STORAGE = "cscr-admin-key";
const COLORS = ["#2563eb", "#17803d", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777",
  "#65a30d", "#7c2d12", "#0f766e", "#a16207", "#1e3a8a", "#be185d", "#334155", "#84cc16"];
const charts = {};

function $(id) { return document.getElementById(id); }

function usd(v) {
  const digits = Math.abs(v) >= 100 ? 2 : Math.abs(v) >= 1 ? 4 : 6;
  return (v < 0 ? "-$" : "$") + Math.abs(v).toFixed(digits);
}

function setState(state) {
  document.body.dataset.state = state;
  if (state === "ready" || state === "error") window.dashboardReadyMs = performance.now();
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
}

async function fetchStats() {
  const key = sessionStorage.getItem(STORAGE);
  if (!key) throw new Error("Enter the gateway's master key to see the dashboard.");
  const to = Math.floor(Date.now() / 1000);
  const params = new URLSearchParams({ from: String(to - Number($("range").value)), to: String(to) });
  if ($("key-filter").value) params.set("key", $("key-filter").value);
  const resp = await fetch("/admin/stats?" + params, { headers: { Authorization: "Bearer " + key } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const msg = (body.error && body.error.message) || resp.statusText;
    throw new Error(`${resp.status}: ${msg}`);
  }
  return body;
}

function drawChart(id, config) {
  if (charts[id]) charts[id].destroy();
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options);
  charts[id] = new Chart($(id), config);
}

function timeLabel(t, span) {
  const d = new Date(t * 1000);
  return span > 86400 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " +
    d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function renderTotals(s) {
  const t = s.totals;
  $("total-requests").textContent = String(t.requests);
  $("total-spend").textContent = usd(t.spend_usd);
  $("total-reference").textContent = usd(t.reference_usd);
  $("reference-name").textContent = s.reference;
  $("total-saved").textContent = usd(t.saved_usd);
  $("total-saved-pct").textContent = t.saved_pct.toFixed(1) + "%";
  $("total-fallbacks").textContent = String(t.fallbacks);
  if (t.quality.n > 0) {
    $("quality").textContent = `${(100 * t.quality.chosen).toFixed(1)}% vs ${(100 * t.quality.reference).toFixed(1)}%`;
    $("quality-label").textContent = `predicted quality, chosen vs reference (${t.quality.n} routed, ` +
      `mean trade-off T = ${t.mean_tradeoff.toFixed(2)})`;
  } else {
    $("quality").textContent = t.mean_tradeoff === null ? "–" : "T = " + t.mean_tradeoff.toFixed(2);
    $("quality-label").textContent = `mean trade-off asked of the router (${t.routed} routed)`;
  }
}

function renderCharts(s) {
  const span = s.to - s.from;
  const labels = s.series.map((p) => timeLabel(p.t, span));
  drawChart("spend-chart", {
    type: "line",
    data: { labels, datasets: [
      { label: "spend", data: s.series.map((p) => p.spend_usd), borderColor: COLORS[0], pointRadius: 0 },
      { label: "reference", data: s.series.map((p) => p.reference_usd), borderColor: COLORS[4], pointRadius: 0 },
    ] },
    options: { scales: { y: { beginAtZero: true, ticks: { callback: (v) => usd(v) } } } },
  });
  const color = (m) => COLORS[Math.max(s.providers.indexOf(m), 0) % COLORS.length];  // one colour per provider
  const models = s.providers.filter((m) => s.totals.models[m]);
  drawChart("mix-chart", {
    type: "bar",
    data: { labels, datasets: [
      { type: "line", label: "fallbacks", data: s.series.map((p) => p.fallbacks), borderColor: "#111827",
        borderDash: [4, 3], pointRadius: 0, stack: "fallbacks" },
      ...models.map((m) => ({ label: m, data: s.series.map((p) => p.models[m] || 0), backgroundColor: color(m) })),
    ] },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
  const auto = Object.keys(s.totals.auto_models);
  drawChart("auto-chart", {
    type: "doughnut",
    data: { labels: auto, datasets: [{ data: auto.map((m) => s.totals.auto_models[m]),
      backgroundColor: auto.map(color) }] },
  });
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function renderTables(s) {
  const body = $("keys").tBodies[0];
  body.replaceChildren();
  for (const k of s.keys) {
    const row = document.createElement("tr");
    const mix = Object.entries(k.models).map(([m, n]) => `${m} ${n}`).join(", ");
    for (const v of [k.key, String(k.requests), usd(k.spend_usd), usd(k.reference_usd), usd(k.saved_usd),
      k.saved_pct.toFixed(1) + "%", String(k.fallbacks), String(k.routed), mix]) cell(row, v);
    body.appendChild(row);
  }
  const filter = $("key-filter");
  const chosen = filter.value;
  for (const k of s.keys) {
    if (![...filter.options].some((o) => o.value === k.key)) filter.add(new Option(k.key, k.key));
  }
  filter.value = chosen;
  const list = $("cooldowns");
  list.replaceChildren();
  const cooling = Object.entries(s.cooldowns);
  for (const [name, left] of cooling.length ? cooling : [[null, 0]]) {
    const li = document.createElement("li");
    li.textContent = name === null ? "none" : `${name}: ${left.toFixed(0)} s left`;
    list.appendChild(li);
  }
}

async function load() {
  setState("loading");
  try {
    const s = await fetchStats();
    showError("");
    renderTotals(s);
    renderCharts(s);
    renderTables(s);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    setState("ready");
  } catch (err) {
    showError(err.message);
    setState("error");
  }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("admin-key").value.trim();
  if (value) sessionStorage.setItem(STORAGE, value);
  $("admin-key").value = "";
  load();
});
$("forget").addEventListener("click", () => { sessionStorage.removeItem(STORAGE); load(); });
$("refresh").addEventListener("click", load);
$("range").addEventListener("change", load);
$("key-filter").addEventListener("change", load);
setInterval(() => { if (document.visibilityState === "visible" && sessionStorage.getItem(STORAGE)) load(); }, 30000);
load();
