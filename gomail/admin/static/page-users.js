// Users (role admin): the list (search, filters, sort, pages), creating one,
// and one user's page: settings, password, TOTP enrolment, app passwords,
// unlocking, deleting.

import {del, get, patch, post, put, seg} from "./api.js";
import {accountName, base64, checkbox, field, fmtTime, h, select, yesNo} from "./dom.js";
import {
  actionButton, confirmAction, dataTable, errorLine, heading, onSubmit, pager, secretBox, section, toast,
} from "./ui.js";

const senderLines = (text) => text.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);

function totpBadge(user) {
  if (user.totp_enabled) return h("span", {class: "badge ok"}, "on");
  if (user.totp_pending) return h("span", {class: "badge warn"}, "pending");
  return h("span", {class: "badge muted"}, "off");
}

export async function usersPage(ctx) {
  const q = ctx.query;
  const state = {
    search: q.get("search") || "", enabled: q.get("enabled") || "", totp: q.get("totp") || "",
    sort: q.get("sort") || "name", page: Number(q.get("page")) || 1, per_page: Number(q.get("per_page")) || 50,
  };
  const search = h("input", {type: "search", name: "search", value: state.search, placeholder: "part of the name",
    autocapitalize: "none", spellcheck: "false"});
  const enabled = select([["", "any"], ["true", "enabled"], ["false", "disabled"]], {name: "enabled"});
  const totp = select([["", "any"], ["true", "on"], ["false", "off"]], {name: "totp"});
  const sort = select([["name", "name A→Z"], ["-name", "name Z→A"], ["-created", "newest"], ["created", "oldest"],
    ["-updated", "recently changed"]], {name: "sort"});
  const perPage = select([["25", "25"], ["50", "50"], ["100", "100"], ["250", "250"]], {name: "per_page"});
  enabled.value = state.enabled;
  totp.value = state.totp;
  sort.value = state.sort;
  perPage.value = String(state.per_page);
  const filters = h("form", {class: "filters card", role: "search", "aria-label": "Find users"},
    field("Search", search), field("Enabled", enabled), field("TOTP", totp), field("Sort", sort),
    field("Per page", perPage), h("div", {class: "field actions"}, h("button", {type: "submit", class: "primary"}, "Search")));
  const results = h("div", {class: "results", "aria-live": "polite"});

  const createPanel = h("section", {class: "card", hidden: true, id: "new-user"});
  const newButton = h("button", {type: "button", class: "primary", "aria-expanded": "false", "aria-controls": "new-user",
    onclick: () => {
      createPanel.hidden = !createPanel.hidden;
      newButton.setAttribute("aria-expanded", String(!createPanel.hidden));
      if (!createPanel.hidden) createPanel.querySelector("input").focus();
    }}, "New user");
  createPanel.append(h("h2", {}, "New user"), createForm(ctx));

  ctx.main.append(heading("Users", newButton), createPanel, filters, results);

  async function load() {
    const data = await get("/api/users", {
      search: state.search, enabled: state.enabled, totp: state.totp, sort: state.sort,
      page: state.page, per_page: state.per_page,
    });
    if (!ctx.alive()) return;
    results.replaceChildren(
      dataTable([
        {label: "Name", cell: (u) => h("a", {href: `#/users/${seg(u.name)}`}, u.name)},
        {label: "Enabled", cell: (u) => yesNo(u.enabled)},
        {label: "TOTP", cell: (u) => totpBadge(u)},
        {label: "Senders", cell: (u) => (u.allowed_senders.length ? u.allowed_senders.join(", ") : "its own address")},
        {label: "Backend", cell: (u) => u.backend || "—"},
        {label: "App passwords", cell: (u) => String((u.app_passwords || []).length), class: "num"},
        {label: "Changed", cell: (u) => fmtTime(u.updated)},
      ], data.items, state.search || state.enabled || state.totp ? "No user matches." : "No users yet.", "Users"),
      pager(data.total, data.page, data.per_page, (page) => {
        state.page = page;
        sync();
        load().catch((e) => toast(e.message, "error"));
      }));
  }

  function sync() {
    ctx.setQuery({...state, page: state.page > 1 ? state.page : "", sort: state.sort === "name" ? "" : state.sort,
      per_page: state.per_page === 50 ? "" : state.per_page});
  }

  onSubmit(filters, async () => {
    Object.assign(state, {search: search.value.trim(), enabled: enabled.value, totp: totp.value, sort: sort.value,
      per_page: Number(perPage.value), page: 1});
    sync();
    await load();
  });
  for (const control of [enabled, totp, sort, perPage]) control.addEventListener("change", () => filters.requestSubmit());
  await load();
}

