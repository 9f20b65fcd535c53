// Pieces every page uses: notices, the confirmation dialog, forms that show
// the API's error, tables (cards on a phone), pagination.

import {ApiError} from "./api.js";
import {h} from "./dom.js";

/** A short notice at the top of the screen (read out by screen readers). */
export function toast(text, kind = "ok") {
  const box = document.getElementById("toasts");
  const note = h("p", {class: `toast ${kind}`}, text);
  box.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 8000 : 4000);
}

/** Ask before doing something that cannot be undone: resolves true when confirmed. */
export function confirmAction(text, okLabel = "Delete") {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

/** An error line for a form (role=alert: read out when it appears). */
export function errorLine() {
  return h("p", {class: "error", role: "alert", hidden: true});
}

export function showError(line, error) {
  line.textContent = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  line.hidden = false;
}

/**
 * Run C{action} when C{form} is submitted (Enter or its button): the submit
 * button is disabled meanwhile, and the API's error shown in the form.
 */
export function onSubmit(form, action) {
  const line = form.querySelector(".error") || form.appendChild(errorLine());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const buttons = [...form.querySelectorAll("button[type=submit], button:not([type])")];
    line.hidden = true;
    buttons.forEach((b) => (b.disabled = true));
    try {
      await action(event);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) showError(line, error);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
  return form;
}

/** A button running C{action} (disabled meanwhile); an error goes to a notice. */
export function actionButton(label, action, props = {}) {
  const button = h("button", {type: "button", ...props}, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) toast(error.message, "error");
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/**
 * A table: C{columns} are {label, cell(item) → text or node, class?}. On a
 * phone every row becomes a card whose cells carry their column's label.
 */
export function dataTable(columns, items, empty = "Nothing here.", caption = "") {
  if (!items.length) return h("p", {class: "empty"}, empty);
  return h("div", {class: "table-wrap"}, h("table", {class: "data"},
    caption ? h("caption", {class: "visually-hidden"}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {scope: "col", class: c.class}, c.label)))),
    h("tbody", {}, items.map((item) => h("tr", {},
      columns.map((c) => {
        const value = c.cell(item);
        return h("td", {class: c.class, "data-label": c.label}, value === "" || value === undefined ? "—" : value);
      }))))));
}

/** Previous / next page buttons and where we are. */
export function pager(total, page, perPage, go) {
  const pages = Math.max(1, Math.ceil(total / perPage));
  return h("nav", {class: "pager", "aria-label": "Pages"},
    h("button", {type: "button", disabled: page <= 1, onclick: () => go(page - 1)}, "‹ Previous"),
    h("span", {class: "pager-text"}, `Page ${page} of ${pages} · ${total.toLocaleString("en-US")} total`),
    h("button", {type: "button", disabled: page >= pages, onclick: () => go(page + 1)}, "Next ›"));
}

/** A page's heading (focused after navigation so keyboard and screen reader users land on it). */
export function heading(text, ...extra) {
  return h("div", {class: "page-head"}, h("h1", {tabindex: -1}, text), extra);
}

export function section(title, ...children) {
  return h("section", {class: "card"}, h("h2", {}, title), children);
}

/** A "shown once" secret: the text, a copy button when the clipboard is there. */
export function secretBox(label, value, note) {
  const code = h("code", {class: "secret"}, value);
  const box = h("div", {class: "once", role: "status"}, h("p", {}, h("strong", {}, label)), code);
  if (navigator.clipboard && window.isSecureContext) {
    box.append(actionButton("Copy", async () => {
      await navigator.clipboard.writeText(value);
      toast("Copied.");
    }, {class: "small"}));
  }
  if (note) box.append(h("p", {class: "hint"}, note));
  return box;
}
