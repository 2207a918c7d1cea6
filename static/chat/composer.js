// The chat page's composer (docs/browser.md "Modules"): the message box (Enter sends,
// Shift+Enter adds a line), attachments (picker, drop, paste; checked against the page's
// limits and read as data: URLs), sending a message, and the offline banner's directives.

import { config, state, ui, el, button, uuid, formatBytes, notice, autoGrow, appendMessage, streaming } from "./page.js";
import { pendingApprovalCards, userView } from "./views.js";
import { ensureChat } from "./sessions.js";
import { startSend } from "./stream.js";

/** Whether a message may be sent now (the composer's and an edit's guard); if not, says why. */
export function sendAllowed() {
  if (streaming()) {
    notice("Wait for the current reply to finish, or press Stop.");
    return false;
  }
  const waiting = state.stream && state.stream.watch ? pendingApprovalCards() : [];
  if (waiting.length) {
    // The turn waits for an answer (and holds the chat): a new message would be refused.
    notice(`Answer the request to run ${waiting[0].toolName} first: Approve or Deny.`, { timeout: 8000 });
    waiting[0].approvalBox.focus();
    return false;
  }
  return true;
}

export async function submit() {
  if (!sendAllowed()) return;
  const text = ui.input.value.replace(/\s+$/, "");
  if (!text.trim() && state.pending.length === 0) return;
  const parts = [];
  if (text.trim()) parts.push({ type: "text", text });
  for (const f of state.pending) parts.push({ type: "file", mediaType: f.mediaType, filename: f.name, url: f.url });
  const message = { id: uuid(), role: "user", parts };
  ui.input.value = "";
  autoGrow();
  state.pending = [];
  renderPending();
  await ensureChat();
  const node = userView(message);
  node._message = message;
  state.stick = true;
  appendMessage(node);
  startSend(message);
  state.stream.userNode = node;
}

// --- Attachments ----------------------------------------------------------------------------

const limits = config.limits;
const EXT_TYPES = { md: "text/markdown", txt: "text/plain", csv: "text/csv", json: "application/json", pdf: "application/pdf", py: "text/x-python", js: "text/javascript", log: "text/plain" };

function mediaTypeOf(file) {
  if (file.type) return file.type;
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  return EXT_TYPES[ext] || "";
}

function allowedType(type) {
  if (limits.imageTypes.includes(type)) return true;
  return limits.fileTypes.some((t) => (t.endsWith("/*") ? type.startsWith(t.slice(0, -1)) : t === type));
}

function readDataUrl(file, type) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      let url = String(reader.result);
      // Browsers write an empty or generic type for some files; use the one we checked.
      url = url.replace(/^data:[^;,]*/, `data:${type}`);
      resolve(url);
    };
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  const problems = [];
  for (const file of files) {
    const type = mediaTypeOf(file);
    if (state.pending.length >= limits.maxFiles) {
      problems.push(`${file.name}: at most ${limits.maxFiles} files per message`);
      continue;
    }
    if (!allowedType(type)) {
      problems.push(`${file.name}: type ${type || "unknown"} is not allowed (PNG, JPEG, GIF, WebP images; text, CSV, JSON, PDF)`);
      continue;
    }
    if (file.size > limits.maxBytes) {
      problems.push(`${file.name}: ${formatBytes(file.size)} is over the ${formatBytes(limits.maxBytes)} limit`);
      continue;
    }
    const entry = { name: file.name, mediaType: type, size: file.size, url: null };
    state.pending.push(entry);
    try {
      entry.url = await readDataUrl(file, type);
    } catch (_) {
      state.pending.splice(state.pending.indexOf(entry), 1);
      problems.push(`${file.name}: could not be read`);
    }
  }
  renderPending();
  if (problems.length) notice(`Not attached — ${problems.join("; ")}.`, { kind: "error", timeout: 10000 });
}

export function renderPending() {
  ui.attachments.replaceChildren(
    ...state.pending.map((f, index) => {
      const li = el("li", "pending-file");
      if (f.mediaType.startsWith("image/") && f.url) {
        const img = el("img", "pending-thumb");
        img.src = f.url;
        img.alt = f.name;
        li.append(img);
      } else {
        li.append(el("span", "pending-icon", "FILE"));
      }
      li.append(el("span", "pending-name", `${f.name} (${formatBytes(f.size)})`));
      li.append(button("×", "ghost icon small", () => {
        state.pending.splice(index, 1);
        renderPending();
        ui.input.focus();
      }, `Remove ${f.name}`));
      return li;
    }),
  );
  ui.attachments.hidden = state.pending.length === 0;
}

function setupBanner() {
  if (!config.offline) return;
  ui.banner.hidden = false;
  ui.directives.replaceChildren(
    ...config.directives.map((d) => {
      const li = el("li");
      const b = button(d.example, "ghost small directive", () => {
        ui.input.value = d.example;
        autoGrow();
        ui.input.focus();
      }, `Insert ${d.example}`);
      li.append(b, el("span", "small", ` — ${d.effect}`));
      return li;
    }),
  );
}

/** The box, the form, the attachment picker, drag and drop, paste. */
export function setupComposer() {
  ui.input.addEventListener("input", autoGrow);
  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  ui.attach.addEventListener("click", () => ui.fileInput.click());
  ui.fileInput.addEventListener("change", () => {
    addFiles([...ui.fileInput.files]);
    ui.fileInput.value = "";
  });
  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  ui.main.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth += 1;
    ui.dropOverlay.hidden = false;
  });
  ui.main.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  ui.main.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) ui.dropOverlay.hidden = true;
  });
  ui.main.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    ui.dropOverlay.hidden = true;
    addFiles([...e.dataTransfer.files]);
  });
  ui.input.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (files.length) {
      e.preventDefault();
      addFiles(files);
    }
  });
  setupBanner();
  renderPending();
}
