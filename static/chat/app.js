// The browser chat page: sessions sidebar, conversation, composer, and one websocket per tab
// speaking the AI SDK WebSocketChatTransport protocol (CONTRACT §4).
//
// Safety rule for this file: text from the model or a user is only ever inserted with
// textContent / text nodes (or via markdown.js, which follows the same rule). No innerHTML.
//
// Steering (issue #17): the tool-approval state lives in ToolCard / AssistantView and the
// "Tool approval" section below; steering.js renders the approval previews and runs the
// "Chat settings" dialog (docs/browser.md).

import { renderMarkdown, stableBoundary, safeHttpUrl } from "./markdown.js";
import { approvalPreview, approvalQuestion, setupSettings } from "./steering.js";
import { FILE_TOOLS, fileUrl, setupFiles, workspaceRelative } from "./files.js";
import { messageReveal, setupSearch } from "./search.js";

const config = JSON.parse(document.getElementById("page-config").textContent);
const $ = (id) => document.getElementById(id);

const ui = {
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

const state = {
  chatId: config.chatId,
  sessions: new Map(), // id -> session
  nextSessionsUrl: null,
  stream: null, // the request this tab is following (see startSend / startResume)
  pending: [], // attachments waiting to be sent
  stick: true, // auto-scroll while the user is at the bottom
  lastProbe: 0,
};

// --- Small helpers --------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(label, className, onClick, aria) {
  const b = el("button", `btn ${className || ""}`.trim(), label);
  b.type = "button";
  if (aria) b.setAttribute("aria-label", aria);
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function pretty(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch (_) {
    return String(value);
  }
}

let noticeTimer = null;
function notice(text, { kind = "info", timeout = 6000 } = {}) {
  clearTimeout(noticeTimer);
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
  if (timeout) noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, timeout);
}

function setTitle(title) {
  const t = title || (state.chatId ? "Untitled chat" : "New chat");
  ui.title.textContent = t;
  document.title = `${t} · Copilot`;
}

// --- HTTP API (session cookie + CSRF) -------------------------------------------------------

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : config.csrfToken;
}

async function api(path, { method = "GET", body } = {}) {
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

// --- Scrolling ------------------------------------------------------------------------------

function nearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
}

let lastScrollTop = 0;
function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
  lastScrollTop = ui.scroller.scrollTop;
}

let scrollQueued = false;
function maybeScroll() {
  if (scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    if (state.stick) scrollToBottom();
  });
}

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

function updateEmpty() {
  ui.empty.hidden = ui.messages.childElementCount > 0;
}

// --- Message views --------------------------------------------------------------------------

class TextPart {
  // Streaming text: deltas are appended to one text node (the tail); whenever complete
  // Markdown blocks have accumulated they are rendered once and the tail shrinks. Nothing is
  // re-rendered per delta.
  constructor(parent) {
    this.raw = "";
    this.committed = 0;
    this.root = el("div", "md");
    this.blocks = el("div", "md-blocks");
    this.tail = el("div", "md-tail");
    this.tailNode = document.createTextNode("");
    this.tail.append(this.tailNode);
    this.root.append(this.blocks, this.tail);
    parent.append(this.root);
    this.done = false;
  }

  append(delta) {
    if (this.done || !delta) return;
    this.raw += delta;
    this.tailNode.appendData(delta);
    if (delta.includes("\n")) {
      const pending = this.raw.slice(this.committed);
      const cut = stableBoundary(pending);
      if (cut > 0) {
        this.blocks.append(renderMarkdown(pending.slice(0, cut)));
        this.committed += cut;
        this.tailNode.data = this.raw.slice(this.committed);
      }
    }
  }

  end() {
    if (this.done) return;
    this.done = true;
    this.blocks.append(renderMarkdown(this.raw.slice(this.committed)));
    this.committed = this.raw.length;
    this.tail.remove();
  }

  static rendered(parent, text) {
    const part = new TextPart(parent);
    part.raw = text || "";
    part.end();
    return part;
  }

  toPart() {
    return { type: "text", text: this.raw, state: this.done ? "done" : "streaming" };
  }
}

class ReasoningPart {
  constructor(parent) {
    this.raw = "";
    this.root = el("details", "reasoning");
    const summary = el("summary", "", "Reasoning");
    this.body = el("div", "reasoning-body");
    this.node = document.createTextNode("");
    this.body.append(this.node);
    this.root.append(summary, this.body);
    parent.append(this.root);
  }

  append(delta) {
    this.raw += delta || "";
    this.node.appendData(delta || "");
  }

  end() {
    this.root.classList.add("done");
  }

  toPart() {
    return { type: "reasoning", text: this.raw, state: "done" };
  }
}

const LONG_OUTPUT_CHARS = 600;
const LONG_OUTPUT_LINES = 12;
const reasonDrafts = new Map(); // approval id -> the Deny reason typed so far (kept over re-renders)

/** The name a tool card shows: an MCP tool (`mcp__<server>__<tool>`) as "server · tool". */
function toolLabel(toolName) {
  const mcp = /^mcp__(.+?)__(.+)$/.exec(toolName || "");
  return mcp ? `${mcp[1]} · ${mcp[2]}` : toolName || "tool";
}

