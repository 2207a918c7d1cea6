// The chat page's sidebar search (issue #19), imported by app.js and sessions.js:
//
// - setupSearch(): the search box above the chat list. Typing (debounced) asks
//   GET /api/v1/search/?q= and lists the hits in place of the chat list: the chat's title and,
//   for a message hit, its snippet with the matched words in <mark>. Each hit is a link to
//   /c/<chat id>/#msg-<sequence>; ArrowDown/ArrowUp move between the box and the hits, Escape
//   clears the search and shows the chat list again.
// - messageReveal(): scrolls to the message named by the #msg-<sequence> fragment (if it is
//   among the loaded messages) and flags it for a moment.
//
// Same safety rule as the rest of the page (page.js): titles and snippets are text (textContent / text nodes); the
// highlights are the API's [start, end) offsets in code points, wrapped in <mark> elements
// built here. No innerHTML.

const DEBOUNCE_MS = 200;
const QUERY_MAX = 200; // the API's limit
export const MESSAGE_FRAGMENT = /^#msg-(\d+)$/;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** ``text`` with its [start, end) code-point ranges in <mark> elements (text nodes only). */
export function highlighted(text, highlights) {
  const chars = Array.from(text || "");
  const nodes = [];
  let at = 0;
  for (const [start, end] of highlights || []) {
    if (!(start >= at && end > start && end <= chars.length)) continue;
    if (start > at) nodes.push(document.createTextNode(chars.slice(at, start).join("")));
    nodes.push(el("mark", "", chars.slice(start, end).join("")));
    at = end;
  }
  if (at < chars.length) nodes.push(document.createTextNode(chars.slice(at).join("")));
  return nodes;
}

function hitItem(hit) {
  const li = el("li", "search-hit");
  const a = el("a", "search-link");
  const session = hit.session || {};
  a.href = hit.message ? `/c/${session.id}/#msg-${hit.message.sequence}` : `/c/${session.id}/`;
  const title = el("span", "search-title");
  if (hit.message) title.textContent = session.title || "Untitled chat";
  else title.append(...highlighted(hit.snippet, hit.highlights));
  a.append(title);
  if (session.archived) a.append(el("span", "search-tag muted small", "archived"));
  if (hit.message) {
    const snippet = el("span", "search-snippet small");
    snippet.append(el("span", "search-role muted", hit.message.role === "user" ? "You: " : "Copilot: "));
    snippet.append(...highlighted(hit.snippet, hit.highlights));
    a.append(snippet);
  }
  li.append(a);
  return li;
}

export function setupSearch({ api, onOpen }) {
  const input = document.getElementById("search-input");
  const results = document.getElementById("search-results");
  const status = document.getElementById("search-status");
  const sessions = document.getElementById("session-nav");
  if (!input || !results) return;
  let timer = null;
  let asked = 0; // the latest request; older answers are dropped

  const links = () => [...results.querySelectorAll("a.search-link")];

  function show(searching) {
    results.hidden = !searching;
    if (sessions) sessions.hidden = searching;
    if (!searching) {
      results.replaceChildren();
      status.textContent = "";
    }
  }

  async function run(q) {
    const mine = ++asked;
    let data;
    try {
      data = await api(`search/?q=${encodeURIComponent(q)}`);
    } catch (err) {
      if (mine !== asked) return;
      status.textContent = err.status === 400 ? "Type fewer words." : "Search failed.";
      results.replaceChildren();
      return;
    }
    if (mine !== asked || input.value.trim() !== q) return;
    const hits = (data && data.results) || [];
    results.replaceChildren(...hits.map(hitItem));
    status.textContent = hits.length ? `${hits.length} result${hits.length === 1 ? "" : "s"}` : "No results.";
  }

  input.maxLength = QUERY_MAX;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (!q) {
      asked += 1;
      show(false);
      return;
    }
    show(true);
    timer = setTimeout(() => run(q), DEBOUNCE_MS);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown") {
      const first = links()[0];
      if (first) {
        e.preventDefault();
        first.focus();
      }
    } else if (e.key === "Escape" && input.value) {
      e.preventDefault();
      e.stopPropagation();
      input.value = "";
      asked += 1;
      show(false);
    }
  });
  results.addEventListener("keydown", (e) => {
    const all = links();
    const i = all.indexOf(document.activeElement);
    if (i < 0) return;
    if (e.key === "ArrowDown" && i < all.length - 1) {
      e.preventDefault();
      all[i + 1].focus();
    } else if (e.key === "ArrowUp") {
      e.preventDefault();
      (i > 0 ? all[i - 1] : input).focus();
    } else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      input.focus();
    }
  });
  results.addEventListener("click", (e) => {
    const a = e.target.closest("a.search-link");
    if (a && onOpen && onOpen(new URL(a.href, window.location.href))) e.preventDefault();
  });
}

/** Scroll to the loaded message the #msg-<sequence> fragment names; false when it is not loaded. */
export function messageReveal(container, hash) {
  const m = MESSAGE_FRAGMENT.exec(hash || "");
  if (!m) return false;
  const node = container.querySelector(`[data-sequence="${Number(m[1])}"]`);
  if (!node) return false;
  node.scrollIntoView({ block: "center" });
  node.classList.add("search-target");
  setTimeout(() => node.classList.remove("search-target"), 2500);
  return true;
}
