// The chat page's branches (docs/browser.md "Branches"; the server side is docs/api.md):
//
// - Edit: a user message's Edit button opens an inline editor; Save sends what the stock AI SDK
//   `chat.sendMessage({text, messageId})` sends: a submit-message whose `messageId` (and whose
//   message's id) is the edited message's AI SDK id. The server stores the new text as a
//   sibling of the old message (a new branch from that point) and answers it; the old branch
//   is kept. The page drops what followed the edited message and follows the new reply.
// - Regenerate (stream.js) keeps the old reply on the server too: the new one is its sibling.
// - Switch: a message whose `siblings` (REST) has more than one entry shows ‹ i/n ›; a click
//   PATCHes the chat's `active_leaf` to the sibling (the server descends to that branch's
//   newest leaf), then the history (the active path) is loaded again.
//
// None of it is shown unless the server's messages carry `siblings` (state.branches), and the
// buttons are disabled while a turn streams (views.js updateActions).

import { state, ui, el, button, notice, api, apiErrorText, appendMessage, streaming } from "./page.js";
import { userView } from "./views.js";
import { loadHistory } from "./sessions.js";
import { startSend } from "./stream.js";
import { sendAllowed } from "./composer.js";

/** The ‹ i/n › switch of a history message with siblings, or null. */
export function branchSwitch(msg) {
  const siblings = Array.isArray(msg.siblings) ? msg.siblings.map(String) : [];
  const index = siblings.indexOf(String(msg.id));
  if (siblings.length < 2 || index < 0) return null;
  const nav = el("span", "branch-nav");
  nav.setAttribute("role", "group");
  const who = msg.role === "user" ? "message" : "reply";
  nav.setAttribute("aria-label", `Version ${index + 1} of ${siblings.length} of this ${who}`);
  const prev = button("‹", "ghost icon small branch-prev", (e) => switchBranch(siblings[index - 1], e.currentTarget), `Previous version of this ${who}`);
  const next = button("›", "ghost icon small branch-next", (e) => switchBranch(siblings[index + 1], e.currentTarget), `Next version of this ${who}`);
  prev.dataset.edge = String(index === 0);
  next.dataset.edge = String(index === siblings.length - 1);
  prev.disabled = index === 0 || streaming();
  next.disabled = index === siblings.length - 1 || streaming();
  const count = el("span", "branch-count", `${index + 1}/${siblings.length}`);
  nav.append(prev, count, next);
  return nav;
}

async function switchBranch(pk, clicked) {
  if (!pk || !state.chatId) return;
  if (streaming()) {
    notice("Wait for the current reply to finish, then switch.");
    return;
  }
  try {
    await api(`sessions/${state.chatId}/`, { method: "PATCH", body: { active_leaf: pk } });
  } catch (err) {
    const text = err.status === 409
      ? "A reply is being written in this chat: switch when it finishes."
      : apiErrorText(err, "Could not switch to that version.");
    notice(text, { kind: "error" });
    return;
  }
  // The switched message keeps its place in the path (the same parent, so the same index).
  const at = [...ui.messages.children].indexOf(clicked.closest(".msg, .marker"));
  const side = clicked.classList.contains("branch-prev") ? ".branch-prev" : ".branch-next";
  await loadHistory();
  const target = at >= 0 ? ui.messages.children[at] : null;
  if (!target) return;
  state.stick = false;
  target.scrollIntoView({ block: "nearest" });
  const again = target.querySelector(`.branch-nav ${side}:not(:disabled)`) || target.querySelector(".branch-nav button:not(:disabled)");
  if (again) again.focus();
}

/** The buttons under a user message: Edit (when the server keeps branches). */
export function userActions(node) {
  if (!state.branches) return [];
  const edit = button("Edit", "ghost small edit-btn", () => openEditor(node), "Edit this message");
  edit.disabled = streaming();
  return [edit];
}

function openEditor(node) {
  if (streaming() || node.querySelector(".msg-editor")) return;
  const body = node.querySelector(".msg-body");
  const footer = node.querySelector(".msg-footer");
  const text = (node._message.parts || []).filter((p) => p.type === "text").map((p) => p.text).join("\n");
  const form = el("form", "msg-editor");
  const area = el("textarea", "msg-editor-input");
  area.value = text;
  area.rows = Math.min(12, Math.max(2, text.split("\n").length));
  area.setAttribute("aria-label", "Edit your message");
  const save = el("button", "btn primary small", "Save and send");
  save.type = "submit";
  const cancel = button("Cancel", "ghost small", () => close());
  const row = el("div", "msg-editor-actions");
  row.append(cancel, save);
  form.append(area, row);
  const close = () => {
    form.remove();
    body.hidden = false;
    if (footer) footer.hidden = false;
    const edit = node.querySelector(".edit-btn");
    if (edit) edit.focus();
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const value = area.value.replace(/\s+$/, "");
    if (!value.trim()) return;
    if (value === text) {
      close();
      return;
    }
    editMessage(node, value);
  });
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      close();
    } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  body.hidden = true;
  if (footer) footer.hidden = true;
  body.after(form);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

/** Send `text` as a new version of the user message `node` (a new branch from there). */
export function editMessage(node, text) {
  if (!sendAllowed()) return;
  const old = node._message;
  const files = (old.parts || []).filter((p) => p.type === "file");
  // Like the AI SDK's sendMessage({text, messageId}): the edited message keeps its id.
  const message = { id: old.id, role: "user", parts: [{ type: "text", text }, ...files] };
  while (node.nextElementSibling) node.nextElementSibling.remove();
  node.remove();
  const fresh = userView(message);
  state.stick = true;
  appendMessage(fresh);
  startSend(message, { trigger: "submit-message", messageId: old.id, branching: true });
  state.stream.userNode = fresh;
}