class ToolCard {
  constructor(parent, toolCallId, toolName) {
    this.id = toolCallId;
    this.toolName = toolName || "tool";
    this.view = null; // the AssistantView it belongs to
    // The AI SDK tool part this card shows (sent back with an approval answer).
    this.part = { type: `tool-${this.toolName}`, toolCallId, state: "input-streaming", input: undefined };
    this.approval = null; // {id, approved?, reason?}
    this.approvalBox = null;
    this.root = el("details", "tool-card");
    this.root.open = true;
    this.root.dataset.toolCallId = toolCallId || "";
    this.root.dataset.state = "input-streaming";
    const summary = el("summary", "tool-summary");
    this.icon = el("span", "tool-icon", "⚙");
    this.icon.setAttribute("aria-hidden", "true");
    this.name = el("span", "tool-name", toolLabel(this.toolName));
    this.name.title = this.toolName;
    this.status = el("span", "tool-status", "running…");
    summary.append(this.icon, this.name, this.status);
    this.inputPre = el("pre", "tool-input");
    this.inputNode = document.createTextNode("");
    this.inputPre.append(this.inputNode);
    this.inputLabel = el("div", "tool-label", "Input");
    this.outputLabel = el("div", "tool-label", "Output");
    this.outputPre = el("pre", "tool-output");
    this.outputLabel.hidden = true;
    this.outputPre.hidden = true;
    this.root.append(summary, this.inputLabel, this.inputPre, this.outputLabel, this.outputPre);
    parent.append(this.root);
  }

  setState(value) {
    this.root.dataset.state = value;
    this.part.state = value;
  }

  appendInput(delta) {
    this.inputNode.appendData(delta || "");
  }

  setInput(input) {
    this.inputNode.data = pretty(input);
    this.part.input = input;
    this.setState("input-available");
    const cmd = input && typeof input === "object" ? input.command || input.file_path || input.pattern : null;
    if (cmd) this.name.title = String(cmd);
    this.showFileLink(input);
  }

  /** Write, Edit, MultiEdit, NotebookEdit: a link to the file in the chat's workspace (files.js). */
  showFileLink(input) {
    const key = FILE_TOOLS[this.toolName];
    if (!key || this.fileLine || !state.chatId || !input || typeof input !== "object") return;
    const path = workspaceRelative(input[key], workspaceIds());
    if (!path) return;
    const link = el("a", "tool-file-link", path);
    link.href = fileUrl(config.apiBase, state.chatId, path);
    link.title = `Show ${path} in the files panel`;
    link.addEventListener("click", (e) => {
      if (!filesPanel || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      filesPanel.open(path);
    });
    this.fileLine = el("p", "tool-file", "File: ");
    this.fileLine.append(link);
    this.root.querySelector(".tool-summary").after(this.fileLine);
  }

  setOutput(output) {
    this.setState("output-available");
    this.part.output = output;
    this.status.textContent = "done";
    this.showOutput(pretty(output));
  }

  setError(errorText) {
    this.setState("output-error");
    this.part.errorText = errorText || "";
    this.status.textContent = "error";
    this.outputLabel.textContent = "Error";
    this.showOutput(errorText || "The tool failed.");
  }

  showOutput(text) {
    this.outputLabel.hidden = false;
    this.outputPre.hidden = false;
    this.outputPre.textContent = text;
    const long = text.length > LONG_OUTPUT_CHARS || text.split("\n").length > LONG_OUTPUT_LINES;
    if (long) {
      this.root.open = false;
      this.status.textContent += ` · ${text.split("\n").length} lines (click to expand)`;
    }
  }

  // --- Tool approval (CONTRACT §6): approval-requested → approval-responded → output-* ------

  get awaitingAnswer() {
    return this.root.dataset.state === "approval-requested";
  }

  /** The server asks before running this call: show what it would do, Approve and Deny. */
  requestApproval(approvalId) {
    this.approval = { id: approvalId };
    this.part.approval = { id: approvalId };
    this.setState("approval-requested");
    this.root.open = true;
    this.status.textContent = "waiting for your approval";
    this.showApprovalBox();
  }

  showApprovalBox() {
    if (this.approvalBox) this.approvalBox.remove();
    const box = el("section", "approval");
    const key = String(this.approval.id || this.id).replace(/[^\w-]/g, "_");
    const titleId = `approval-title-${key}`;
    box.setAttribute("aria-labelledby", titleId);
    box.tabIndex = -1; // focus moves here when the request appears
    const title = el("p", "approval-title");
    title.id = titleId;
    title.append(el("strong", "", `Approval needed: ${toolLabel(this.toolName)}`), el("span", "", ` — ${approvalQuestion(this.toolName)}`));
    this.approvalTitle = title;
    box.append(title, ...approvalPreview(this.toolName, this.part.input));
    // The raw JSON input stays for other tools; these have a readable preview instead.
    const previewed = ["Bash", "Write", "Edit", "MultiEdit", "ExitPlanMode"].includes(this.toolName);
    this.inputLabel.hidden = previewed;
    this.inputPre.hidden = previewed;

    this.controls = el("div", "approval-controls");
    const reasonId = `approval-reason-${key}`;
    const reasonLabel = el("label", "small", "Reason for denying (optional)");
    reasonLabel.htmlFor = reasonId;
    this.reason = el("input", "approval-reason");
    this.reason.type = "text";
    this.reason.id = reasonId;
    this.reason.maxLength = 2000;
    this.reason.autocomplete = "off";
    this.reason.value = reasonDrafts.get(this.approval.id) || "";
    this.reason.addEventListener("input", () => reasonDrafts.set(this.approval.id, this.reason.value));
    this.reason.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.isComposing) {
        e.preventDefault();
        this.answer(false);
      }
    });
    this.approveBtn = button("Approve", "primary approve-btn", () => this.answer(true));
    this.denyBtn = button("Deny", "danger deny-btn", () => this.answer(false));
    const buttons = el("div", "approval-buttons");
    buttons.append(this.approveBtn, this.denyBtn);
    const reasonRow = el("div", "approval-reason-row");
    reasonRow.append(reasonLabel, this.reason);
    this.controls.append(reasonRow, buttons);
    this.result = el("p", "approval-result");
    this.result.hidden = true;
    box.append(this.controls, this.result);
    this.approvalBox = box;
    this.inputPre.after(box);
  }

  answer(approved) {
    if (!this.awaitingAnswer) return;
    const reason = approved ? "" : this.reason.value.trim();
    reasonDrafts.delete(this.approval.id);
    this.showAnswered(approved, reason);
    answerApproval(this);
  }

  /** The answer is known (given here, in another tab, or the request expired). */
  showAnswered(approved, reason) {
    if (!this.approval) this.approval = { id: "" };
    this.approval = { id: this.approval.id, approved: Boolean(approved) };
    if (reason) this.approval.reason = reason;
    this.part.approval = { ...this.approval };
    if (!this.approvalBox) this.showApprovalBox();
    this.controls.hidden = true;
    this.result.hidden = false;
    this.approvalTitle.firstChild.textContent = `Approval asked: ${toolLabel(this.toolName)}`;
    this.setState("approval-responded");
    const expired = !approved && /expired/i.test(reason || "");
    this.root.dataset.approval = approved ? "approved" : expired ? "expired" : "denied";
    if (approved) {
      this.result.textContent = "Approved.";
      this.status.textContent = "approved · running…";
    } else {
      this.result.replaceChildren(el("strong", "", expired ? "Expired" : "Denied"));
      if (reason) this.result.append(el("span", "approval-reason-text", ` — ${reason}`));
      this.status.textContent = expired ? "expired · not run" : "denied · not run";
    }
  }

  /** The request cannot be answered any more (its turn is over). */
  showGone() {
    if (!this.awaitingAnswer) return;
    this.controls.hidden = true;
    this.result.hidden = false;
    this.result.textContent = "Not answered: this reply is over, the call was not run.";
    this.status.textContent = "not run";
    this.setState("interrupted");
  }

  /** tool-output-denied: the call was not run. */
  setDenied() {
    if (this.root.dataset.approval !== "denied" && this.root.dataset.approval !== "expired") {
      this.showAnswered(false, this.approval && this.approval.reason);
    }
    this.setState("output-denied");
  }

  toPart() {
    const part = { ...this.part };
    if (part.approval) part.approval = { ...part.approval };
    if (part.input === undefined) part.input = null;
    return part;
  }

  static fromPart(parent, part) {
    const name = part.toolName || (part.type || "").replace(/^tool-/, "") || "tool";
    const card = new ToolCard(parent, part.toolCallId, name);
    card.part.type = part.type || card.part.type;
    if (part.input !== undefined) card.setInput(part.input);
    const approval = part.approval && typeof part.approval === "object" ? part.approval : null;
    if (approval) card.approval = { id: approval.id };
    if (part.state === "approval-requested" && approval) card.requestApproval(approval.id);
    else if (part.state === "approval-responded" && approval) card.showAnswered(approval.approved !== false, approval.reason);
    else if (part.state === "output-denied") {
      card.showAnswered(false, approval && approval.reason);
      card.setDenied();
    } else if (part.state === "output-error" || part.errorText) card.setError(part.errorText);
    else if (part.state === "output-available" || part.output !== undefined) card.setOutput(part.output);
    else {
      card.status.textContent = "interrupted";
      card.root.dataset.state = "interrupted";
    }
    return card;
  }
}

