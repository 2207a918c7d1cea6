// The chat page's sessions (docs/browser.md "Modules"): the sidebar's chat list (load, rename,
// delete, the small-screen drawer), the current chat's title, creating the chat on first send
// (ensureChat), and loading the chat's history into the conversation.

import { messageReveal } from "./search.js";
import { state, ui, el, button, uuid, notice, setTitle, api, scrollToBottom, updateEmpty } from "./page.js";
import { renderHistoryMessage, updateActions } from "./views.js";

// --- History --------------------------------------------------------------------------------

const HISTORY_PAGE = 200; // the API's maximum
const NEWEST = 2147483647; // "before" this: the newest page

function messagesOf(data) {
  const list = Array.isArray(data) ? data : data.results || [];
  return [...list].sort((a, b) => a.sequence - b.sequence);
}

export async function loadHistory() {
  if (!state.chatId) return;
  let data;
  try {
    data = await api(`sessions/${state.chatId}/messages/?limit=${HISTORY_PAGE}&before=${NEWEST}`);
  } catch (err) {
    notice(`Could not load this chat (${err.status ? `HTTP ${err.status}` : "network error"}).`, { kind: "error" });
    return;
  }
  const list = messagesOf(data);
  // The server keeps branches (edit, regenerate) when its messages say where they branch.
  if (list.some((m) => Array.isArray(m.siblings))) state.branches = true;
  ui.messages.replaceChildren(...list.map(renderHistoryMessage));
  if (data && data.prev) addLoadEarlier(data.prev);
  updateEmpty();
  updateActions();
  state.stick = true;
  scrollToBottom();
}

function addLoadEarlier(url) {
  const b = button("Load earlier messages", "ghost small load-earlier", async () => {
    b.disabled = true;
    try {
      const data = await api(url);
      const first = ui.messages.querySelector("[data-sequence]");
      const oldest = first ? Number(first.dataset.sequence) : Infinity;
      const list = messagesOf(data).filter((m) => m.sequence < oldest);
      const height = ui.scroller.scrollHeight;
      b.remove();
      ui.messages.prepend(...list.map(renderHistoryMessage));
      if (data && data.prev) addLoadEarlier(data.prev);
      ui.scroller.scrollTop += ui.scroller.scrollHeight - height;
    } catch (_) {
      b.disabled = false;
    }
  });
  ui.messages.prepend(b);
}

// --- Sessions sidebar -----------------------------------------------------------------------

function sessionTitle(s) {
  return s.title || "Untitled chat";
}

export function renderSessions() {
  const items = [...state.sessions.values()].sort((a, b) => sessionTime(b) - sessionTime(a));
  ui.sessionList.replaceChildren(...items.map(sessionItem));
  ui.sessionEmpty.hidden = items.length > 0;
  ui.sessionMore.hidden = !state.nextSessionsUrl;
}

function sessionTime(s) {
  return Date.parse(s.last_activity_at || s.updated_at || s.created_at || 0) || 0;
}

function sessionItem(s) {
  const li = el("li", "session-item");
  li.dataset.id = s.id;
  const a = el("a", "session-link", sessionTitle(s));
  a.href = `/c/${s.id}/`;
  if (s.id === state.chatId) {
    a.setAttribute("aria-current", "page");
    li.classList.add("current");
  }
  const rename = button("✎", "ghost icon small", () => startRename(li, s), `Rename chat ${sessionTitle(s)}`);
  rename.title = "Rename";
  const del = button("✕", "ghost icon small", () => confirmDelete(s), `Delete chat ${sessionTitle(s)}`);
  del.title = "Delete";
  li.append(a, rename, del);
  return li;
}

export async function loadSessions(url) {
  let data;
  try {
    data = await api(url || "sessions/?page_size=50");
  } catch (_) {
    return;
  }
  const list = Array.isArray(data) ? data : data.results || [];
  if (!state.branches && list.some((s) => s && "active_leaf" in s)) {
    state.branches = true; // see loadHistory
    updateActions(); // the messages already shown get their Edit buttons
  }
  if (!url) state.sessions.clear();
  for (const s of list) state.sessions.set(String(s.id), { ...s, id: String(s.id) });
  state.nextSessionsUrl = Array.isArray(data) ? null : data.next || null;
  renderSessions();
  const current = state.chatId && state.sessions.get(state.chatId);
  if (current) setTitle(current.title);
}


function startRename(li, s) {
  const input = el("input", "rename-input");
  input.type = "text";
  input.value = s.title || "";
  input.maxLength = 200;
  input.setAttribute("aria-label", "New chat title");
  li.replaceChildren(input);
  input.focus();
  input.select();
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    if (save && title && title !== s.title) {
      try {
        const updated = await api(`sessions/${s.id}/`, { method: "PATCH", body: { title } });
        Object.assign(s, updated || { title });
        s.id = String(s.id);
        if (s.id === state.chatId) setTitle(s.title);
      } catch (_) {
        notice("Could not rename the chat.", { kind: "error" });
      }
    }
    renderSessions();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      finish(true);
    } else if (e.key === "Escape") {
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

function confirmDelete(s) {
  ui.dialogText.textContent = `“${sessionTitle(s)}” and all its messages will be deleted. This cannot be undone.`;
  ui.dialog.returnValue = "";
  ui.dialog.showModal();
  ui.dialog.addEventListener(
    "close",
    async () => {
      if (ui.dialog.returnValue !== "ok") return;
      try {
        await api(`sessions/${s.id}/`, { method: "DELETE" });
      } catch (err) {
        if (err.status !== 404) {
          notice("Could not delete the chat.", { kind: "error" });
          return;
        }
      }
      state.sessions.delete(s.id);
      renderSessions();
      if (s.id === state.chatId) window.location.assign("/");
    },
    { once: true },
  );
}

export function onSessionInfo(data) {
  if (!state.chatId) return;
  const s = state.sessions.get(state.chatId);
  if (data.title) {
    if (s) {
      s.title = data.title;
      renderSessions();
    } else {
      loadSessions();
    }
    setTitle(data.title);
  }
}

export async function ensureChat() {
  if (state.chatId) return state.chatId;
  let id = null;
  try {
    const created = await api("sessions/", { method: "POST", body: {} });
    id = created && created.id ? String(created.id) : null;
  } catch (_) {
    id = null;
  }
  state.chatId = id || uuid(); // a new chat id creates the session on first send (CONTRACT §5)
  history.replaceState(null, "", `/c/${state.chatId}/`);
  if (id) {
    state.sessions.set(id, { id, title: "", last_activity_at: new Date().toISOString() });
    renderSessions();
  }
  setTitle("");
  return state.chatId;
}

function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  ui.sidebarToggle.setAttribute("aria-expanded", String(open));
  ui.backdrop.hidden = !open;
}

/** The sidebar's own controls: "Load more", and its toggle and backdrop on small screens. */
export function setupSessions() {
  ui.sessionMore.addEventListener("click", () => loadSessions(state.nextSessionsUrl));
  ui.sidebarToggle.addEventListener("click", () => setSidebar(!document.body.classList.contains("sidebar-open")));
  ui.backdrop.addEventListener("click", () => setSidebar(false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) setSidebar(false);
  });
}


/** A search hit in this very chat: scroll to its message instead of reloading the page. */
export function openSearchHit(url) {
  if (url.pathname !== window.location.pathname) return false;
  history.replaceState(null, "", url.hash || window.location.pathname);
  if (messageReveal(ui.messages, url.hash)) state.stick = false;
  setSidebar(false);
  return true;
}
