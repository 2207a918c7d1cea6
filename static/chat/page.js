// The chat page's shared state and small helpers, imported by every other module of the page
// (docs/browser.md "Modules"). It imports nothing of the page itself, so no import cycle can
// go through it: modules further up pass callbacks instead of importing each other back.
//
// Safety rule for the page: text from the model or a user is only ever inserted with
// textContent / text nodes (or via markdown.js, which follows the same rule). No innerHTML.

export const config = JSON.parse(document.getElementById("page-config").textContent);
const $ = (id) => document.getElementById(id);

export const ui = {
  app: $("app"),
  sidebar: $("sidebar"),
  sidebarToggle: $("sidebar-toggle"),
  backdrop: $("sidebar-backdrop"),
  sessionList: $("session-list"),
  sessionEmpty: $("session-empty"),
  sessionMore: $("session-more"),
  title: $("chat-title"),
  conn: $("conn-status"),
  banner: $("offline-banner"),
  directives: $("directive-list"),
  scroller: $("scroller"),
  empty: $("empty-state"),
  messages: $("messages"),
  jump: $("jump"),
  notice: $("notice"),
  composer: $("composer"),
  input: $("input"),
  send: $("send-btn"),
  stop: $("stop-btn"),
  attach: $("attach-btn"),
  fileInput: $("file-input"),
  attachments: $("attachments"),
  dropOverlay: $("drop-overlay"),
  dialog: $("confirm-dialog"),
  dialogText: $("confirm-text"),
  main: $("main"),
};

export const state = {
  chatId: config.chatId,
  sessions: new Map(), // id -> session
  nextSessionsUrl: null,
  stream: null, // the request this tab is following (stream.js: startSend / startResume)
  pending: [], // attachments waiting to be sent
  stick: true, // auto-scroll while the user is at the bottom
  lastProbe: 0,
  filesPanel: null, // files.js's panel, once set up
  branches: false, // the history's messages carry `siblings` (the server keeps branches)
};

// --- Small helpers --------------------------------------------------------------------------

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function button(label, className, onClick, aria) {
  const b = el("button", `btn ${className || ""}`.trim(), label);
  b.type = "button";
  if (aria) b.setAttribute("aria-label", aria);
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function pretty(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch (_) {
    return String(value);
  }
}

/** The text parts of a UI message, one per line. */
export function textOf(message) {
  return (message.parts || []).filter((p) => p.type === "text").map((p) => p.text).join("\n");
}

let noticeTimer = null;
export function notice(text, { kind = "info", timeout = 6000 } = {}) {
  clearTimeout(noticeTimer);
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
  if (timeout) noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, timeout);
}

export function setTitle(title) {
  const t = title || (state.chatId ? "Untitled chat" : "New chat");
  ui.title.textContent = t;
  document.title = `${t} · Copilot`;
}

const liveRegion = el("div", "sr-only");
liveRegion.setAttribute("aria-live", "polite");
document.body.append(liveRegion);
export function announce(text) {
  liveRegion.textContent = text;
}

/** The composer's text box grows with its content (up to a limit). */
export function autoGrow() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 240)}px`;
}

/** The ids the chat's workspace directory may be named after (it is the session's UUID). */
export function workspaceIds() {
  const ids = [state.chatId];
  for (const s of state.sessions.values()) if (s.client_id === state.chatId) ids.push(String(s.id));
  return ids;
}

/** Is a reply of this tab being written (a turn streams)? */
export function streaming() {
  return Boolean(state.stream && state.stream.active);
}

// --- HTTP API (session cookie + CSRF) -------------------------------------------------------

export function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : config.csrfToken;
}

export async function api(path, { method = "GET", body } = {}) {
  const url = path.startsWith("/") || path.startsWith("http") ? path : config.apiBase + path;
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) {
    const err = new Error(`${method} ${url}: HTTP ${res.status}`);
    err.status = res.status;
    try {
      err.body = await res.json(); // {"error": {code, message, details?}} (chat/api/errors.py)
    } catch (_) {
      err.body = null;
    }
    throw err;
  }
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : null;
}

/** The message of an API error body ({"error": {message}}), else `fallback`. */
export function apiErrorText(err, fallback) {
  const message = err && err.body && err.body.error && err.body.error.message;
  return message ? String(message) : fallback;
}

// --- Scrolling ------------------------------------------------------------------------------

function nearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
}

let lastScrollTop = 0;
export function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
  lastScrollTop = ui.scroller.scrollTop;
}

let scrollQueued = false;
export function maybeScroll() {
  if (scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    if (state.stick) scrollToBottom();
  });
}

export function setupScrolling() {
  // Only the user moves the view up (our own scrolls go down, and content grows below), so an
  // upward move means "I am reading": stop following until they are back at the bottom.
  ui.scroller.addEventListener("scroll", () => {
    const top = ui.scroller.scrollTop;
    if (top < lastScrollTop - 4) state.stick = false;
    if (nearBottom()) state.stick = true;
    lastScrollTop = top;
    ui.jump.hidden = state.stick;
  });
  ui.jump.addEventListener("click", () => {
    state.stick = true;
    ui.jump.hidden = true;
    scrollToBottom();
  });
}

export function updateEmpty() {
  ui.empty.hidden = ui.messages.childElementCount > 0;
}

export function appendMessage(node) {
  ui.messages.append(node);
  updateEmpty();
  maybeScroll();
}
