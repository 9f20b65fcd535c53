// The blacklist and the configuration (role admin), the queue (role auditor to
// look, admin to act).

import {can, del, get, post, put, seg, withQuery} from "./api.js";
import {checkbox, field, fmtBytes, fmtTime, h, select} from "./dom.js";
import {actionButton, confirmAction, dataTable, errorLine, heading, onSubmit, pager, section, toast} from "./ui.js";

// -- blacklist -------------------------------------------------------------------------

const EXPIRIES = [["", "never"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"], ["2592000", "30 days"]];

export async function blacklistPage(ctx) {
  const list = h("div", {id: "blacklist-list"});
  const network = h("input", {name: "network", required: true, spellcheck: "false", placeholder: "192.0.2.7 or 198.51.100.0/24",
    value: ctx.query.get("network") || ""});
  const reason = h("input", {name: "reason", maxlength: 200});
  const expires = select(EXPIRIES, {name: "expires_in"});
  const form = h("form", {class: "form inline-form"}, field("IP or network", network), field("Reason", reason),
    field("Expires", expires), errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Add to the blacklist")));
  onSubmit(form, async () => {
    const body = {network: network.value.trim()};
    if (reason.value.trim()) body.reason = reason.value.trim();
    if (expires.value) body.expires_in = Number(expires.value);
    const entry = await post("/api/blacklist", body);
    form.reset();
    toast(`${entry.network} blacklisted.`);
    await load();
  });
  ctx.main.append(heading("Blacklist"),
    h("p", {class: "lead"}, "Clients from these addresses cannot log in (SMTP AUTH, IMAP and POP3 through nginx)."),
    section("Add", form), h("section", {class: "card"}, list));

  async function load() {
    const data = await get("/api/blacklist");
    if (!ctx.alive()) return;
    list.replaceChildren(dataTable([
      {label: "Network", cell: (e) => e.network},
      {label: "Reason", cell: (e) => e.reason || "—"},
      {label: "Expires", cell: (e) => (e.expires_at ? fmtTime(e.expires_at) : "never")},
      {label: "Added", cell: (e) => fmtTime(e.created)},
      {label: "", cell: (e) => actionButton("Remove", async () => {
        if (!(await confirmAction(`Remove ${e.network} from the blacklist?`, "Remove"))) return;
        await del(withQuery("/api/blacklist", {network: e.network}));
        toast(`${e.network} removed.`);
        await load();
      }, {class: "small danger", "aria-label": `Remove ${e.network}`})},
    ], data.items, "The blacklist is empty.", "Blacklist"));
  }
  await load();
}

// -- queue -----------------------------------------------------------------------------

export async function queuePage(ctx) {
  const q = ctx.query;
  const state = {state: q.get("state") || "all", page: Number(q.get("page")) || 1, per_page: 50};
  const which = select([["all", "all"], ["queued", "queued"], ["failed", "failed"]], {name: "state", id: "queue-state"});
  which.value = state.state;
  const counts = h("p", {class: "lead", id: "queue-counts"});
  const results = h("div", {class: "results", "aria-live": "polite"});
  const tools = h("div", {class: "toolbar"}, h("div", {class: "field inline"}, h("label", {for: "queue-state"}, "Show"), which));
  if (can("admin")) {
    tools.append(
      actionButton("Retry failed", async () => {
        const r = await post("/api/queue/retry-failed");
        toast(`${r.requeued} message(s) requeued.`);
        await load();
      }),
      actionButton("Flush (deliver now)", async () => {
        const r = await post("/api/queue/flush");
        toast(`${r.flushed} message(s) sent for delivery.`);
        await load();
      }),
      actionButton("Refresh", () => load()));
  } else {
    tools.append(actionButton("Refresh", () => load()));
  }
  ctx.main.append(heading("Queue", tools), counts, results);
  which.addEventListener("change", () => {
    state.state = which.value;
    state.page = 1;
    load().catch((e) => toast(e.message, "error"));
  });

  const columns = [
    {label: "Message", cell: (m) => h("div", {class: "stack"}, h("code", {}, m.id),
      h("span", {class: "hint"}, `queued ${fmtTime(m.queued_at)}`))},
    {label: "State", cell: (m) => h("span", {class: `badge ${m.state === "failed" ? "bad" : "warn"}`}, m.state)},
    {label: "Sender", cell: (m) => m.sender || "<>", class: "break"},
    {label: "Recipients", cell: (m) => (m.recipients || []).join(", "), class: "break"},
    {label: "Size", cell: (m) => fmtBytes(m.size), class: "num"},
    {label: "Attempts", cell: (m) => String(m.attempts), class: "num"},
    {label: "Next attempt", cell: (m) => fmtTime(m.next_attempt)},
    {label: "Last error", cell: (m) => m.last_error || "—", class: "wrap"},
  ];
  if (can("admin")) {
    columns.push({label: "", cell: (m) => h("div", {class: "row-actions"},
      actionButton("Retry", async () => {
        const r = await post(`/api/queue/${seg(m.id)}/retry`);
        toast(`${r.requeued} requeued.`);
        await load();
      }, {class: "small", "aria-label": `Retry ${m.id}`}),
      actionButton("Delete", async () => {
        if (!(await confirmAction(`Delete the message ${m.id} from the queue? It will not be delivered.`))) return;
        await del(`/api/queue/${seg(m.id)}`);
        toast("Deleted.");
        await load();
      }, {class: "small danger", "aria-label": `Delete ${m.id}`}))});
  }

  async function load() {
    ctx.setQuery({state: state.state === "all" ? "" : state.state, page: state.page > 1 ? state.page : ""});
    const data = await get("/api/queue", {state: state.state, page: state.page, per_page: state.per_page});
    if (!ctx.alive()) return;
    counts.textContent = `${data.queued ?? "?"} queued, ${data.failed ?? "?"} failed.`;
    results.replaceChildren(dataTable(columns, data.items, "The queue is empty.", "Queue"),
      pager(data.total ?? data.items.length, state.page, state.per_page, (page) => {
        state.page = page;
        load().catch((e) => toast(e.message, "error"));
      }));
  }
  await load();
}

// -- configuration -----------------------------------------------------------------------

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** A description as a sentence: a capital and a full stop (then a space). */
function sentence(text) {
  if (!text) return "";
  const trimmed = text.trim();
  return `${trimmed[0].toUpperCase()}${trimmed.slice(1)}${/[.!?]$/.test(trimmed) ? "" : "."} `;
}

function show(value) {
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/** An input for a live key, from its JSON Schema; get() reads it back (undefined: not valid). */
function control(key, schema, value) {
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  const id = `config-${key}`;
  if (type === "boolean") {
    const box = checkbox("on", {id, checked: Boolean(value)});
    return {el: box.el, input: box.box, get: () => box.box.checked, set: (v) => (box.box.checked = Boolean(v))};
  }
  if (Array.isArray(schema.enum)) {
    const sel = select(schema.enum.map((v) => [String(v), String(v)]), {id});
    sel.value = String(value);
    const pick = () => schema.enum.find((v) => String(v) === sel.value);
    return {el: sel, input: sel, get: pick, set: (v) => (sel.value = String(v))};
  }
  if (type === "integer" || type === "number") {
    const input = h("input", {id, type: "number", step: type === "integer" ? 1 : "any", min: schema.minimum,
      max: schema.maximum, value: value ?? "", required: true});
    return {el: input, input, get: () => (input.value === "" ? undefined : Number(input.value)), set: (v) => (input.value = v ?? "")};
  }
  if (type === "string") {
    const input = h("input", {id, value: value ?? "", spellcheck: "false", maxlength: schema.maxLength});
    return {el: input, input, get: () => input.value, set: (v) => (input.value = v ?? "")};
  }
  const area = h("textarea", {id, rows: 3, spellcheck: "false", value: JSON.stringify(value, null, 1)});
  return {el: area, input: area, get: () => JSON.parse(area.value), set: (v) => (area.value = JSON.stringify(v, null, 1))};
}

export async function configPage(ctx) {
  const liveBox = h("div", {id: "config-live"});
  const settingsBox = h("div");
  const filter = h("input", {type: "search", id: "settings-filter", placeholder: "filter", spellcheck: "false"});
  ctx.main.append(heading("Configuration"),
    section("Live settings", h("p", {class: "hint"}, "These take effect at once, without a restart, and are kept in the database."),
      liveBox),
    section("Server settings (read only)",
      h("p", {class: "hint"}, "From the configuration file; change them there and reload or restart. Secrets are redacted."),
      field("Filter", filter), settingsBox));

  let data = await get("/api/config");
  if (!ctx.alive()) return;

  function showLive() {
    const controls = {};
    const rows = Object.entries(data.live || {}).sort(([a], [b]) => a.localeCompare(b)).map(([key, item]) => {
      const c = control(key, item.schema || {}, item.value);
      controls[key] = {...c, original: JSON.stringify(item.value)};
      const reset = h("button", {type: "button", class: "small link-button", onclick: () => c.set(item.default)},
        "Default");
      reset.setAttribute("aria-label", `Reset ${key} to its default`);
      return h("div", {class: "config-row"},
        h("label", {for: c.input.id, class: "config-key"}, h("code", {}, key), item.stored ? h("span", {class: "badge warn"}, "set") : null),
        h("div", {class: "config-control"}, c.el, reset),
        h("p", {class: "hint"}, sentence(item.description), `Default: ${show(item.default)}.`));
    });
    const save = h("button", {type: "submit", class: "primary"}, "Save changes");
    const form = h("form", {class: "form config-form"}, rows, errorLine(),
      can("admin") ? h("div", {class: "actions"}, save) : null);
    onSubmit(form, async () => {
      const changes = {};
      for (const [key, c] of Object.entries(controls)) {
        let value;
        try {
          value = c.get();
        } catch (e) {
          throw new Error(`${key}: not valid JSON`);
        }
        if (value === undefined) throw new Error(`${key}: give a value`);
        if (JSON.stringify(value) !== c.original) changes[key] = value;
      }
      if (!Object.keys(changes).length) {
        toast("Nothing changed.");
        return;
      }
      data = await put("/api/config", changes);
      toast(`Saved: ${Object.keys(changes).join(", ")}.`);
      showLive();
      showSettings();
    });
    liveBox.replaceChildren(rows.length ? form : h("p", {class: "empty"}, "No live settings."));
  }

  const opened = new Set();
  function showSettings() {
    const needle = filter.value.trim().toLowerCase();
    const groups = new Map();
    for (const [key, value] of Object.entries(data.settings || {})) {
      if (needle && !key.toLowerCase().includes(needle) && !show(value).toLowerCase().includes(needle)) continue;
      const group = key.includes(".") ? key.slice(0, key.indexOf(".")) : "general";
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push({key, value});
    }
    const names = [...groups.keys()].sort((a, b) => (a === "general" ? -1 : b === "general" ? 1 : a.localeCompare(b)));
    settingsBox.replaceChildren(...(names.length ? names.map((name) => {
      const details = h("details", {class: "settings-group", open: Boolean(needle) || opened.has(name)},
        h("summary", {}, h("strong", {}, `[${name}]`), h("span", {class: "muted"}, ` ${plural(groups.get(name).length, "setting")}`)),
        dataTable([
          {label: "Setting", cell: (r) => h("code", {}, r.key)},
          {label: "Value", cell: (r) => h("code", {class: "wrap"}, show(r.value))},
        ], groups.get(name), "", `[${name}] settings`));
      details.addEventListener("toggle", () => {
        if (!needle) details.open ? opened.add(name) : opened.delete(name);
      });
      return details;
    }) : [h("p", {class: "empty"}, "No setting matches.")]));
  }
  filter.addEventListener("input", showSettings);
  showLive();
  showSettings();
}
