// The chat page's steering UI (issue #17), imported by app.js and views.js:
//
// - approvalPreview(): what a tool call waiting for the user's approval would do, shown on its
//   tool card — Bash: the command; Write: the path and the content; Edit/MultiEdit: a line diff of
//   old_string → new_string; ExitPlanMode (plan mode): the proposed plan as Markdown; anything
//   else: its input as JSON. The Approve/Deny state machine lives in views.js (ToolCard)
//   and stream.js (answerApproval), next to the stream handling it continues.
// - setupSettings(): the per-chat settings dialog (model, instructions, tool mode, max steps, MCP
//   servers): GET /api/v1/models/, GET /api/v1/mcp-servers/, GET/PATCH /api/v1/sessions/<id>/
//   (CONTRACT §6, "Per-chat settings"; issue #18, "MCP servers").
//
// Same safety rule as the rest of the page (page.js): untrusted text (tool inputs, reasons, server messages) only ever
// goes in as textContent; the plan goes through markdown.js (markdown-it + DOMPurify) like any
// other Markdown. No innerHTML.

import { renderMarkdown } from "./markdown.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function asText(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch (_) {
    return String(value);
  }
}

// --- Line diff ------------------------------------------------------------------------------

const DIFF_MAX_CELLS = 250_000; // LCS table size; beyond it: all old lines removed, all new added

/** [{op: " "|"-"|"+", line}] turning `before` into `after`, line by line (LCS). */
export function lineDiff(before, after) {
  const a = asText(before).split("\n");
  const b = asText(after).split("\n");
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start += 1;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA -= 1;
    endB -= 1;
  }
  const head = a.slice(0, start).map((line) => ({ op: " ", line }));
  const tail = a.slice(endA).map((line) => ({ op: " ", line }));
  const midA = a.slice(start, endA);
  const midB = b.slice(start, endB);
  const n = midA.length;
  const m = midB.length;
  let mid = [];
  if (n * m > DIFF_MAX_CELLS) {
    mid = [...midA.map((line) => ({ op: "-", line })), ...midB.map((line) => ({ op: "+", line }))];
  } else {
    // lcs[i][j]: the longest common subsequence of midA[i:] and midB[j:].
    const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i -= 1) {
      for (let j = m - 1; j >= 0; j -= 1) {
        lcs[i][j] = midA[i] === midB[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && midA[i] === midB[j]) {
        mid.push({ op: " ", line: midA[i] });
        i += 1;
        j += 1;
      } else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) {
        mid.push({ op: "+", line: midB[j] });
        j += 1;
      } else {
        mid.push({ op: "-", line: midA[i] });
        i += 1;
      }
    }
  }
  return [...head, ...mid, ...tail];
}

const DIFF_CLASS = { " ": "diff-ctx", "-": "diff-del", "+": "diff-add" };
const DIFF_LABEL = { " ": "unchanged", "-": "removed", "+": "added" };

function diffView(before, after) {
  const pre = el("pre", "tool-diff");
  pre.setAttribute("aria-label", "Changes: lines starting with - are removed, + are added");
  for (const { op, line } of lineDiff(before, after)) {
    const row = el("span", DIFF_CLASS[op], `${op} ${line}\n`);
    row.title = DIFF_LABEL[op];
    pre.append(row);
  }
  return pre;
}

// --- Approval preview -----------------------------------------------------------------------

function labelled(label, node) {
  return [el("div", "tool-label", label), node];
}

function preText(className, text) {
  return el("pre", className, text);
}