function fileView(part) {
  const media = part.mediaType || "";
  const url = typeof part.url === "string" ? part.url : "";
  const isImage = media.startsWith("image/") &&
    (url.startsWith("data:image/") || safeHttpUrl(url) || url.startsWith("/"));
  if (isImage) {
    const fig = el("figure", "attachment-thumb");
    const img = el("img");
    img.src = url;
    img.alt = part.filename || "attached image";
    img.loading = "lazy";
    fig.append(img);
    if (part.filename) fig.append(el("figcaption", "small muted", part.filename));
    return fig;
  }
  return el("div", "file-chip", `File: ${part.filename || media || "file"}`);
}

function usageText(u) {
  if (!u) return "";
  const fmt = (n) => Number(n || 0).toLocaleString("en-US");
  const bits = [`${fmt(u.inputTokens)} in`, `${fmt(u.outputTokens)} out`];
  if (u.cacheReadTokens) bits.push(`${fmt(u.cacheReadTokens)} cached`);
  if (u.costUsd !== undefined && u.costUsd !== null) bits.push(`$${Number(u.costUsd).toFixed(4)}`);
  if (u.model) bits.push(u.model);
  return bits.join(" · ");
}

function normaliseUsage(u) {
  if (!u) return null;
  return {
    inputTokens: u.inputTokens ?? u.input_tokens,
    outputTokens: u.outputTokens ?? u.output_tokens,
    cacheReadTokens: u.cacheReadTokens ?? u.cache_read_tokens,
    costUsd: u.costUsd ?? u.cost_usd,
    model: u.model,
  };
}

class AssistantView {
  constructor() {
    this.root = el("article", "msg assistant");
    this.root.setAttribute("aria-label", "Assistant message");
    const head = el("div", "msg-head", "Copilot");
    this.body = el("div", "msg-body");
    this.statusLine = el("div", "msg-status small muted");
    this.statusLine.hidden = true;
    this.footer = el("div", "msg-footer small muted");
    this.usage = el("span", "usage");
    this.actions = el("span", "msg-actions");
    this.footer.append(this.usage, this.actions);
    this.root.append(head, this.body, this.statusLine, this.footer);
    this.text = new Map();
    this.reasoning = new Map();
    this.tools = new Map();
    // The message's parts in order (each has toPart()): an approval answer sends them back.
    this.parts = [];
    this.root._view = this;
  }

