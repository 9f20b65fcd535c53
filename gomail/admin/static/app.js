// The gomail admin web UI: a single page whose routes are in the address's
// hash (#/users?search=x), over the admin API (docs/admin-api.md).

import {ApiError, can, login, logout, onUnauthorized, resume, session} from "./api.js";
import {h} from "./dom.js";
import {adminPage, adminsPage} from "./page-admins.js";
import {dashboardPage} from "./page-dashboard.js";
import {authLogPage, operationsLogPage} from "./page-logs.js";
import {profilePage} from "./page-profile.js";
import {blacklistPage, configPage, queuePage} from "./page-system.js";
import {userPage, usersPage} from "./page-users.js";
import {heading} from "./ui.js";

/** Every route: its pattern, the lowest role that may see it, its page; nav: its place in the menu. */
const ROUTES = [
  {pattern: "dashboard", title: "Dashboard", role: "auditor", page: dashboardPage, nav: true},
  {pattern: "users", title: "Users", role: "admin", page: usersPage, nav: true},
  {pattern: "users/:name", title: "User", role: "admin", page: userPage, section: "users"},
  {pattern: "admins", title: "Admins", role: "superadmin", page: adminsPage, nav: true},
  {pattern: "admins/:name", title: "Admin", role: "superadmin", page: adminPage, section: "admins"},
  {pattern: "blacklist", title: "Blacklist", role: "admin", page: blacklistPage, nav: true},
  {pattern: "logs/auth", title: "Auth log", role: "auditor", page: authLogPage, nav: true},
  {pattern: "logs/operations", title: "Operations", role: "auditor", page: operationsLogPage, nav: true},
  {pattern: "queue", title: "Queue", role: "auditor", page: queuePage, nav: true},
  {pattern: "config", title: "Configuration", role: "admin", page: configPage, nav: true},
  {pattern: "profile", title: "Profile", role: "auditor", page: profilePage},
];

const $ = (id) => document.getElementById(id);

function match(path) {
  const parts = path.split("/").filter(Boolean);
  for (const route of ROUTES) {
    const pattern = route.pattern.split("/");
    if (pattern.length !== parts.length) continue;
    const params = {};
    let ok = true;
    pattern.forEach((p, i) => {
      if (p.startsWith(":")) params[p.slice(1)] = decodeURIComponent(parts[i]);
      else if (p !== parts[i]) ok = false;
    });
    if (ok) return {route, params};
  }
  return null;
}

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  return {path: path || "dashboard", query: new URLSearchParams(query)};
}

// -- pages -------------------------------------------------------------------------------

let current = null; // the shown page's context
let renders = 0;

async function render() {
  if (!session.admin) return;
  if (current) current.cleanup();
  const {path, query} = parseHash();
  const found = match(path);
  const main = $("main");
  main.replaceChildren();
  closeMenu();
  const serial = ++renders;
  const cleanups = [];
  const ctx = {
    main, query, params: found ? found.params : {},
    alive: () => serial === renders && Boolean(session.admin),
    onCleanup: (fn) => cleanups.push(fn),
    cleanup: () => cleanups.splice(0).forEach((fn) => fn()),
    /** Record a page's own state (filters, page number) in the address without rendering again. */
    setQuery: (values) => {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(values)) if (v !== "" && v !== null && v !== undefined) params.set(k, String(v));
      const text = params.toString();
      history.replaceState(null, "", `#/${path}${text ? "?" + text : ""}`);
    },
    go: (hash) => {
      if (location.hash === hash) render();
      else location.hash = hash;
    },
    sessionEnded: (text) => showLogin(text),
  };
  current = ctx;
  const section = found ? found.route.section || found.route.pattern : "";
  for (const link of document.querySelectorAll("#nav-list a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!found) {
    document.title = "Not found · gomail admin";
    main.append(heading("Not found"), h("p", {}, "There is no such page. ", h("a", {href: "#/dashboard"}, "Go to the dashboard.")));
    return;
  }
  document.title = `${found.route.title} · gomail admin`;
  main.dataset.page = found.route.pattern;
  if (!can(found.route.role)) {
    main.append(heading(found.route.title), h("p", {class: "error"}, `This page needs the ${found.route.role} role; you are ${session.admin.role}.`));
    return;
  }
  main.setAttribute("aria-busy", "true");
  const loading = h("p", {class: "loading"}, "Loading…");
  main.append(loading);
  try {
    await found.route.page(ctx);
  } catch (error) {
    if (!ctx.alive()) return;
    if (error instanceof ApiError && error.status === 401) return; // back at the login form
    main.append(h("div", {class: "card error-card", role: "alert"}, h("h2", {}, "Could not load this page"),
      h("p", {}, error.message || String(error)),
      h("button", {type: "button", onclick: () => render()}, "Try again")));
  } finally {
    if (ctx.alive()) {
      loading.remove();
      main.removeAttribute("aria-busy");
    }
  }
  if (ctx.alive() && !main.contains(document.activeElement)) {
    const title = main.querySelector("h1");
    if (title) title.focus({preventScroll: true});
  }
}

// -- the frame: navigation, login, logout ------------------------------------------------------

function buildNav() {
  const list = $("nav-list");
  list.replaceChildren(...ROUTES.filter((r) => r.nav && can(r.role)).map((r) =>
    h("li", {}, h("a", {href: `#/${r.pattern}`, dataset: {section: r.pattern}}, r.title))));
  $("who").textContent = `${session.admin.name} (${session.admin.role})`;
}

function closeMenu() {
  $("nav").classList.remove("open");
  $("menu-toggle").setAttribute("aria-expanded", "false");
}

function showApp() {
  $("boot").hidden = true;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  document.body.dataset.role = session.admin.role;
  buildNav();
  render();
}

function showLogin(notice) {
  if (current) current.cleanup();
  current = null;
  renders += 1;
  session.admin = null;
  session.csrf = null;
  $("boot").hidden = true;
  $("app-view").hidden = true;
  $("main").replaceChildren();
  $("login-view").hidden = false;
  document.title = "Log in · gomail admin";
  const box = $("login-notice");
  box.textContent = notice || "";
  box.hidden = !notice;
  $("login-form").reset();
  $("login-error").hidden = true;
  $("login-username").focus();
}

function setupLogin() {
  const form = $("login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("login-error");
    const button = $("login-submit");
    error.hidden = true;
    const username = $("login-username").value.trim();
    const password = $("login-password").value;
    if (!username || !password) {
      error.textContent = "Give your username and password.";
      error.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      await login(username, password, $("login-totp").value.replace(/\s/g, ""));
      $("login-password").value = "";
      $("login-totp").value = "";
      showApp();
    } catch (e) {
      error.textContent = e.status === 401 ? "Login failed: check the name, the password and the TOTP code." : e.message;
      error.hidden = false;
      $("login-password").focus();
    } finally {
      button.disabled = false;
    }
  });
  $("logout").addEventListener("click", async () => {
    await logout();
    showLogin("You have logged out.");
  });
  $("menu-toggle").addEventListener("click", () => {
    const open = $("nav").classList.toggle("open");
    $("menu-toggle").setAttribute("aria-expanded", String(open));
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("nav").classList.contains("open")) {
      closeMenu();
      $("menu-toggle").focus();
    }
  });
}

async function start() {
  setupLogin();
  onUnauthorized((text) => showLogin(text));
  window.addEventListener("hashchange", () => render());
  if (await resume()) showApp();
  else showLogin();
}

start();