/** What the tool call will do, as nodes for the approval section of its card. */
export function approvalPreview(toolName, input) {
  const args = input && typeof input === "object" && !Array.isArray(input) ? input : {};
  const nodes = [];
  switch (toolName) {
    case "Bash":
      if (args.description) nodes.push(el("p", "approval-note", args.description));
      nodes.push(...labelled("Command", preText("approval-command", asText(args.command))));
      break;
    case "Write":
      nodes.push(...labelled("File", el("code", "approval-path", asText(args.file_path))));
      nodes.push(...labelled("Content", preText("approval-content", asText(args.content))));
      break;
    case "Edit":
      nodes.push(...labelled("File", el("code", "approval-path", asText(args.file_path))));
      if (args.replace_all) nodes.push(el("p", "approval-note", "Every occurrence is replaced."));
      nodes.push(...labelled("Change", diffView(args.old_string, args.new_string)));
      break;
    case "MultiEdit": {
      nodes.push(...labelled("File", el("code", "approval-path", asText(args.file_path))));
      const edits = Array.isArray(args.edits) ? args.edits : [];
      edits.forEach((edit, index) => {
        const e = edit && typeof edit === "object" ? edit : {};
        const label = `Change ${index + 1} of ${edits.length}${e.replace_all ? " (every occurrence)" : ""}`;
        nodes.push(...labelled(label, diffView(e.old_string, e.new_string)));
      });
      break;
    }
    case "ExitPlanMode": {
      const plan = el("div", "md approval-plan");
      plan.append(renderMarkdown(asText(args.plan)));
      nodes.push(...labelled("Proposed plan", plan));
      break;
    }
    default:
      nodes.push(...labelled("Input", preText("approval-input", asText(input))));
  }
  return nodes;
}

/** The question the approval section asks, per tool. */
export function approvalQuestion(toolName) {
  switch (toolName) {
    case "Bash":
      return "The agent wants to run this command.";
    case "Write":
      return "The agent wants to write this file.";
    case "Edit":
    case "MultiEdit":
      return "The agent wants to change this file.";
    case "ExitPlanMode":
      return "Plan mode: the agent proposes this plan. Approve it to let the agent carry it out.";
    default:
      return `The agent wants to use ${toolName}.`;
  }
}

// --- Per-chat settings ----------------------------------------------------------------------

const TOOL_MODES = ["auto", "ask", "plan"];

/** The text of an API error (`{"error": {code, message, details?}}`, chat/api/errors.py). */
export function apiErrorText(err, fallback = "The request failed.") {
  const error = err && err.body && err.body.error;
  if (!error) return err && err.status ? `${fallback} (HTTP ${err.status})` : fallback;
  // The message names the problem (chat/api/errors.py request_invalid); a generic one ("see
  // details") is replaced by the field errors.
  if (error.message && !/see details/i.test(error.message)) return error.message;
  const lines = [];
  const details = error.details;
  if (details && typeof details === "object" && !Array.isArray(details)) {
    for (const [field, value] of Object.entries(details)) {
      const messages = (Array.isArray(value) ? value : [value]).map(asText).join(" ");
      lines.push(field === "non_field_errors" ? messages : `${field}: ${messages}`);
    }
  } else if (Array.isArray(details)) {
    lines.push(details.map(asText).join(" "));
  }
  return lines.filter(Boolean).join(" ") || error.message || fallback;
}

function modelsOf(data) {
  const list = Array.isArray(data) ? data : (data && (data.results || data.models || data.data)) || [];
  return list
    .filter((m) => m && (typeof m === "string" || m.id))
    .map((m) => (typeof m === "string" ? { id: m, name: m, default: false } : { id: String(m.id), name: String(m.name || m.id), default: Boolean(m.default) }));
}

/**
 * The "Chat settings" dialog. deps: {api(path, opts), chatId() → id or null, ensureChat() → id
 * (creates the session via POST /api/v1/sessions/ on a new chat), notice(text, opts),
 * defaultModel}.
 */