  textPart(id) {
    let part = this.text.get(id);
    if (!part) {
      part = new TextPart(this.body);
      this.text.set(id, part);
      this.parts.push(part);
    }
    return part;
  }

  reasoningPart(id) {
    let part = this.reasoning.get(id);
    if (!part) {
      part = new ReasoningPart(this.body);
      this.reasoning.set(id, part);
      this.parts.push(part);
    }
    return part;
  }

  tool(id, name) {
    let card = this.tools.get(id);
    if (!card) {
      card = new ToolCard(this.body, id, name);
      this.addTool(card);
    }
    return card;
  }

  addTool(card) {
    card.view = this;
    this.tools.set(card.id, card);
    this.parts.push(card);
  }

  /** The card a tool-approval-response is about (by approval id, else by tool call id). */
  toolByApproval(approvalId, toolCallId) {
    for (const card of this.tools.values()) if (card.approval && card.approval.id === approvalId) return card;
    return toolCallId ? this.tools.get(toolCallId) : null;
  }

  pendingApprovals() {
    return [...this.tools.values()].filter((card) => card.awaitingAnswer);
  }

  /** The message as the AI SDK has it (UIMessage): what an approval answer sends back. */
  toMessage() {
    return { id: this.root.dataset.messageId || "", role: "assistant", parts: this.parts.map((p) => p.toPart()) };
  }

  setStatus(text) {
    this.statusLine.textContent = text || "";
    this.statusLine.hidden = !text;
  }

  setUsage(u) {
    const text = usageText(normaliseUsage(u));
    this.usage.textContent = text;
    if (text) this.usage.title = "Usage of this turn";
  }

  marker(kind, text, { retry = false } = {}) {
    const box = markerView(kind, text, { retry });
    this.body.append(box);
  }

  apply(chunk) {
    const t = chunk.type;
    switch (t) {
      case "start":
        if (chunk.messageId) this.root.dataset.messageId = chunk.messageId;
        break;
      case "text-start":
        this.textPart(chunk.id);
        break;
      case "text-delta":
        this.textPart(chunk.id).append(chunk.delta);
        this.setStatus("");
        break;
      case "text-end":
        this.textPart(chunk.id).end();
        break;
      case "reasoning-start":
        this.reasoningPart(chunk.id);
        break;
      case "reasoning-delta":
        this.reasoningPart(chunk.id).append(chunk.delta);
        break;
      case "reasoning-end":
        this.reasoningPart(chunk.id).end();
        break;
      case "tool-input-start":
        this.tool(chunk.toolCallId, chunk.toolName);
        break;
      case "tool-input-delta":
        this.tool(chunk.toolCallId).appendInput(chunk.inputTextDelta);
        break;
      case "tool-input-available":
        this.tool(chunk.toolCallId, chunk.toolName).setInput(chunk.input);
        break;
      case "tool-output-available":
        this.tool(chunk.toolCallId).setOutput(chunk.output);
        break;
      case "tool-output-error":
        this.tool(chunk.toolCallId).setError(chunk.errorText);
        break;
      case "tool-approval-request":
        this.tool(chunk.toolCallId).requestApproval(chunk.approvalId);
        break;
      case "tool-approval-response": {
        // Answered here, in another tab, or expired: the question goes away.
        const card = this.toolByApproval(chunk.approvalId, chunk.toolCallId);
        if (card) card.showAnswered(Boolean(chunk.approved), chunk.reason || "");
        break;
      }
      case "tool-output-denied":
        this.tool(chunk.toolCallId).setDenied();
        break;
      case "start-step":
        this.parts.push(constantPart({ type: "step-start" }));
        break;
      case "file":
        this.body.append(fileView(chunk));
        this.parts.push(constantPart({ type: "file", mediaType: chunk.mediaType, url: chunk.url }));
        break;
      case "finish":
        this.finalize();
        if (chunk.messageMetadata && chunk.messageMetadata.stopped) this.marker("stopped", "Stopped.");
        break;
      case "abort":
        this.finalize();
        this.marker("stopped", "Stopped.");
        break;
      case "error":
        this.finalize();
        this.marker("retryable_error", chunk.errorText || "Something went wrong.", { retry: true });
        break;
      case "data-usage":
        this.setUsage(chunk.data);
        break;
      case "data-status":
        this.setStatus(chunk.data && chunk.data.message);
        break;
      case "data-session":
        onSessionInfo(chunk.data || {});
        break;
      default:
        break; // start-step, finish-step, data-heartbeat, unknown data-* parts
    }
  }

  finalize() {
    for (const part of this.text.values()) part.end();
    for (const part of this.reasoning.values()) part.end();
    for (const card of this.tools.values()) {
      // A call waiting for the user's answer is not interrupted: the turn waits on the server.
      const st = card.root.dataset.state;
      if (st.startsWith("input") || st === "approval-responded") {
        card.status.textContent = "interrupted";
        card.root.dataset.state = "interrupted";
      }
    }
    this.setStatus("");
    this.root.classList.remove("streaming");
  }

