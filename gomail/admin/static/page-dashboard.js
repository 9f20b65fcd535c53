// The dashboard: GET /api/dashboard's time series as charts, its totals, the
// active users and the top failing users and IPs; the last hour or day,
// refreshed every 10 seconds while the page is shown.

import {can, get} from "./api.js";
import {lineChart, watchCharts} from "./charts.js";
import {fmtClock, fmtNum, h} from "./dom.js";
import {dataTable, heading, showError} from "./ui.js";

const REFRESH_MS = 10000;
const percent = (v) => (v === null || v === undefined ? "—" : `${fmtNum(Number(v) * 100, 3)}%`);
const ms = (v) => (v === null || v === undefined ? "—" : `${fmtNum(v)} ms`);

const CHARTS = [
  {key: "logins", title: "Logins per second", series: [{key: "logins_per_s", label: "logins/s"}]},
  {key: "success", title: "Login success ratio", series: [{key: "success_ratio", label: "success"}], max: 1,
    format: percent},
  {key: "latency", title: "Login latency", format: ms,
    series: [{key: "latency_p50_ms", label: "p50"}, {key: "latency_p99_ms", label: "p99"}]},
  {key: "messages", title: "Messages", series: [
    {key: "messages_received", label: "received"}, {key: "messages_delivered", label: "delivered"},
    {key: "messages_deferred", label: "deferred"}, {key: "messages_failed", label: "failed"}]},
  {key: "queue", title: "Queue depth", series: [{key: "queue_depth", label: "queued"}]},
];

const label = (key) => key.replace(/_/g, " ").replace(/\bms\b/, "(ms)").replace(/\bper s\b/, "per second");

export async function dashboardPage(ctx) {
  let range = ctx.query.get("range") === "day" ? "day" : "hour";
  const buttons = ["hour", "day"].map((r) => h("button", {
    type: "button", class: "toggle", "aria-pressed": String(r === range), dataset: {range: r},
    onclick: () => {
      range = r;
      ctx.setQuery({range: r === "hour" ? "" : r});
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === range)));
      load();
    },
  }, r === "hour" ? "Last hour" : "Last day"));
  const live = h("input", {type: "checkbox", id: "dash-live", checked: true});
  const updated = h("span", {class: "muted", id: "dash-updated"});
  const error = h("p", {class: "error", role: "alert", hidden: true});
  const totals = h("div", {class: "totals"});
  const tables = h("div", {class: "grid two"});
  const charts = CHARTS.map((spec) => lineChart(spec, null));

  ctx.main.append(
    heading("Dashboard", h("div", {class: "toolbar"},
      h("div", {class: "segmented", role: "group", "aria-label": "Range"}, buttons),
      h("div", {class: "field check inline"}, live, h("label", {for: "dash-live"}, "Live (every 10 s)")),
      updated)),
    error, totals, h("div", {class: "grid charts"}, charts), tables);
  watchCharts(charts, ctx.onCleanup);

  let busy = false;
  async function load() {
    if (busy) return;
    busy = true;
    try {
      const data = await get("/api/dashboard", {range});
      if (!ctx.alive()) return;
      error.hidden = true;
      for (const chart of charts) chart.update(data);
      showTotals(data);
      showTables(data);
      updated.textContent = `Updated ${fmtClock(data.now || Date.now() / 1000, true)}`;
      ctx.main.dataset.loaded = String(Date.now());
    } catch (e) {
      if (ctx.alive()) showError(error, e);
    } finally {
      busy = false;
    }
  }

  function showTotals(data) {
    const cards = [];
    const active = data.active_users;
    cards.push(total("active users", Array.isArray(active) ? active.length : active));
    for (const [key, value] of Object.entries(data.totals || {})) {
      if (value !== null && typeof value === "object") continue;
      cards.push(total(label(key), value, key));
    }
    totals.replaceChildren(...cards);
  }

  function total(name, value, key) {
    const shown = key && /ratio/.test(key) ? percent(value) : fmtNum(value);
    return h("div", {class: "total card"}, h("span", {class: "total-value"}, shown), h("span", {class: "total-label"}, name));
  }

  function showTables(data) {
    const users = data.top_failing_users || [];
    const ips = data.top_failing_ips || [];
    const blocks = [
      h("section", {class: "card"}, h("h2", {}, "Top failing users"), dataTable([
        {label: "User", cell: (r) => h("a", {href: `#/logs/auth?user=${encodeURIComponent(r.user)}&result=failure`}, r.user)},
        {label: "Failures", cell: (r) => fmtNum(r.count), class: "num"},
      ], users, "No failed logins in this range.")),
      h("section", {class: "card"}, h("h2", {}, "Top failing IPs"), dataTable([
        {label: "IP", cell: (r) => h("a", {href: `#/logs/auth?ip=${encodeURIComponent(r.ip)}&result=failure`}, r.ip)},
        {label: "Failures", cell: (r) => fmtNum(r.count), class: "num"},
        ...(can("admin") ? [{label: "", class: "num", cell: (r) => h("a", {
          href: `#/blacklist?network=${encodeURIComponent(r.ip)}`, "aria-label": `Blacklist ${r.ip}`}, "Blacklist…")}] : []),
      ], ips, "No failed logins in this range.")),
    ];
    if (Array.isArray(data.active_users)) {
      blocks.push(h("section", {class: "card"}, h("h2", {}, "Active users"),
        data.active_users.length
          ? h("ul", {class: "chips"}, data.active_users.map((u) => h("li", {}, typeof u === "string" ? u : (u.user || u.name || JSON.stringify(u)))))
          : h("p", {class: "empty"}, "No active users in this range.")));
    }
    tables.replaceChildren(...blocks);
  }

  await load();
  const timer = setInterval(() => {
    if (live.checked && !document.hidden) load();
  }, REFRESH_MS);
  ctx.onCleanup(() => clearInterval(timer));
}
