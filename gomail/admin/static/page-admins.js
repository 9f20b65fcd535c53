// Admins (role superadmin): the list, adding one, and one admin's page: role,
// enabled, password, removing its TOTP, deleting.

import {del, get, patch, post, put, seg, session} from "./api.js";
import {accountName, checkbox, field, fmtTime, h, select, yesNo} from "./dom.js";
import {actionButton, confirmAction, dataTable, errorLine, heading, onSubmit, section, toast} from "./ui.js";

const ROLES = [["auditor", "auditor (read only)"], ["admin", "admin"], ["superadmin", "superadmin"]];

export async function adminsPage(ctx) {
  const list = h("div");
  const name = h("input", {name: "name", required: true, autocomplete: "username", autocapitalize: "none", spellcheck: "false"});
  const password = h("input", {name: "password", type: "password", required: true, autocomplete: "new-password"});
  const role = select(ROLES, {name: "role"});
  role.value = "admin";
  const form = h("form", {class: "form inline-form"}, field("Name", name), field("Password", password),
    field("Role", role), errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Add admin")));
  onSubmit(form, async () => {
    const made = await post("/api/admins", {name: name.value.trim(), password: password.value, role: role.value});
    form.reset();
    role.value = "admin";
    toast(`Admin ${made.name} added.`);
    await load();
  });
  ctx.main.append(heading("Admins"), h("section", {class: "card"}, list), section("Add an admin", form));

  async function load() {
    const data = await get("/api/admins");
    if (!ctx.alive()) return;
    list.replaceChildren(dataTable([
      {label: "Name", cell: (a) => h("a", {href: `#/admins/${seg(a.name)}`}, a.name)},
      {label: "Role", cell: (a) => a.role},
      {label: "Enabled", cell: (a) => yesNo(a.enabled)},
      {label: "TOTP", cell: (a) => yesNo(a.totp_enabled)},
      {label: "Created", cell: (a) => fmtTime(a.created)},
    ], data.items, "No admins.", "Admins"));
  }
  await load();
}

export async function adminPage(ctx) {
  const name = ctx.params.name;
  const base = `/api/admins/${seg(name)}`;
  let admin = await get(base);
  if (!ctx.alive()) return;
  const facts = h("dl", {class: "facts"});
  function showFacts() {
    facts.replaceChildren(h("dt", {}, "Role"), h("dd", {}, admin.role), h("dt", {}, "Enabled"), h("dd", {}, yesNo(admin.enabled)),
      h("dt", {}, "TOTP"), h("dd", {}, yesNo(admin.totp_enabled)), h("dt", {}, "Created"), h("dd", {}, fmtTime(admin.created)),
      h("dt", {}, "Changed"), h("dd", {}, fmtTime(admin.updated)));
  }
  const role = select(ROLES, {name: "role"});
  role.value = admin.role;
  const enabled = checkbox("Enabled (may log in)", {name: "enabled", checked: admin.enabled});
  const settings = h("form", {class: "form"}, field("Role", role), enabled.el, errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Save")));
  onSubmit(settings, async () => {
    admin = await patch(base, {role: role.value, enabled: enabled.box.checked});
    showFacts();
    toast("Saved.");
  });

  const pw = h("input", {type: "password", name: "password", required: true, autocomplete: "new-password"});
  const pw2 = h("input", {type: "password", name: "password2", required: true, autocomplete: "new-password"});
  const pwForm = h("form", {class: "form"}, accountName(admin.name), field("New password", pw), field("Repeat it", pw2), errorLine(),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Set password")));
  onSubmit(pwForm, async () => {
    if (pw.value !== pw2.value) throw new Error("The two passwords differ.");
    await put(`${base}/password`, {password: pw.value});
    pwForm.reset();
    toast("Password set: the admin's sessions have ended.");
  });

  const self = session.admin && session.admin.name === admin.name;
  ctx.main.append(h("p", {class: "crumbs"}, h("a", {href: "#/admins"}, "‹ Admins")), heading(admin.name), facts,
    h("div", {class: "grid two"},
      section("Role and access", settings),
      section("Password", pwForm),
      section("TOTP", h("p", {}, "An admin enrols TOTP on their own profile page. Removing it lets them log in with the password alone."),
        h("div", {class: "actions"}, actionButton("Remove TOTP", async () => {
          if (!(await confirmAction(`Remove ${admin.name}'s TOTP?`, "Remove"))) return;
          admin = await del(`${base}/totp`);
          showFacts();
          toast("TOTP removed.");
        }, {class: "danger"}))),
      section("Delete", self ? h("p", {}, "This is you: another superadmin can delete your account.") : h("div", {class: "actions"},
        actionButton("Delete admin", async () => {
          if (!(await confirmAction(`Delete the admin ${admin.name}?`))) return;
          await del(base);
          toast(`Admin ${admin.name} deleted.`);
          ctx.go("#/admins");
        }, {class: "danger"})))));
  showFacts();
}