  static fromMessage(msg) {
    const view = new AssistantView();
    view.root.dataset.sequence = msg.sequence;
    const meta = msg.metadata || {};
    const mid = meta.messageId || meta.message_id || meta.client_message_id;
    if (mid) view.root.dataset.messageId = mid;
    const parts = Array.isArray(msg.parts) && msg.parts.length ? msg.parts : [{ type: "text", text: msg.text || "" }];
    for (const part of parts) {
      const type = part.type || "";
      if (type === "text") view.parts.push(TextPart.rendered(view.body, part.text));
      else if (type === "reasoning") {
        const r = new ReasoningPart(view.body);
        r.append(part.text);
        r.end();
        view.parts.push(r);
      } else if (type.startsWith("tool-") || type === "dynamic-tool") view.addTool(ToolCard.fromPart(view.body, part));
      else {
        if (type === "file") view.body.append(fileView(part));
        view.parts.push(constantPart(part));
      }
    }
    view.setUsage(meta.usage); // a stopped turn also has its own "stopped" marker message
    return view;
  }
}

function constantPart(part) {
  return { toPart: () => ({ ...part }) };
}

function markerView(kind, text, { retry = false } = {}) {
  const box = el("div", `marker marker-${kind}`);
  box.dataset.kind = kind;
  const isError = kind === "error" || kind === "retryable_error";
  if (isError) box.setAttribute("role", "alert");
  const label = { error: "Error", retryable_error: "Error", stopped: "Stopped", system: "Note" }[kind] || "Note";
  box.append(el("strong", "", `${label}: `), el("span", "marker-text", text));
  if (retry) {
    box.append(button("Retry", "small retry-btn", () => retryLast(box)));
  }
  return box;
}

function userView(msg) {
  const root = el("article", "msg user");
  root.setAttribute("aria-label", "Your message");
  if (msg.sequence !== undefined) root.dataset.sequence = msg.sequence;
  root.append(el("div", "msg-head", "You"));
  const body = el("div", "msg-body");
  const parts = Array.isArray(msg.parts) && msg.parts.length ? msg.parts : [{ type: "text", text: msg.text || "" }];
  const files = el("div", "msg-files");
  for (const part of parts) {
    if (part.type === "text") body.append(el("div", "user-text", part.text));
    else if (part.type === "file") files.append(fileView(part));
  }
  if (files.childElementCount) body.append(files);
  root.append(body);
  root._message = { id: msg.id || (msg.metadata && msg.metadata.client_message_id) || uuid(), role: "user", parts };
  return root;
}

function appendMessage(node) {
  ui.messages.append(node);
  updateEmpty();
  maybeScroll();
}

function renderHistoryMessage(msg) {
  const kind = msg.kind || "normal";
  if (kind !== "normal") {
    const box = markerView(kind, msg.text || (kind === "stopped" ? "Stopped." : ""), {
      retry: kind === "retryable_error",
    });
    box.dataset.sequence = msg.sequence;
    return box;
  }
  if (msg.role === "user") return userView(msg);
  if (msg.role === "assistant") return AssistantView.fromMessage(msg).root;
  return markerView("system", msg.text || "");
}

/** Remove what follows the last user message (a partial or replaced assistant answer). */
function clearAfterLastUser() {
  const nodes = [...ui.messages.children];
  let i = nodes.length - 1;
  while (i >= 0 && !nodes[i].classList.contains("user")) i -= 1;
  for (const node of nodes.slice(i + 1)) node.remove();
}

function lastUserNode() {
  const users = ui.messages.querySelectorAll(".msg.user");
  return users.length ? users[users.length - 1] : null;
}

function updateActions() {
  for (const b of ui.messages.querySelectorAll(".regen-btn")) b.remove();
  const busy = Boolean(state.stream && state.stream.active) || pendingApprovalCards().length > 0;
  for (const b of ui.messages.querySelectorAll(".retry-btn")) b.disabled = busy;
  const last = ui.messages.lastElementChild;
  const failed = last && last.querySelector(".marker-error, .marker-retryable_error");
  if (!busy && last && last.classList.contains("assistant") && last._view && !failed) {
    last._view.actions.append(button("Regenerate", "ghost small regen-btn", () => regenerate(), "Regenerate the last answer"));
  }
}

// --- History --------------------------------------------------------------------------------

const HISTORY_PAGE = 200; // the API's maximum
const NEWEST = 2147483647; // "before" this: the newest page

function messagesOf(data) {
  const list = Array.isArray(data) ? data : data.results || [];
  return [...list].sort((a, b) => a.sequence - b.sequence);
}

