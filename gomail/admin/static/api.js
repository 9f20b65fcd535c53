// The admin API client (docs/admin-api.md): a cookie session (the tokens are in
// HttpOnly cookies, out of this page's reach), the CSRF token kept in memory and
// sent with every state-changing request, one refresh attempt on a 401.

export const session = {
  csrf: null,
  admin: null, // {name, role, totp_enabled}
  expires: null,
};

const RANKS = {auditor: 1, admin: 2, superadmin: 3};

/** Whether the logged-in admin has at least C{role}. */
export function can(role) {
  return Boolean(session.admin) && (RANKS[session.admin.role] || 0) >= (RANKS[role] || 99);
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let unauthorized = () => {};
/** What to do when the session is gone for good (show the login page). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

function remember(body) {
  if (body && body.admin) session.admin = body.admin;
  if (body && body.csrf_token) session.csrf = body.csrf_token;
  if (body && body.expires_at) session.expires = body.expires_at;
}

export function forget() {
  session.csrf = null;
  session.admin = null;
  session.expires = null;
}

async function send(method, path, body) {
  const headers = {Accept: "application/json"};
  const init = {method, headers, credentials: "same-origin", cache: "no-store", redirect: "error"};
  if (method !== "GET" && method !== "HEAD" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "the server cannot be reached: " + e.message);
  }
  let data = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
  }
  return {response, data};
}

let refreshing = null;

/** Trade the refresh cookie for a new session, once for every request waiting on it. */
export function refresh() {
  if (!refreshing) {
    refreshing = send("POST", "/api/refresh", {}).then(({response, data}) => {
      if (response.ok) {
        remember(data);
        return true;
      }
      return false;
    }, () => false).finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/**
 * One API request: the parsed JSON answer, or an ApiError with the text of
 * the answer's {"error": ...}. A 401 tries a refresh once, then ends the session.
 */
export async function api(method, path, body) {
  let {response, data} = await send(method, path, body);
  const sessionRoute = path === "/api/login" || path === "/api/refresh";
  if (response.status === 401 && !sessionRoute) {
    if (await refresh()) ({response, data} = await send(method, path, body));
    if (response.status === 401) {
      forget();
      unauthorized("Your session has ended: log in again.");
    }
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, data);
  }
  return data;
}

export const get = (path, query) => api("GET", withQuery(path, query));
export const post = (path, body) => api("POST", path, body);
export const put = (path, body) => api("PUT", path, body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path, body) => api("DELETE", path, body);

/** C{path} with the query parameters that have a value (empty strings, null and undefined left out). */
export function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/** A path segment (a user name may hold "@", "+", "/"...). */
export const seg = (text) => encodeURIComponent(text);

export async function login(username, password, totpCode) {
  const body = {username, password, session: "cookie"};
  if (totpCode) body.totp_code = totpCode;
  const data = await api("POST", "/api/login", body);
  remember(data);
  return data;
}

/** The current session, if the cookies hold one (after a page load); false otherwise. */
export async function resume() {
  let {response, data} = await send("GET", "/api/session");
  if (response.status === 401 && await refresh()) ({response, data} = await send("GET", "/api/session"));
  if (!response.ok) return false;
  remember(data);
  return true;
}

export async function logout() {
  try {
    await send("POST", "/api/logout");
  } finally {
    forget();
  }
}
