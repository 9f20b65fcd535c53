// Building the page with DOM APIs only: nothing the API returns is ever
// parsed as HTML (no innerHTML), and nothing needs an inline style or script
// (the Content-Security-Policy allows neither).

const PROPERTIES = new Set(["value", "checked", "disabled", "selected", "hidden", "textContent", "indeterminate",
  "multiple", "required", "readOnly"]);

/** An element: h("a", {href: "#/x", class: "y", onclick: fn}, "text", child, [more]). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element (attributes only). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (PROPERTIES.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let ids = 0;
export function uid(prefix = "f") {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A labelled form field: the label, the control and an optional hint (tied by aria-describedby). */
export function field(label, control, hint) {
  if (!control.id) control.id = uid();
  const parts = [h("label", {for: control.id}, label), control];
  if (hint) {
    const hintId = uid("hint");
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("p", {class: "hint", id: hintId}, hint));
  }
  return h("div", {class: control.type === "checkbox" ? "field check" : "field"}, parts);
}

/** A checkbox field, its label after the box. */
export function checkbox(label, props) {
  const box = h("input", {type: "checkbox", ...props});
  box.id = box.id || uid();
  return {box, el: h("div", {class: "field check"}, box, h("label", {for: box.id}, label))};
}

/**
 * The account a password form is about, for password managers (Chrome asks
 * for one in every password form); not shown.
 */
export function accountName(name) {
  return h("input", {type: "text", name: "username", autocomplete: "username", value: name, readOnly: true, hidden: true,
    tabindex: -1, "aria-hidden": "true"});
}

export function select(options, props) {
  return h("select", props, options.map(([value, label]) => h("option", {value}, label)));
}

// -- formatting ----------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");

/** Epoch seconds as local "YYYY-MM-DD HH:MM:SS" (or "—"). */
export function fmtTime(epoch) {
  if (epoch === null || epoch === undefined || epoch === "") return "—";
  const d = new Date(Number(epoch) * 1000);
  if (Number.isNaN(d.getTime())) return String(epoch);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtClock(epoch, seconds = false) {
  const d = new Date(Number(epoch) * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? ":" + pad(d.getSeconds()) : ""}`;
}

/** A number for people: 1234 → "1,234", 0.1234 → "0.123". */
export function fmtNum(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  const n = Number(value);
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  return n.toLocaleString("en-US", {maximumSignificantDigits: digits});
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** "<input type=datetime-local>"'s value as epoch seconds, and back. */
export function localToEpoch(value) {
  if (!value) return null;
  const t = new Date(value).getTime();
  return Number.isNaN(t) ? null : Math.floor(t / 1000);
}

export function epochToLocal(epoch) {
  if (epoch === null || epoch === undefined || epoch === "") return "";
  const d = new Date(Number(epoch) * 1000);
  if (Number.isNaN(d.getTime())) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Text as base64 of its UTF-8 bytes (for data: URLs). */
export function base64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function badge(text, kind = "") {
  return h("span", {class: `badge ${kind}`}, text);
}

export function yesNo(value) {
  return value ? badge("yes", "ok") : badge("no", "muted");
}