function createForm(ctx) {
  const name = h("input", {name: "name", required: true, autocomplete: "username", autocapitalize: "none", spellcheck: "false"});
  const password = h("input", {name: "password", type: "password", required: true, autocomplete: "new-password"});
  const enabled = checkbox("Enabled", {name: "enabled", checked: true});
  const senders = h("textarea", {name: "allowed_senders", rows: 2, spellcheck: "false"});
  const backend = h("input", {name: "backend", spellcheck: "false", placeholder: "host:port"});
  const form = h("form", {class: "form inline-form", id: "new-user-form"},
    field("Name", name, "The login name, usually the mail address."),
    field("Password", password),
    enabled.el,
    field("Allowed senders", senders, "One address or @domain per line; empty: the user's own address."),
    field("Backend", backend, "The mail server nginx sends this user to (host:port); empty: by the strategy."),
    errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Create user")));
  onSubmit(form, async () => {
    const body = {name: name.value.trim(), password: password.value, enabled: enabled.box.checked};
    const list = senderLines(senders.value);
    if (list.length) body.allowed_senders = list;
    if (backend.value.trim()) body.backend = backend.value.trim();
    const user = await post("/api/users", body);
    toast(`User ${user.name} created.`);
    ctx.go(`#/users/${seg(user.name)}`);
  });
  return form;
}

// -- one user ---------------------------------------------------------------------------

export async function userPage(ctx) {
  const name = ctx.params.name;
  const base = `/api/users/${seg(name)}`;
  let user = await get(base);
  if (!ctx.alive()) return;

  const summary = h("dl", {class: "facts"});
  const settings = section("Settings");
  const passwordBlock = section("Password");
  const totpBlock = section("TOTP (two-factor codes)");
  totpBlock.id = "user-totp";
  const appBlock = section("App passwords");
  appBlock.id = "user-app-passwords";
  const lockBlock = section("Login lockout");
  const dangerBlock = section("Delete");
  dangerBlock.classList.add("danger-zone");

  ctx.main.append(
    h("p", {class: "crumbs"}, h("a", {href: "#/users"}, "‹ Users")),
    heading(user.name), summary,
    h("div", {class: "grid two"}, settings, passwordBlock, totpBlock, appBlock, lockBlock, dangerBlock));

  function showSummary() {
    summary.replaceChildren(
      h("dt", {}, "Enabled"), h("dd", {}, yesNo(user.enabled)),
      h("dt", {}, "TOTP"), h("dd", {}, totpBadge(user)),
      h("dt", {}, "Created"), h("dd", {}, fmtTime(user.created)),
      h("dt", {}, "Changed"), h("dd", {}, fmtTime(user.updated)));
  }

  // Settings: enabled, allowed senders, backend.
  const enabled = checkbox("Enabled (may log in and send)", {name: "enabled", checked: user.enabled});
  const senders = h("textarea", {name: "allowed_senders", rows: 3, spellcheck: "false", value: user.allowed_senders.join("\n")});
  const backend = h("input", {name: "backend", spellcheck: "false", value: user.backend || "", placeholder: "host:port"});
  const settingsForm = h("form", {class: "form"}, enabled.el,
    field("Allowed senders", senders, "One address or @domain per line; empty: the user's own address."),
    field("Backend", backend, "Empty: none (chosen by the strategy)."), errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Save")));
  onSubmit(settingsForm, async () => {
    user = await patch(base, {enabled: enabled.box.checked, allowed_senders: senderLines(senders.value),
      backend: backend.value.trim() || null});
    senders.value = user.allowed_senders.join("\n");
    backend.value = user.backend || "";
    showSummary();
    toast("Saved.");
  });
  settings.append(settingsForm);

  // Password.
  const pw = h("input", {type: "password", name: "password", required: true, autocomplete: "new-password"});
  const pw2 = h("input", {type: "password", name: "password2", required: true, autocomplete: "new-password"});
  const pwForm = h("form", {class: "form"}, accountName(user.name), field("New password", pw), field("Repeat it", pw2), errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Set password")));
  onSubmit(pwForm, async () => {
    if (pw.value !== pw2.value) throw new Error("The two passwords differ.");
    await put(`${base}/password`, {password: pw.value});
    pwForm.reset();
    toast("Password set.");
  });
  passwordBlock.append(pwForm);

  // TOTP.
  const totpBody = h("div");
  totpBlock.append(totpBody);
  function showTotp(enrolment) {
    const parts = [];
    if (user.totp_enabled) {
      parts.push(h("p", {}, "TOTP is on: every login needs a code from the user's authenticator app."));
    } else if (!enrolment) {
      parts.push(h("p", {}, user.totp_pending
        ? "An enrolment is pending: confirm it with a code, or start again to see a new QR code."
        : "TOTP is off."));
    }
    if (enrolment) {
      const img = h("img", {class: "qr", src: `data:image/svg+xml;base64,${base64(enrolment.qr_svg)}`,
        alt: `QR code of the TOTP secret for ${user.name}`, width: 200, height: 200, id: "totp-qr"});
      parts.push(h("div", {class: "enrol"}, img, h("div", {},
        h("p", {}, "Scan this with the authenticator app, or type the secret:"),
        h("p", {}, h("code", {class: "secret", id: "totp-secret"}, enrolment.secret.replace(/(.{4})(?=.)/g, "$1 "))),
        h("details", {}, h("summary", {}, "otpauth URI"), h("code", {class: "wrap"}, enrolment.uri)),
        h("p", {class: "hint"}, "Shown once. TOTP is required once a code is confirmed."))));
    }
    if (enrolment || (user.totp_pending && !user.totp_enabled)) {
      const code = h("input", {name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true,
        maxlength: 16, id: "totp-code", spellcheck: "false"});
      const confirmForm = h("form", {class: "form inline-form", id: "totp-confirm"},
        field("Code from the app", code), errorLine(),
        h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Confirm")));
      onSubmit(confirmForm, async () => {
        user = await post(`${base}/totp/confirm`, {code: code.value.replace(/\s/g, "")});
        toast("TOTP is on.");
        showSummary();
        showTotp(null);
      });
      parts.push(confirmForm);
    }
    const actions = h("div", {class: "actions"});
    actions.append(actionButton(user.totp_enabled || user.totp_pending || enrolment ? "New QR code" : "Enrol TOTP",
      async () => {
        if (user.totp_enabled && !(await confirmAction(
          `Replace ${user.name}'s TOTP secret? Their current authenticator stops working once the new one is confirmed.`,
          "Replace"))) return;
        const fresh = await post(`${base}/totp`);
        user = await get(base);
        showSummary();
        showTotp(fresh);
        document.getElementById("totp-code")?.focus();
      }, {id: "totp-enrol"}));
    if (user.totp_enabled || user.totp_pending) {
      actions.append(actionButton("Remove TOTP", async () => {
        if (!(await confirmAction(`Stop requiring TOTP codes from ${user.name}?`, "Remove"))) return;
        user = await del(`${base}/totp`);
        showSummary();
        showTotp(null);
        toast("TOTP removed.");
      }, {class: "danger"}));
    }
    parts.push(actions);
    totpBody.replaceChildren(...parts);
  }

  // App passwords.
  const appList = h("div");
  const shown = h("div");
  const label = h("input", {name: "label", required: true, maxlength: 64, autocomplete: "off", placeholder: "phone, laptop…"});
  const appForm = h("form", {class: "form inline-form"}, field("Label", label), errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Add app password")));
  onSubmit(appForm, async () => {
    const made = await post(`${base}/app-passwords`, {label: label.value.trim()});
    appForm.reset();
    shown.replaceChildren(secretBox(`App password "${made.label}"`, made.password,
      "Shown once: put it in the mail client now."));
    await loadApps();
  });
  async function loadApps() {
    const data = await get(`${base}/app-passwords`);
    appList.replaceChildren(dataTable([
      {label: "Label", cell: (a) => a.label},
      {label: "Created", cell: (a) => fmtTime(a.created)},
      {label: "Last used", cell: (a) => (a.last_used ? fmtTime(a.last_used) : "never")},
      {label: "", cell: (a) => actionButton("Revoke", async () => {
        if (!(await confirmAction(`Revoke the app password "${a.label}" of ${user.name}?`, "Revoke"))) return;
        await del(`${base}/app-passwords/${seg(a.label)}`);
        toast(`Revoked "${a.label}".`);
        shown.replaceChildren();
        await loadApps();
      }, {class: "small danger", "aria-label": `Revoke ${a.label}`})},
    ], data.items, "No app passwords.", "App passwords"));
  }
  appBlock.append(appList, shown, appForm);

  // Unlock.
  const ip = h("input", {name: "ip", spellcheck: "false", placeholder: "any", inputmode: "decimal"});
  const unlockForm = h("form", {class: "form inline-form"},
    h("p", {class: "hint"}, "Lift the user's login slowdown, and the lockout on a client IP if one is given."),
    field("Client IP (optional)", ip), errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit"}, "Unlock")));
  onSubmit(unlockForm, async () => {
    await post(`${base}/unlock`, ip.value.trim() ? {ip: ip.value.trim()} : {});
    unlockForm.reset();
    toast(`${user.name} unlocked.`);
  });
  lockBlock.append(unlockForm);

  // Delete.
  dangerBlock.append(h("p", {}, "Deleting a user removes its password, TOTP secret and app passwords. Mail already stored stays."),
    h("div", {class: "actions"}, actionButton("Delete user", async () => {
      if (!(await confirmAction(`Delete the user ${user.name}? This cannot be undone.`))) return;
      await del(base);
      toast(`User ${user.name} deleted.`);
      ctx.go("#/users");
    }, {class: "danger"})));

  showSummary();
  showTotp(null);
  await loadApps();
}