async function loadHistory() {
  if (!state.chatId) return;
  let data;
  try {
    data = await api(`sessions/${state.chatId}/messages/?limit=${HISTORY_PAGE}&before=${NEWEST}`);
  } catch (err) {
    notice(`Could not load this chat (${err.status ? `HTTP ${err.status}` : "network error"}).`, { kind: "error" });
    return;
  }
  const list = messagesOf(data);
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

function renderSessions() {
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

async function loadSessions(url) {
  let data;
  try {
    data = await api(url || "sessions/?page_size=50");
  } catch (_) {
    return;
  }
  const list = Array.isArray(data) ? data : data.results || [];
  if (!url) state.sessions.clear();
  for (const s of list) state.sessions.set(String(s.id), { ...s, id: String(s.id) });
  state.nextSessionsUrl = Array.isArray(data) ? null : data.next || null;
  renderSessions();
  const current = state.chatId && state.sessions.get(state.chatId);
  if (current) setTitle(current.title);
}

ui.sessionMore.addEventListener("click", () => loadSessions(state.nextSessionsUrl));

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

function onSessionInfo(data) {
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

async function ensureChat() {
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

// --- WebSocket ------------------------------------------------------------------------------

class ChatSocket {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.queue = [];
    this.attempts = 0;
    this.opened = false;
    this.timer = null;
  }

  connect() {
    clearTimeout(this.timer);
    setConn(this.opened ? "Reconnecting…" : "Connecting…", "busy");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("open", () => {
      const reconnect = this.opened;
      this.opened = true;
      this.attempts = 0;
      setConn("", "ok");
      onSocketOpen(reconnect);
      const queued = this.queue.splice(0);
      for (const frame of queued) ws.send(JSON.stringify(frame));
    });
    ws.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (event.code === 4401) {
        // Signed out (or the session expired): reconnecting cannot help.
        setConn("Signed out", "down");
        notice("You are signed out. Reload the page to sign in again.", { kind: "error", timeout: 0 });
        return;
      }
      const delay = Math.min(10000, 500 * 2 ** this.attempts) * (0.75 + Math.random() * 0.5);
      this.attempts += 1;
      if (this.attempts >= 2) {
        // A refused handshake looks like a network error: check whether we are signed out.
        api("sessions/?page_size=1").catch((err) => {
          if (err.status === 401 || err.status === 403) {
            clearTimeout(this.timer);
            setConn("Signed out", "down");
            notice("You are signed out. Reload the page to sign in again.", { kind: "error", timeout: 0 });
          }
        });
      }
      setConn(`Connection lost — reconnecting in ${Math.ceil(delay / 1000)} s…`, "down");
      this.timer = setTimeout(() => this.connect(), delay);
    });
  }

  get isOpen() {
    return this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (this.isOpen) this.ws.send(JSON.stringify(frame));
    else this.queue.push(frame);
  }
}

function setConn(text, kind) {
  ui.conn.textContent = text;
  ui.conn.dataset.kind = kind;
}

const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${config.wsPath}`;
const socket = new ChatSocket(wsUrl);
window.__chat = { state, socket }; // for debugging and the browser tests

// A stream is this tab's view of one request:
//   {requestId, kind: "send"|"resume", chatId, lastSequence, view, active, fresh, needsHistory,
//    buffer, message (what was sent), trigger}
function newStream(fields) {
  return { requestId: uuid(), lastSequence: -1, view: null, active: false, buffer: [], ...fields };
}

function startSend(message, { trigger = "submit-message", messageId } = {}) {
  const stream = newStream({ kind: "send", chatId: state.chatId, message, trigger, active: true });
  state.stream = stream;
  setBusy(true);
  const frame = {
    type: "send",
    requestId: stream.requestId,
    id: state.chatId,
    trigger,
    messageId,
    messages: [message],
    headers: {},
    body: {},
    metadata: {},
  };
  socket.send(frame);
}

/**
 * Follow the chat's active turn, if any. fresh: replay from its first chunk (the page shows
 * the persisted history; whatever follows the last user message is replaced by the replay).
 * needsHistory: reload the history first (this tab may not have the turn's user message).
 */
function startResume({ fresh = true, needsHistory = false, continueFrom = null, reloadIfIdle = false } = {}) {
  if (!state.chatId) return;
  const stream = continueFrom
    ? { ...continueFrom, requestId: uuid(), kind: "resume", fresh: false, needsHistory: false, reconnect: true }
    : newStream({ kind: "resume", chatId: state.chatId, fresh, needsHistory, reconnect: reloadIfIdle });
  state.stream = stream;
  const frame = { type: "resume", requestId: stream.requestId, id: state.chatId };
  if (stream.lastSequence >= 0) frame.lastSequence = stream.lastSequence;
  socket.send(frame);
}

function onSocketOpen(reconnect) {
  const s = state.stream;
  if (reconnect && s && s.chatId === state.chatId && (s.active || s.kind === "send" || s.watch)) {
    // Dropped mid-turn: pick the same turn up after the last chunk we showed.
    startResume({ continueFrom: s });
  }
}

function onFrame(frame) {
  const s = state.stream;
  if (!s || frame.requestId !== s.requestId) return; // a request this tab gave up on
  switch (frame.type) {
    case "start":
      if (!s.watch) markActive(s); // a watch only becomes a running reply with its first chunk
      break;
    case "chunk":
      // The turn's own sequence: `turnSequence` where the request numbers its frames from 0
      // but continues a turn (the answer to a tool approval request), else `sequence`.
      const seq = typeof frame.turnSequence === "number" ? frame.turnSequence : frame.sequence;
      if (typeof seq === "number") {
        if (seq <= s.lastSequence) return; // already shown (replay overlap)
        s.lastSequence = seq;
      }
      markActive(s);
      onChunk(s, frame.chunk || {});
      break;
    case "end":
      endStream(s);
      break;
    case "error":
      onErrorFrame(s, frame.errorText || "", frame.code || "");
      break;
    case "no-active":
      onNoActive(s);
      break;
    default:
      break;
  }
}

function markActive(s) {
  if (s.active) return;
  s.active = true;
  setBusy(true);
}

function onChunk(s, chunk) {
  if (s.needsHistory) {
    s.buffer.push(chunk);
    if (!s.loadingHistory) {
      s.loadingHistory = true;
      loadHistory().then(() => {
        s.needsHistory = false;
        const buffered = s.buffer.splice(0);
        for (const c of buffered) if (state.stream === s) applyChunk(s, c);
      });
    }
    return;
  }
  applyChunk(s, chunk);
}

function applyChunk(s, chunk) {
  if (!s.view) {
    if (s.fresh) clearAfterLastUser();
    s.view = new AssistantView();
    s.view.root.classList.add("streaming");
    appendMessage(s.view.root);
    updateActions();
  }
  s.view.root.classList.add("streaming"); // an approval answer continues the same message
  s.view.apply(chunk);
  maybeScroll();
}

function endStream(s) {
  if (s.view) s.view.finalize();
  if (state.stream === s) state.stream = null;
  setBusy(false);
  updateActions();
  maybeScroll();
  if (filesPanel) filesPanel.refresh(); // the turn may have changed the workspace
  // The turn waits on the server for the user's answer to a tool approval request.
  const waiting = s.view && s.view.root.isConnected ? s.view.pendingApprovals() : [];
  if (waiting.length) {
    promptApproval(waiting);
    if (!s.watch || s.lastSequence > s.startSequence) startWatch(s.view, s.lastSequence);
    return;
  }
  announce("Reply finished.");
  // Titles and ordering; a title generated after the turn ended arrives a moment later.
  loadSessions().then(() => {
    const current = state.sessions.get(state.chatId);
    if (current && !current.title) setTimeout(() => loadSessions(), 1500);
  });
}

function onErrorFrame(s, errorText, code = "") {
  if (state.stream === s) state.stream = null;
  setBusy(false);
  if (s.kind === "resume") {
    updateActions();
    return; // nothing to follow (for instance a chat that has no messages yet)
  }
  if (s.approval) {
    // The answer was refused (the request expired, or another tab answered it first): say so,
    // then show the chat as it is now — the turn's replay, or the saved history once it is over.
    if (s.view) s.view.finalize();
    notice(errorText || "Your answer could not be sent.", { kind: "error", timeout: 12000 });
    startResume({ fresh: true, needsHistory: true, reloadIfIdle: true });
    return;
  }
  if (code === "too_many_turns" || /too_many_turns/.test(errorText)) {
    // A concurrency cap (docs/security.md): nothing was stored. Give the text back and say why.
    const node = s.userNode;
    if (node) node.remove();
    if (s.message && !ui.input.value.trim()) {
      ui.input.value = s.message.parts.filter((p) => p.type === "text").map((p) => p.text).join("\n");
      autoGrow();
    }
    updateActions();
    notice(errorText || "Too many replies are being generated at once. Wait for one to finish, then send again.", { kind: "error", timeout: 10000 });
    return;
  }
  if (code === "stream_already_active" || /already|stream_already_active/i.test(errorText)) {
    // Another tab (or client) is running a turn here: give the text back and follow that turn.
    const node = s.userNode;
    if (node) node.remove();
    if (s.message && !ui.input.value.trim()) {
      ui.input.value = s.message.parts.filter((p) => p.type === "text").map((p) => p.text).join("\n");
      autoGrow();
    }
    notice("A reply is already being written in this chat (maybe in another tab). It is shown here; send again when it finishes.", { kind: "info", timeout: 8000 });
    startResume({ fresh: true, needsHistory: true });
    return;
  }
  if (s.view) s.view.finalize();
  const box = markerView("error", errorText || "The request failed.", { retry: true });
  box._resend = s.trigger === "submit-message" && !s.active ? s.message : null;
  appendMessage(box);
  updateActions();
}

async function onNoActive(s) {
  if (state.stream === s) state.stream = null;
  setBusy(false);
  if (s.reconnect) await loadHistory(); // the turn ended while we were away: show its final state
  // No turn runs, so no approval request shown can still be answered (its turn is over).
  if (!state.stream) for (const card of pendingApprovalCards()) card.showGone();
  updateActions();
}

function setBusy(busy) {
  const active = document.activeElement;
  const refocus = (busy && active === ui.send) || (!busy && active === ui.stop);
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.stop.disabled = false;
  ui.stop.textContent = "Stop";
  ui.app.classList.toggle("busy", busy);
  if (refocus) ui.input.focus(); // the focused button just disappeared
  updateActions();
}

const liveRegion = el("div", "sr-only");
liveRegion.setAttribute("aria-live", "polite");
document.body.append(liveRegion);
function announce(text) {
  liveRegion.textContent = text;
}

// --- Actions --------------------------------------------------------------------------------

function textOf(message) {
  return (message.parts || []).filter((p) => p.type === "text").map((p) => p.text).join("\n");
}

async function submit() {
  if (state.stream && state.stream.active) {
    notice("Wait for the current reply to finish, or press Stop.");
    return;
  }
  const waiting = state.stream && state.stream.watch ? pendingApprovalCards() : [];
  if (waiting.length) {
    // The turn waits for an answer (and holds the chat): a new message would be refused.
    notice(`Answer the request to run ${waiting[0].toolName} first: Approve or Deny.`, { timeout: 8000 });
    waiting[0].approvalBox.focus();
    return;
  }
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

function lastUserMessage() {
  const node = lastUserNode();
  return node ? node._message : null;
}

function regenerate() {
  if (state.stream && state.stream.active) return;
  const message = lastUserMessage();
  if (!message) return;
  const last = ui.messages.lastElementChild;
  const messageId = last && last.dataset.messageId;
  clearAfterLastUser();
  startSend(message, { trigger: "regenerate-message", messageId });
}

function retryLast(box) {
  if (state.stream && state.stream.active) return;
  if (box && box._resend) {
    // The server refused the message before running it: send it again as it was.
    box.remove();
    startSend(box._resend);
    return;
  }
  const message = lastUserMessage();
  if (!message) return;
  clearAfterLastUser();
  startSend(message, { trigger: "regenerate-message" });
}

// --- Tool approval (CONTRACT §6) -------------------------------------------------------------
// The server sends tool-approval-request and ends the request's stream while the turn waits
// (holding the chat). The card shows Approve/Deny; the answer goes out the way the AI SDK's
// Chat.addToolApprovalResponse + lastAssistantMessageIsCompleteWithApprovalResponses send it: a
// submit-message whose last message is the assistant message with its tool parts
// "approval-responded". Its stream continues the same turn and the same assistant message.
// Meanwhile this tab watches the turn (a resume after the request's chunk, which the server
// holds open), so an answer given in another tab shows here too.

const prompted = new Set(); // approval ids already announced

function pendingApprovalCards() {
  const cards = [];
  for (const node of ui.messages.querySelectorAll(".msg.assistant")) {
    if (node._view) cards.push(...node._view.pendingApprovals());
  }
  return cards;
}

/** Announce new approval requests and move the focus to the first one. */
function promptApproval(cards) {
  const fresh = cards.filter((card) => !prompted.has(card.approval.id));
  const active = document.activeElement;
  const focusLost = !active || active === document.body || !active.isConnected;
  if (!fresh.length && !focusLost) return;
  for (const card of fresh) prompted.add(card.approval.id);
  if (fresh.length) announce(`Approval needed: ${[...new Set(fresh.map((c) => c.toolName))].join(", ")}`);
  // Not while the user is typing a message: the announcement is enough then.
  const typing = active === ui.input && ui.input.value.trim() !== "";
  const target = (fresh[0] || cards[0]).approvalBox;
  if (!typing && target) target.focus();
}

/** Follow the waiting turn from after `lastSequence`: live once someone answers. */
function startWatch(view, lastSequence) {
  if (state.stream || !state.chatId) return;
  const stream = newStream({
    kind: "resume",
    chatId: state.chatId,
    view,
    fresh: false,
    lastSequence,
    startSequence: lastSequence,
    watch: true,
    reconnect: true, // no turn any more: show the saved history
  });
  state.stream = stream;
  socket.send({ type: "resume", requestId: stream.requestId, id: state.chatId, lastSequence });
}

/** A card was answered here: send the answers once every request of the message has one. */
function answerApproval(card) {
  const view = card.view;
  announce(`${card.root.dataset.approval === "approved" ? "Approved" : "Denied"}: ${card.toolName}`);
  if (card.approvalBox) card.approvalBox.focus(); // the focused button just went away
  if (!view) return;
  const others = view.pendingApprovals();
  if (others.length) {
    card.result.append(el("span", "muted", " Sent once the other request is answered."));
    others[0].approvalBox.focus();
    return;
  }
  sendApprovalAnswers(view);
}

function sendApprovalAnswers(view) {
  const message = view.toMessage();
  const stream = newStream({
    kind: "send",
    chatId: state.chatId,
    message,
    trigger: "submit-message",
    active: true,
    view, // the continuation's chunks go to the same assistant message
    approval: true,
  });
  state.stream = stream; // a watch of the same turn is superseded (its frames are ignored)
  setBusy(true);
  socket.send({
    type: "send",
    requestId: stream.requestId,
    id: state.chatId,
    trigger: "submit-message",
    messageId: message.id || undefined,
    messages: [message],
    headers: {},
    body: {},
    metadata: {},
  });
}

ui.stop.addEventListener("click", () => {
  const s = state.stream;
  if (!s) return;
  socket.send({ type: "abort", requestId: s.requestId });
  ui.stop.disabled = true;
  ui.stop.textContent = "Stopping…";
});

// --- Composer -------------------------------------------------------------------------------

function autoGrow() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 240)}px`;
}

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

