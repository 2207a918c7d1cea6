// The chat page's message views (docs/browser.md "Modules"): a user message, an assistant
// message (AssistantView) made of text (TextPart, Markdown rendered as complete blocks arrive),
// reasoning (ReasoningPart) and tool cards (ToolCard, with the tool-approval state), markers
// (error / stopped / note), and the actions under the last reply. A view knows nothing of the
// socket or the sidebar: what a click should do beyond the view is a callback in `viewHooks`,
// which app.js fills in (so no module imports this one back).
//
// Steering (issue #17): the tool-approval state lives in ToolCard / AssistantView; steering.js
// renders the approval previews and runs the "Chat settings" dialog.

import { renderMarkdown, stableBoundary, safeHttpUrl } from "./markdown.js";
import { approvalPreview, approvalQuestion } from "./steering.js";
import { FILE_TOOLS, fileUrl, workspaceRelative } from "./files.js";
import { config, state, ui, el, button, pretty, uuid, workspaceIds, streaming } from "./page.js";

/** What a view's buttons do beyond the view (set by app.js). */
export const viewHooks = {
  answerApproval: (_card) => {}, // a tool card was answered here (Approve / Deny)
  sessionInfo: (_data) => {}, // a data-session chunk (the chat's new title)
  retry: (_marker) => {}, // an error marker's Retry
  regenerate: () => {}, // the last reply's Regenerate
  edit: (_node, _text) => {}, // a user message was edited (branches.js)
  userActions: (_node) => [], // the buttons under a user message (branches.js)
  branchSwitch: (_msg) => null, // the ‹ i/n › switch of a message with siblings (branches.js)
};

export class TextPart {
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

export class ReasoningPart {
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
export function toolLabel(toolName) {
  const mcp = /^mcp__(.+?)__(.+)$/.exec(toolName || "");
  return mcp ? `${mcp[1]} · ${mcp[2]}` : toolName || "tool";
}

export class ToolCard {
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
      if (!state.filesPanel || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      state.filesPanel.open(path);
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
    viewHooks.answerApproval(this);
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

export function fileView(part) {
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

export class AssistantView {
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
        viewHooks.sessionInfo(chunk.data || {});
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
    const mid = msg.message_id || meta.messageId || meta.message_id || meta.client_message_id;
    if (mid) view.root.dataset.messageId = mid;
    if (msg.id !== undefined && msg.id !== null) view.root.dataset.pk = String(msg.id);
    const branches = viewHooks.branchSwitch(msg);
    if (branches) view.actions.prepend(branches);
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

export function markerView(kind, text, { retry = false } = {}) {
  const box = el("div", `marker marker-${kind}`);
  box.dataset.kind = kind;
  const isError = kind === "error" || kind === "retryable_error";
  if (isError) box.setAttribute("role", "alert");
  const label = { error: "Error", retryable_error: "Error", stopped: "Stopped", system: "Note" }[kind] || "Note";
  box.append(el("strong", "", `${label}: `), el("span", "marker-text", text));
  if (retry) {
    box.append(button("Retry", "small retry-btn", () => viewHooks.retry(box)));
  }
  return box;
}

export function userView(msg) {
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
  // A history row (it has a sequence): `message_id` is its AI SDK id and `id` its row's pk; a
  // message just sent: `id` is the AI SDK id this page gave it.
  const fromHistory = msg.sequence !== undefined;
  const meta = msg.metadata || {};
  const aiId = msg.message_id || meta.client_message_id || (fromHistory ? null : msg.id);
  if (fromHistory && msg.id !== undefined && msg.id !== null) root.dataset.pk = String(msg.id);
  root._message = { id: aiId || uuid(), role: "user", parts };
  userFooter(root, viewHooks.branchSwitch(msg));
  return root;
}

/** A user message's footer: its ‹ i/n › switch and its buttons (Edit), once there are any. */
function userFooter(root, branches) {
  if (root.querySelector(".msg-footer")) return;
  const actions = el("span", "msg-actions");
  actions.append(...viewHooks.userActions(root));
  if (!branches && !actions.childElementCount) return;
  const footer = el("div", "msg-footer small muted");
  footer.append(branches || el("span"), actions);
  root.append(footer);
}

export function renderHistoryMessage(msg) {
  const kind = msg.kind || "normal";
  if (kind !== "normal") {
    const box = markerView(kind, msg.text || (kind === "stopped" ? "Stopped." : ""), {
      retry: kind === "retryable_error",
    });
    box.dataset.sequence = msg.sequence;
    const branches = viewHooks.branchSwitch(msg); // a failed or stopped reply may have siblings
    if (branches) box.append(branches);
    return box;
  }
  if (msg.role === "user") return userView(msg);
  if (msg.role === "assistant") return AssistantView.fromMessage(msg).root;
  return markerView("system", msg.text || "");
}

/** Remove what follows the last user message (a partial or replaced assistant answer). */
export function clearAfterLastUser() {
  const nodes = [...ui.messages.children];
  let i = nodes.length - 1;
  while (i >= 0 && !nodes[i].classList.contains("user")) i -= 1;
  for (const node of nodes.slice(i + 1)) node.remove();
}

export function lastUserNode() {
  const users = ui.messages.querySelectorAll(".msg.user");
  return users.length ? users[users.length - 1] : null;
}

export function updateActions() {
  for (const b of ui.messages.querySelectorAll(".regen-btn")) b.remove();
  // Edit buttons for messages shown before the page knew that the server keeps branches.
  for (const node of ui.messages.querySelectorAll(".msg.user:not(:has(.msg-footer))")) userFooter(node, null);
  const busy = streaming() || pendingApprovalCards().length > 0;
  for (const b of ui.messages.querySelectorAll(".retry-btn")) b.disabled = busy;
  // Branches (branches.js): no switching or editing while a turn runs.
  for (const b of ui.messages.querySelectorAll(".branch-nav button, .edit-btn")) b.disabled = busy || b.dataset.edge === "true";
  const last = ui.messages.lastElementChild;
  const failed = last && last.querySelector(".marker-error, .marker-retryable_error");
  if (!busy && last && last.classList.contains("assistant") && last._view && !failed) {
    last._view.actions.append(button("Regenerate", "ghost small regen-btn", () => viewHooks.regenerate(), "Regenerate the last answer"));
  }
}

export function pendingApprovalCards() {
  const cards = [];
  for (const node of ui.messages.querySelectorAll(".msg.assistant")) {
    if (node._view) cards.push(...node._view.pendingApprovals());
  }
  return cards;
}

