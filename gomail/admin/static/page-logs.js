// The auth log and the operations log (role auditor): filters kept in the
// address (so a filtered view can be bookmarked), pages, and a CSV export
// link (a plain GET: the session cookie goes with it).

import {get, withQuery} from "./api.js";
import {epochToLocal, field, fmtNum, fmtTime, h, localToEpoch, select} from "./dom.js";
import {dataTable, heading, onSubmit, pager, toast} from "./ui.js";

function resultBadge(result) {
  const kind = {success: "ok", failure: "bad", tempfail: "warn", refused: "bad"}[result] || "muted";
  return h("span", {class: `badge ${kind}`}, result);
}

function change(value) {
  if (value === null || value === undefined) return "—";
  const text = JSON.stringify(value, null, 2);
  if (text.length < 60) return h("code", {}, JSON.stringify(value));
  return h("details", {}, h("summary", {}, "show"), h("pre", {}, text));
}

const AUTH = {
  title: "Auth log", path: "/api/logs/auth", id: "auth",
  filters: [
    {name: "user", label: "User", input: () => h("input", {type: "search", autocapitalize: "none", spellcheck: "false"})},
    {name: "ip", label: "Client IP", input: () => h("input", {type: "search", spellcheck: "false"})},
    {name: "protocol", label: "Protocol", input: () => select([["", "any"], ["smtp", "smtp"], ["imap", "imap"], ["pop3", "pop3"]])},
    {name: "result", label: "Result", input: () => select([["", "any"], ["success", "success"], ["failure", "failure"],
      ["tempfail", "tempfail"], ["refused", "refused"]])},
  ],
  columns: [
    {label: "Time", cell: (e) => fmtTime(e.time)},
    {label: "User", cell: (e) => e.user},
    {label: "Protocol", cell: (e) => e.protocol},
    {label: "Client IP", cell: (e) => e.client_ip},
    {label: "Result", cell: (e) => resultBadge(e.result)},
    {label: "Reason", cell: (e) => e.reason},
    {label: "Latency", cell: (e) => (e.latency_ms === null || e.latency_ms === undefined ? "—" : `${fmtNum(e.latency_ms)} ms`), class: "num"},
    {label: "Backend", cell: (e) => e.backend || "—"},
  ],
};

const OPERATIONS = {
  title: "Operations log", path: "/api/logs/operations", id: "operations",
  filters: [
    {name: "actor", label: "Admin", input: () => h("input", {type: "search", autocapitalize: "none", spellcheck: "false"})},
    {name: "action", label: "Action", input: () => h("input", {type: "search", spellcheck: "false", placeholder: "user.create"})},
    {name: "target", label: "Target", input: () => h("input", {type: "search", spellcheck: "false"})},
  ],
  columns: [
    {label: "Time", cell: (e) => fmtTime(e.time)},
    {label: "Admin", cell: (e) => e.actor},
    {label: "Action", cell: (e) => e.action},
    {label: "Target", cell: (e) => e.target},
    {label: "Before", cell: (e) => change(e.before)},
    {label: "After", cell: (e) => change(e.after)},
    {label: "Client IP", cell: (e) => e.client_ip},
  ],
};

export const authLogPage = (ctx) => logPage(ctx, AUTH);
export const operationsLogPage = (ctx) => logPage(ctx, OPERATIONS);

async function logPage(ctx, spec) {
  const q = ctx.query;
  const state = {page: Number(q.get("page")) || 1, per_page: Number(q.get("per_page")) || 50};
  const controls = {};
  for (const f of spec.filters) {
    const control = f.input();
    control.name = f.name;
    control.id = `${spec.id}-${f.name}`;
    control.value = q.get(f.name) || "";
    controls[f.name] = control;
    state[f.name] = control.value;
  }
  const since = h("input", {type: "datetime-local", name: "since", id: `${spec.id}-since`, value: epochToLocal(q.get("since"))});
  const until = h("input", {type: "datetime-local", name: "until", id: `${spec.id}-until`, value: epochToLocal(q.get("until"))});
  state.since = q.get("since") || "";
  state.until = q.get("until") || "";
  const perPage = select([["25", "25"], ["50", "50"], ["100", "100"], ["500", "500"]], {name: "per_page", id: `${spec.id}-per-page`});
  perPage.querySelector('option[value="50"]').defaultSelected = true;
  perPage.value = String(state.per_page);
  const csv = h("a", {class: "button", download: `${spec.id}-log.csv`, id: `${spec.id}-csv`}, "Export CSV");
  const form = h("form", {class: "filters card", role: "search", "aria-label": `Filter the ${spec.title.toLowerCase()}`},
    spec.filters.map((f) => field(f.label, controls[f.name])), field("Since", since), field("Until", until),
    field("Per page", perPage),
    h("div", {class: "field actions"}, h("button", {type: "submit", class: "primary"}, "Search"),
      h("button", {type: "reset"}, "Clear")));
  const results = h("div", {class: "results", id: `${spec.id}-results`, "aria-live": "polite"});
  ctx.main.append(heading(spec.title, csv), form, results);

  function query() {
    const out = {};
    for (const f of spec.filters) out[f.name] = state[f.name];
    return {...out, since: state.since, until: state.until};
  }

  async function load() {
    ctx.setQuery({...query(), page: state.page > 1 ? state.page : "", per_page: state.per_page === 50 ? "" : state.per_page});
    csv.href = withQuery(spec.path, {...query(), format: "csv"});
    const data = await get(spec.path, {...query(), page: state.page, per_page: state.per_page});
    if (!ctx.alive()) return;
    results.replaceChildren(
      dataTable(spec.columns, data.items, "No entries match.", spec.title),
      pager(data.total, data.page, data.per_page, (page) => {
        state.page = page;
        load().catch((e) => toast(e.message, "error"));
      }));
    results.dataset.total = String(data.total);
  }

  onSubmit(form, async () => {
    for (const f of spec.filters) state[f.name] = controls[f.name].value.trim();
    state.since = localToEpoch(since.value) ?? "";
    state.until = localToEpoch(until.value) ?? "";
    state.per_page = Number(perPage.value);
    state.page = 1;
    await load();
  });
  form.addEventListener("reset", () => setTimeout(() => form.requestSubmit()));
  for (const control of Object.values(controls).filter((c) => c.tagName === "SELECT")) {
    control.addEventListener("change", () => form.requestSubmit());
  }
  perPage.addEventListener("change", () => form.requestSubmit());
  await load();
}