function renderPending() {
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

// --- Offline banner, sidebar toggle, probes ------------------------------------------------

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

function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  ui.sidebarToggle.setAttribute("aria-expanded", String(open));
  ui.backdrop.hidden = !open;
}
ui.sidebarToggle.addEventListener("click", () => setSidebar(!document.body.classList.contains("sidebar-open")));
ui.backdrop.addEventListener("click", () => setSidebar(false));
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) setSidebar(false);
});

// Learn about a turn started elsewhere (another tab) when this tab comes back into view.
function probe() {
  if (!state.chatId || state.stream || !socket.isOpen) return;
  if (Date.now() - state.lastProbe < 3000) return;
  state.lastProbe = Date.now();
  startResume({ fresh: true, needsHistory: true });
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") probe();
});
window.addEventListener("focus", probe);

// --- Files panel (files.js) -----------------------------------------------------------------

let filesPanel = null;

/** The ids the chat's workspace directory may be named after (it is the session's UUID). */
function workspaceIds() {
  const ids = [state.chatId];
  for (const s of state.sessions.values()) if (s.client_id === state.chatId) ids.push(String(s.id));
  return ids;
}

/** A search hit in this very chat: scroll to its message instead of reloading the page. */
function openSearchHit(url) {
  if (url.pathname !== window.location.pathname) return false;
  history.replaceState(null, "", url.hash || window.location.pathname);
  if (messageReveal(ui.messages, url.hash)) state.stick = false;
  setSidebar(false);
  return true;
}

// --- Start ----------------------------------------------------------------------------------

async function init() {
  setupBanner();
  setupSettings({ api, apiBase: config.apiBase, chatId: () => state.chatId, ensureChat, notice, defaultModel: config.model });
  filesPanel = setupFiles({
    api,
    apiBase: config.apiBase,
    chatId: () => state.chatId,
    ensureChat,
    csrfToken,
    uploadMaxBytes: config.uploadMaxBytes,
  });
  setupSearch({ api, onOpen: openSearchHit });
  renderPending();
  updateEmpty();
  socket.connect();
  loadSessions();
  if (state.chatId) {
    await loadHistory();
    if (messageReveal(ui.messages, window.location.hash)) state.stick = false; // a search hit
    startResume({ fresh: true }); // a turn may be running (refresh, another tab)
  }
  document.body.dataset.ready = "true";
  ui.input.focus();
}

init();
