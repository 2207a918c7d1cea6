// The chat page's files panel (issue #18), imported by app.js and views.js:
//
// - setupFiles(): the "Files" side panel — the workspace's files (GET /api/v1/sessions/<id>/files/),
//   a preview of text (the first 100 KB, as text) and of images (?inline=1), download links, an
//   upload control (PUT /api/v1/sessions/<id>/files/<name> with the CSRF header, progress and the
//   server's errors) and "Download all (ZIP)" (GET /api/v1/sessions/<id>/files.zip). stream.js
//   refreshes it when a turn ends; views.js opens it from the file link on Write/Edit tool cards.
// - workspaceRelative(): the workspace-relative path of a tool's file_path (the sdk backend's
//   Claude Code tools use absolute paths inside the workspace, the api backend's tools either).
//
// Same safety rule as the rest of the page (page.js): file names and contents only ever go in as textContent (a text
// preview is a <pre>'s text, never HTML); images are <img> elements pointing at ?inline=1, which the
// server sends only for PNG, JPEG, GIF and WebP. No innerHTML.

import { apiErrorText } from "./steering.js";

const PREVIEW_BYTES = 100 * 1024;
const PAGE_SIZE = 1000; // the list endpoint's largest page
const IMAGE_NAME = /\.(png|jpe?g|gif|webp)$/i;
// Tool calls whose input names the file they change (Claude Code's tools and the api backend's).
export const FILE_TOOLS = { Write: "file_path", Edit: "file_path", MultiEdit: "file_path", NotebookEdit: "notebook_path" };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

/** A workspace path as a URL path (each component percent-encoded, "/" kept between them). */
export function encodePath(path) {
  return String(path).split("/").map(encodeURIComponent).join("/");
}

export function filesUrl(apiBase, chatId) {
  return `${apiBase}sessions/${encodeURIComponent(chatId)}/files/`;
}

export function fileUrl(apiBase, chatId, path) {
  return filesUrl(apiBase, chatId) + encodePath(path);
}

/**
 * The path a tool call's `file_path` names, relative to the chat's workspace, or null when it is
 * not inside it. The agent's working directory is the workspace: relative paths are relative to
 * it, `~` is its `home/`, and an absolute path runs through the workspace directory, which is
 * named after the chat's id (one of `chatIds`).
 */
export function workspaceRelative(filePath, chatIds) {
  if (typeof filePath !== "string") return null;
  let path = filePath.trim();
  if (!path) return null;
  if (path === "~" || path.startsWith("~/")) path = `home/${path.slice(2)}`;
  else if (path.startsWith("/")) {
    let rest = null;
    for (const id of chatIds || []) {
      if (!id) continue;
      const marker = `/${id}/`;
      const at = path.indexOf(marker);
      if (at >= 0) {
        rest = path.slice(at + marker.length);
        break;
      }
    }
    if (rest === null) return null;
    path = rest;
  }
  const parts = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (!parts.length) return null;
      parts.pop();
      continue;
    }
    parts.push(part);
  }
  return parts.length ? parts.join("/") : null;
}

/** PUT a file's bytes; resolves with the API's answer, rejects with {status, body}. */
function putFile(url, file, csrfToken, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest(); // fetch() cannot report upload progress
    xhr.open("PUT", url);
    xhr.setRequestHeader("X-CSRFToken", csrfToken);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable && e.total) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(Object.assign(new Error(`PUT ${url}: HTTP ${xhr.status}`), { status: xhr.status, body }));
    });
    xhr.addEventListener("error", () => reject(Object.assign(new Error("network error"), { status: 0, body: null })));
    xhr.addEventListener("abort", () => reject(Object.assign(new Error("aborted"), { status: 0, body: null })));
    xhr.send(file);
  });
}

/**
 * The "Files" panel. deps: {api(path, opts), apiBase, chatId() → id or null, chatIds() → the ids
 * the workspace may be named after, ensureChat() → id, csrfToken(), notice(text, opts),
 * uploadMaxBytes}. Returns {open(path?), close(), refresh(), isOpen()}.
 */