export function setupSettings(deps) {
  const $ = (id) => document.getElementById(id);
  const ui = {
    open: $("settings-btn"),
    dialog: $("settings-dialog"),
    form: $("settings-form"),
    status: $("settings-status"),
    model: $("settings-model"),
    instructions: $("settings-instructions"),
    count: $("settings-instructions-count"),
    maxSteps: $("settings-max-steps"),
    mcp: $("settings-mcp"),
    mcpList: $("settings-mcp-list"),
    error: $("settings-error"),
    save: $("settings-save"),
    cancel: $("settings-cancel"),
  };
  if (!ui.open || !ui.dialog) return null;

  let models = null; // [{id, name, default}] once loaded
  let mcpServers = null; // [{name, description, transport}] once loaded (GET /api/v1/mcp-servers/)
  let instructionsMax = null; // learned from the session resource or from the server's 400
  let loadToken = 0;
  let saving = false;

  const radios = () => [...ui.form.querySelectorAll('input[name="tool_mode"]')];

  function setError(text, field) {
    ui.error.textContent = text || "";
    ui.error.hidden = !text;
    ui.instructions.removeAttribute("aria-invalid");
    ui.maxSteps.removeAttribute("aria-invalid");
    if (text && field) field.setAttribute("aria-invalid", "true");
  }

  function updateCount() {
    const n = ui.instructions.value.length;
    if (instructionsMax) {
      const left = instructionsMax - n;
      ui.count.textContent = left >= 0
        ? `${left.toLocaleString("en-US")} of ${instructionsMax.toLocaleString("en-US")} characters left`
        : `${(-left).toLocaleString("en-US")} characters over the ${instructionsMax.toLocaleString("en-US")}-character limit`;
      ui.count.dataset.over = String(left < 0);
    } else {
      ui.count.textContent = `${n.toLocaleString("en-US")} characters`;
      ui.count.dataset.over = "false";
    }
  }

  function learnLimit(session) {
    const keys = ["instructions_max_length", "instructions_max_chars", "instructions_limit"];
    for (const key of keys) {
      const v = session && Number(session[key]);
      if (v > 0) instructionsMax = v;
    }
  }

  // The limit is a server setting (AGENT_INSTRUCTIONS_MAX_CHARS): the API's OpenAPI schema
  // states it as the maxLength of the update request's `instructions`. Best effort, once per
  // page; without it the count shows the length, and the server's 400 names the limit.
  let schemaAsked = false;
  async function learnLimitFromSchema() {
    if (schemaAsked || instructionsMax) return;
    schemaAsked = true;
    let schema;
    try {
      schema = await deps.api(`${deps.apiBase || "/api/v1/"}schema/?format=json`);
    } catch (_) {
      return;
    }
    const schemas = (schema && schema.components && schema.components.schemas) || {};
    let best = 0;
    const walk = (node) => {
      if (!node || typeof node !== "object") return;
      if (Number(node.maxLength) > best) best = Number(node.maxLength);
      for (const key of ["oneOf", "anyOf", "allOf"]) if (Array.isArray(node[key])) node[key].forEach(walk);
    };
    for (const [name, comp] of Object.entries(schemas)) {
      if (/session/i.test(name) && /update/i.test(name)) walk(comp && comp.properties && comp.properties.instructions);
    }
    if (best > 0 && !instructionsMax) {
      instructionsMax = best;
      updateCount();
    }
  }

  function fillModels(current) {
    const list = models && models.length ? [...models] : [];
    if (current && !list.some((m) => m.id === current)) list.push({ id: current, name: `${current} (not offered any more)`, default: false });
    if (!list.length) list.push({ id: deps.defaultModel || "", name: deps.defaultModel || "Server default", default: true });
    const fallback = (list.find((m) => m.default) || list[0]).id;
    ui.model.replaceChildren(
      ...list.map((m) => {
        const option = el("option", "", m.default ? `${m.name} (default)` : m.name);
        option.value = m.id;
        return option;
      }),
    );
    ui.model.value = current || fallback;
  }

  /** One checkbox per MCP server the operator offers; the chat's own are checked. */
  function fillMcp(enabled) {
    if (!ui.mcp || !ui.mcpList) return;
    const chosen = new Set(Array.isArray(enabled) ? enabled : []);
    const list = mcpServers || [];
    ui.mcp.hidden = !list.length;
    ui.mcpList.replaceChildren(
      ...list.map((server) => {
        const label = el("label", "checkbox");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.name = "mcp_servers";
        box.value = server.name;
        box.checked = chosen.has(server.name);
        label.append(box, ` ${server.name}`);
        if (server.description) label.append(el("span", "small muted", ` — ${server.description}`));
        return label;
      }),
    );
  }

  function fill(session) {
    const s = session || {};
    learnLimit(s);
    fillModels(s.model || "");
    fillMcp(s.mcp_servers);
    ui.instructions.value = s.instructions || "";
    const mode = TOOL_MODES.includes(s.tool_mode) ? s.tool_mode : "auto";
    for (const r of radios()) r.checked = r.value === mode;
    ui.maxSteps.value = String(Number.isInteger(s.max_steps) ? s.max_steps : 0);
    updateCount();
  }

  function setDisabled(disabled) {
    for (const node of ui.form.querySelectorAll("select, textarea, input, #settings-save")) node.disabled = disabled;
  }

  async function load() {
    const token = ++loadToken;
    setError("");
    setDisabled(true);
    ui.status.textContent = "Loading…";
    const id = deps.chatId();
    const [modelData, mcpData, session] = await Promise.all([
      models ? Promise.resolve(null) : deps.api("models/").catch(() => null),
      mcpServers ? Promise.resolve(null) : deps.api("mcp-servers/").catch(() => null),
      id ? deps.api(`sessions/${id}/`).catch((err) => ({ __error: err })) : Promise.resolve(null),
    ]);
    if (token !== loadToken) return;
    if (modelData) models = modelsOf(modelData);
    if (Array.isArray(mcpData)) mcpServers = mcpData.filter((m) => m && typeof m.name === "string");
    setDisabled(false);
    ui.status.textContent = "";
    if (session && session.__error) {
      // A chat the server does not know yet (a new chat's first send has not reached it).
      if (session.__error.status !== 404) setError(apiErrorText(session.__error, "Could not load this chat's settings."));
      fill(null);
    } else {
      fill(session);
    }
    ui.model.focus();
    learnLimitFromSchema();
  }

  function values() {
    const checked = radios().find((r) => r.checked);
    return {
      model: ui.model.value,
      instructions: ui.instructions.value,
      tool_mode: checked ? checked.value : "auto",
      max_steps: Number(ui.maxSteps.value),
      // Only when the list is known: a failed GET /api/v1/mcp-servers/ must not clear the chat's.
      ...(mcpServers ? { mcp_servers: [...ui.form.querySelectorAll('input[name="mcp_servers"]:checked')].map((b) => b.value) } : {}),
    };
  }

  async function save() {
    if (saving) return;
    const body = values();
    if (!Number.isInteger(body.max_steps) || body.max_steps < 0) {
      setError("Max steps must be a whole number, 0 or more (0: the server's default).", ui.maxSteps);
      ui.maxSteps.focus();
      return;
    }
    saving = true;
    setError("");
    ui.save.disabled = true;
    ui.status.textContent = "Saving…";
    try {
      // A new chat has no session yet: create it first (POST /api/v1/sessions/), then PATCH it.
      const id = deps.chatId() || (await deps.ensureChat());
      const updated = await deps.api(`sessions/${id}/`, { method: "PATCH", body });
      if (updated) learnLimit(updated);
      ui.status.textContent = "";
      ui.dialog.close("saved");
      deps.notice("Chat settings saved. They apply from the next reply.", { timeout: 4000 });
      if (deps.onSaved) deps.onSaved(updated || body);
    } catch (err) {
      ui.status.textContent = "";
      const details = err && err.body && err.body.error && err.body.error.details;
      const field = details && typeof details === "object"
        ? (details.instructions && ui.instructions) || (details.max_steps && ui.maxSteps) || null
        : null;
      const text = apiErrorText(err, "Could not save the settings.");
      const limit = /(?:no more than|longer than|at most) ([\d,]+) characters/i.exec(text);
      if (limit && details && details.instructions) instructionsMax = Number(limit[1].replace(/,/g, ""));
      updateCount();
      setError(text, field);
      if (field) field.focus();
    } finally {
      saving = false;
      ui.save.disabled = false;
    }
  }

  ui.open.addEventListener("click", () => {
    if (ui.dialog.open) return;
    ui.dialog.showModal();
    ui.open.setAttribute("aria-expanded", "true");
    load();
  });
  ui.dialog.addEventListener("close", () => {
    loadToken += 1; // a load still under way must not fill the closed dialog
    ui.open.setAttribute("aria-expanded", "false");
    setError("");
    // Back to the button (the browser usually does this itself), unless the focus moved on.
    const active = document.activeElement;
    if (!active || active === document.body || ui.dialog.contains(active)) ui.open.focus();
  });
  ui.cancel.addEventListener("click", () => ui.dialog.close("cancel"));
  ui.instructions.addEventListener("input", updateCount);
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    save();
  });
  // Enter in the number field submits the form natively; Escape closes the modal dialog natively.
  return { load, save };
}
