// The chat page's conversation tools (docs/browser.md "Share, export, import"):
//
// - Share: a dialog that creates a public read-only link to the chat
//   (POST /api/v1/sessions/<id>/shares/ {include_tool_outputs, expires_in_days?}), copies it,
//   lists the chat's live links (GET …/shares/) and revokes one (DELETE …/shares/<share id>/).
// - Export: a menu of two downloads, GET …/export/?format=md and ?format=json (AI SDK
//   UIMessage[]).
// - Import: a file picker in the sidebar; the JSON goes to POST /api/v1/sessions/import/ and
//   the new chat opens.
//
// Same safety rule as the rest of the page: URLs and API text go in as textContent / value.

import { copyText } from "./markdown.js";
import { config, state, el, button, notice, api, apiErrorText } from "./page.js";

const $ = (id) => document.getElementById(id);
const IMPORT_MAX_BYTES = 10 * 1024 * 1024; // the API refuses more (docs/api.md)

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

// --- Share -----------------------------------------------------------------------------------

function shareItem(share, { fresh = false } = {}) {
  const li = el("li", "share-item");
  li.dataset.shareId = share.id;
  if (fresh) li.classList.add("fresh");
  const url = el("input", "share-url");
  url.type = "text";
  url.readOnly = true;
  url.value = share.url;
  url.setAttribute("aria-label", "Share link");
  url.addEventListener("focus", () => url.select());
  const bits = [share.include_tool_outputs ? "with tool outputs" : "without tool outputs"];
  bits.push(share.expires_at ? `expires ${when(share.expires_at)}` : "never expires");
  const row = el("div", "share-item-row");
  const meta = el("span", "share-meta small muted", `Created ${when(share.created_at)} · ${bits.join(" · ")}`);
  const copy = button("Copy link", "small copy-link", async () => {
    const ok = await copyText(share.url);
    copy.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy link"; }, 1500);
  });
  const open = el("a", "btn ghost small", "Open");
  open.href = share.url;
  open.target = "_blank";
  open.rel = "noopener noreferrer";
  const revoke = button("Revoke", "danger small revoke-btn", () => revokeShare(share, li, revoke), "Revoke this link");
  row.append(meta, copy, open, revoke);
  li.append(url, row);
  return li;
}

const share = {
  dialog: null,
  list: null,
  status: null,
  error: null,
};

function shareError(text) {
  share.error.textContent = text || "";
  share.error.hidden = !text;
}

function updateShareStatus() {
  const n = share.list.childElementCount;
  share.status.textContent = n ? "" : "No links yet.";
}

async function loadShares() {
  share.status.textContent = "Loading…";
  try {
    const list = await api(`sessions/${state.chatId}/shares/`);
    share.list.replaceChildren(...(Array.isArray(list) ? list : []).map((s) => shareItem(s)));
    updateShareStatus();
  } catch (err) {
    share.status.textContent = "";
    shareError(apiErrorText(err, "Could not load this chat's links."));
  }
}

async function createShare(e) {
  e.preventDefault();
  const create = $("share-create");
  const days = $("share-expiry").value;
  const body = { include_tool_outputs: $("share-tools").checked };
  if (days) body.expires_in_days = Number(days);
  shareError("");
  create.disabled = true;
  try {
    const created = await api(`sessions/${state.chatId}/shares/`, { method: "POST", body });
    for (const item of share.list.querySelectorAll(".fresh")) item.classList.remove("fresh");
    const item = shareItem(created, { fresh: true });
    share.list.prepend(item);
    updateShareStatus();
    share.status.textContent = "Link created.";
    const input = item.querySelector(".share-url");
    input.focus();
    const copied = await copyText(created.url);
    if (copied) share.status.textContent = "Link created and copied.";
  } catch (err) {
    shareError(apiErrorText(err, "Could not create the link."));
  } finally {
    create.disabled = false;
  }
}

async function revokeShare(item, li, revoke) {
  revoke.disabled = true;
  try {
    await api(`sessions/${state.chatId}/shares/${item.id}/`, { method: "DELETE" });
  } catch (err) {
    if (err.status !== 404) {
      revoke.disabled = false;
      shareError(apiErrorText(err, "Could not revoke the link."));
      return;
    }
  }
  li.remove();
  updateShareStatus();
  share.status.textContent = "Link revoked: it no longer opens the chat.";
  $("share-create").focus();
}

function openShare() {
  if (!state.chatId) {
    notice("Send a message first: an empty chat cannot be shared.");
    return;
  }
  shareError("");
  share.list.replaceChildren();
  share.dialog.showModal();
  loadShares();
}

// --- Export ----------------------------------------------------------------------------------

function exportUrl(format) {
  return `${config.apiBase}sessions/${state.chatId}/export/?format=${format}`;
}

function setupExport() {
  const menu = $("export-menu");
  menu.addEventListener("toggle", () => {
    if (!menu.open) return;
    if (!state.chatId) {
      menu.open = false;
      notice("Send a message first: an empty chat has nothing to export.");
      return;
    }
    $("export-md").href = exportUrl("md");
    $("export-json").href = exportUrl("json");
  });
  for (const link of menu.querySelectorAll("a")) link.addEventListener("click", () => { menu.open = false; });
  document.addEventListener("click", (e) => {
    if (menu.open && !menu.contains(e.target)) menu.open = false;
  });
  menu.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && menu.open) {
      menu.open = false;
      menu.querySelector("summary").focus();
    }
  });
}

// --- Import ----------------------------------------------------------------------------------

async function importFile(file) {
  if (file.size > IMPORT_MAX_BYTES) {
    notice(`${file.name} is larger than ${IMPORT_MAX_BYTES / 1024 / 1024} MiB.`, { kind: "error" });
    return;
  }
  let body;
  try {
    body = JSON.parse(await file.text());
  } catch (_) {
    notice(`${file.name} is not JSON: import a chat exported as JSON.`, { kind: "error", timeout: 10000 });
    return;
  }
  try {
    const created = await api("sessions/import/", { method: "POST", body });
    window.location.assign(`/c/${created.id}/`);
  } catch (err) {
    notice(`Not imported: ${apiErrorText(err, "the server refused the file")}`, { kind: "error", timeout: 10000 });
  }
}

function setupImport() {
  const input = $("import-input");
  $("import-btn").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    input.value = "";
    if (file) importFile(file);
  });
}

export function setupConversation() {
  share.dialog = $("share-dialog");
  share.list = $("share-list");
  share.status = $("share-status");
  share.error = $("share-error");
  $("share-btn").addEventListener("click", openShare);
  $("share-form").addEventListener("submit", createShare);
  $("share-close").addEventListener("click", () => share.dialog.close());
  setupExport();
  setupImport();
}