export function setupFiles(deps) {
  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $("app"),
    button: $("files-btn"),
    panel: $("files-panel"),
    close: $("files-close"),
    refresh: $("files-refresh"),
    uploadBtn: $("files-upload-btn"),
    input: $("files-upload-input"),
    zip: $("files-zip"),
    hidden: $("files-hidden"),
    status: $("files-status"),
    progress: $("files-progress"),
    error: $("files-error"),
    table: $("files-table"),
    list: $("files-list"),
    empty: $("files-empty"),
    more: $("files-more"),
    preview: $("files-preview"),
    previewTitle: $("files-preview-title"),
    previewNote: $("files-preview-note"),
    previewText: $("files-preview-text"),
    previewImage: $("files-preview-image"),
    previewDownload: $("files-preview-download"),
    previewClose: $("files-preview-close"),
  };
  if (!ui.button || !ui.panel) return null;

  let loadToken = 0;
  let previewToken = 0;
  let previewPath = null;
  let uploading = false;
  let files = [];

  const chatId = () => deps.chatId();

  function setError(text) {
    ui.error.textContent = text || "";
    ui.error.hidden = !text;
  }

  function setStatus(text) {
    ui.status.textContent = text || "";
  }

  function updateZip() {
    const id = chatId();
    ui.zip.hidden = !id;
    if (id) ui.zip.href = `${deps.apiBase}sessions/${encodeURIComponent(id)}/files.zip`;
  }

  function row(file) {
    const tr = el("tr", "file-row");
    tr.dataset.path = file.path;
    const name = el("td", "file-path");
    const open = el("button", "btn link file-open", file.path);
    open.type = "button";
    open.title = `Preview ${file.path}`;
    open.addEventListener("click", () => showPreview(file.path, file.size));
    name.append(open);
    const size = el("td", "file-size", formatBytes(file.size));
    const modified = el("td", "file-modified", formatTime(file.modified));
    modified.title = file.modified;
    const actions = el("td", "file-actions");
    const download = el("a", "btn ghost small file-download", "Download");
    download.href = fileUrl(deps.apiBase, chatId(), file.path);
    download.setAttribute("download", file.path.split("/").pop());
    download.setAttribute("aria-label", `Download ${file.path}`);
    actions.append(download);
    tr.append(name, size, modified, actions);
    return tr;
  }

  function render(truncated, hasMore) {
    ui.list.replaceChildren(...files.map(row));
    ui.table.hidden = files.length === 0;
    ui.empty.hidden = files.length > 0;
    const notes = [];
    if (hasMore) notes.push(`Showing the first ${files.length} files.`);
    if (truncated) notes.push("The workspace holds more entries than the server lists at once: some files are not shown.");
    ui.more.textContent = notes.join(" ");
    ui.more.hidden = notes.length === 0;
  }

  /** Reload the list; `quiet` (a background refresh): leave the status line as it is. */
  async function refresh({ quiet = false } = {}) {
    if (ui.panel.hidden) return;
    updateZip();
    const id = chatId();
    const token = ++loadToken;
    if (!id) {
      files = [];
      render(false, false);
      if (!quiet) setStatus("");
      return;
    }
    const loud = !quiet && !uploading;
    if (loud) setStatus("Loading…");
    const hidden = ui.hidden.checked ? "true" : "false";
    let data;
    try {
      data = await deps.api(`sessions/${encodeURIComponent(id)}/files/?page_size=${PAGE_SIZE}&hidden=${hidden}`);
    } catch (err) {
      if (token !== loadToken) return;
      if (loud) setStatus("");
      if (err.status === 404) {
        // A new chat the server does not know yet: nothing to show.
        files = [];
        render(false, false);
        return;
      }
      setError(apiErrorText(err, "Could not list the files."));
      return;
    }
    if (token !== loadToken) return;
    if (loud) setStatus("");
    files = (data && data.results) || [];
    render(Boolean(data && data.truncated), Boolean(data && data.next));
    ui.panel.dataset.loaded = "true";
  }

  function clearPreview() {
    previewToken += 1;
    previewPath = null;
    ui.preview.hidden = true;
    ui.previewText.textContent = "";
    ui.previewText.hidden = true;
    ui.previewImage.hidden = true;
    ui.previewImage.removeAttribute("src");
    ui.previewNote.textContent = "";
  }

  async function showPreview(path, size) {
    const id = chatId();
    if (!id) return;
    const token = ++previewToken;
    previewPath = path;
    const url = fileUrl(deps.apiBase, id, path);
    ui.preview.hidden = false;
    ui.previewTitle.textContent = path;
    ui.previewDownload.href = url;
    ui.previewDownload.setAttribute("download", path.split("/").pop());
    ui.previewDownload.setAttribute("aria-label", `Download ${path}`);
    ui.previewText.hidden = true;
    ui.previewText.textContent = "";
    ui.previewImage.hidden = true;
    ui.previewImage.removeAttribute("src");
    if (IMAGE_NAME.test(path)) {
      ui.previewNote.textContent = "";
      ui.previewImage.alt = `Preview of ${path}`;
      ui.previewImage.src = `${url}?inline=1`;
      ui.previewImage.hidden = false;
      ui.previewTitle.focus();
      return;
    }
    ui.previewNote.textContent = "Loading…";
    ui.previewTitle.focus();
    let res;
    try {
      res = await fetch(`${url}?inline=1`, { credentials: "same-origin", headers: { Accept: "text/plain, application/json" } });
    } catch (_) {
      if (token === previewToken) ui.previewNote.textContent = "Could not load the file (network error).";
      return;
    }
    if (token !== previewToken) {
      if (res.body) res.body.cancel().catch(() => {});
      return;
    }
    if (!res.ok) {
      let body = null;
      try {
        body = await res.json();
      } catch (_) {
        body = null;
      }
      if (token === previewToken) ui.previewNote.textContent = apiErrorText({ status: res.status, body }, "No preview.");
      return;
    }
    const type = res.headers.get("content-type") || "";
    if (!type.startsWith("text/plain") || !res.body) {
      if (res.body) res.body.cancel().catch(() => {});
      ui.previewNote.textContent = "No preview for this file: download it.";
      return;
    }
    // Read no more than the preview needs, then let the rest go.
    const length = Number(res.headers.get("content-length")) || size || 0;
    const reader = res.body.getReader();
    const chunks = [];
    let total = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      total += value.length;
      if (total >= PREVIEW_BYTES) {
        reader.cancel().catch(() => {});
        break;
      }
    }
    const cut = Math.max(total, length) > PREVIEW_BYTES;
    if (token !== previewToken) return;
    const bytes = new Uint8Array(Math.min(total, PREVIEW_BYTES));
    let offset = 0;
    for (const chunk of chunks) {
      const part = chunk.subarray(0, bytes.length - offset);
      bytes.set(part, offset);
      offset += part.length;
      if (offset >= bytes.length) break;
    }
    ui.previewText.textContent = new TextDecoder("utf-8").decode(bytes); // text, never markup
    ui.previewText.hidden = false;
    ui.previewNote.textContent = cut
      ? `Showing the first ${formatBytes(PREVIEW_BYTES)}${length ? ` of ${formatBytes(length)}` : ""}. Download the file to see all of it.`
      : "";
  }

  async function upload(list) {
    if (!list.length || uploading) return;
    setError("");
    const max = Number(deps.uploadMaxBytes) || 0;
    const tooBig = max ? list.filter((f) => f.size > max) : [];
    const fine = list.filter((f) => !tooBig.includes(f));
    const problems = tooBig.map((f) => `${f.name}: ${formatBytes(f.size)} is over the ${formatBytes(max)} upload limit.`);
    uploading = true;
    ui.uploadBtn.disabled = true;
    ui.panel.setAttribute("aria-busy", "true");
    let done = 0;
    try {
      const id = fine.length ? chatId() || (await deps.ensureChat()) : null;
      for (const file of fine) {
        setStatus(`Uploading ${file.name}…`);
        ui.progress.value = 0;
        ui.progress.hidden = false;
        try {
          await putFile(fileUrl(deps.apiBase, id, file.name), file, deps.csrfToken(), (fraction) => {
            ui.progress.value = Math.round(fraction * 100);
            setStatus(`Uploading ${file.name}… ${Math.round(fraction * 100)}%`);
          });
          done += 1;
        } catch (err) {
          problems.push(`${file.name}: ${apiErrorText(err, "The upload failed.")}`);
        }
      }
    } catch (_) {
      problems.push("Could not create this chat on the server.");
    } finally {
      uploading = false;
      ui.uploadBtn.disabled = false;
      ui.progress.hidden = true;
      ui.panel.removeAttribute("aria-busy");
    }
    setStatus(done ? `Uploaded ${done} file${done === 1 ? "" : "s"}.` : "");
    setError(problems.join(" "));
    await refresh({ quiet: true });
  }

  async function downloadZip(event) {
    // Ask first (and stop reading at once): a refused archive (too large) shows the server's
    // reason here instead of downloading an error as "files.zip".
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    setError("");
    const controller = new AbortController();
    let res;
    try {
      res = await fetch(ui.zip.href, { credentials: "same-origin", signal: controller.signal });
    } catch (_) {
      setError("Could not download the files (network error).");
      return;
    }
    if (!res.ok) {
      let body = null;
      try {
        body = await res.json();
      } catch (_) {
        body = null;
      }
      setError(apiErrorText({ status: res.status, body }, "Could not download the files."));
      return;
    }
    controller.abort();
    const link = el("a");
    link.href = ui.zip.href;
    link.setAttribute("download", "");
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
  }

  function open(path) {
    const wasOpen = !ui.panel.hidden;
    ui.panel.hidden = false;
    ui.app.classList.add("files-open");
    ui.button.setAttribute("aria-expanded", "true");
    if (!wasOpen) setError("");
    const loading = refresh();
    if (path) {
      showPreview(path, 0);
    } else if (!wasOpen) {
      ui.panel.focus();
    }
    return loading;
  }

  function close() {
    if (ui.panel.hidden) return;
    const inside = ui.panel.contains(document.activeElement);
    ui.panel.hidden = true;
    ui.app.classList.remove("files-open");
    ui.button.setAttribute("aria-expanded", "false");
    clearPreview();
    if (inside || document.activeElement === document.body) ui.button.focus();
  }

  ui.button.addEventListener("click", () => (ui.panel.hidden ? open() : close()));
  ui.close.addEventListener("click", close);
  ui.refresh.addEventListener("click", () => {
    setError("");
    refresh();
  });
  ui.hidden.addEventListener("change", () => refresh());
  ui.uploadBtn.addEventListener("click", () => ui.input.click());
  ui.input.addEventListener("change", () => {
    const list = [...ui.input.files];
    ui.input.value = "";
    upload(list);
  });
  ui.zip.addEventListener("click", downloadZip);
  ui.previewClose.addEventListener("click", () => {
    const path = previewPath;
    clearPreview();
    const button = path && [...ui.list.querySelectorAll(".file-row")].find((r) => r.dataset.path === path);
    (button ? button.querySelector(".file-open") : ui.panel).focus();
  });
  ui.previewImage.addEventListener("error", () => {
    if (ui.previewImage.hidden || !ui.previewImage.getAttribute("src")) return;
    ui.previewImage.hidden = true;
    ui.previewNote.textContent = "This image cannot be shown: download it.";
  });
  ui.panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.stopPropagation();
      close();
    }
  });
  updateZip();
  return { open, close, refresh: () => refresh({ quiet: true }), isOpen: () => !ui.panel.hidden };
}
