// The chat page's turn following (docs/browser.md "Modules"): the request this tab follows
// (`state.stream`: a send, a resume, or a watch of a turn waiting for a tool approval), the
// frames of that request (start / chunk / end / error / no-active), the chunks applied to the
// streaming AssistantView, Stop, Regenerate and Retry, the tool-approval answers, and the
// probe that picks up a turn started in another tab.

import { state, ui, el, uuid, notice, announce, autoGrow, appendMessage, maybeScroll, streaming } from "./page.js";
import { socket } from "./socket.js";
import {
  AssistantView,
  clearAfterLastUser,
  lastUserNode,
  markerView,
  pendingApprovalCards,
  updateActions,
} from "./views.js";
import { loadHistory, loadSessions } from "./sessions.js";

// A stream is this tab's view of one request:
//   {requestId, kind: "send"|"resume", chatId, lastSequence, view, active, fresh, needsHistory,
//    buffer, message (what was sent), trigger}
export function newStream(fields) {
  return { requestId: uuid(), lastSequence: -1, view: null, active: false, buffer: [], ...fields };
}

export function startSend(message, { trigger = "submit-message", messageId, branching = false } = {}) {
  // branching: the turn makes a branch (an edit, a regeneration): once it is over, the history
  // is loaded again to show the stored path with its ‹ i/n › switches (branches.js).
  const stream = newStream({ kind: "send", chatId: state.chatId, message, trigger, active: true, branching });
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
export function startResume({ fresh = true, needsHistory = false, continueFrom = null, reloadIfIdle = false } = {}) {
  if (!state.chatId) return;
  const stream = continueFrom
    ? { ...continueFrom, requestId: uuid(), kind: "resume", fresh: false, needsHistory: false, reconnect: true }
    : newStream({ kind: "resume", chatId: state.chatId, fresh, needsHistory, reconnect: reloadIfIdle });
  state.stream = stream;
  const frame = { type: "resume", requestId: stream.requestId, id: state.chatId };
  if (stream.lastSequence >= 0) frame.lastSequence = stream.lastSequence;
  socket.send(frame);
}

export function onSocketOpen(reconnect) {
  const s = state.stream;
  if (reconnect && s && s.chatId === state.chatId && (s.active || s.kind === "send" || s.watch)) {
    // Dropped mid-turn: pick the same turn up after the last chunk we showed.
    startResume({ continueFrom: s });
  }
}

export function onFrame(frame) {
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
  if (state.filesPanel) state.filesPanel.refresh(); // the turn may have changed the workspace
  // The turn waits on the server for the user's answer to a tool approval request.
  const waiting = s.view && s.view.root.isConnected ? s.view.pendingApprovals() : [];
  if (waiting.length) {
    promptApproval(waiting);
    if (!s.watch || s.lastSequence > s.startSequence) startWatch(s.view, s.lastSequence);
    return;
  }
  announce("Reply finished.");
  if (s.branching && state.branches) loadHistory();
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
  if (s.branching && s.trigger === "submit-message" && !s.active) {
    // An edit the server refused before running it: show the chat as it is stored.
    notice(errorText || "Your edit could not be sent.", { kind: "error", timeout: 10000 });
    loadHistory();
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

export function setBusy(busy) {
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

function lastUserMessage() {
  const node = lastUserNode();
  return node ? node._message : null;
}

export function regenerate() {
  if (streaming()) return;
  const message = lastUserMessage();
  if (!message) return;
  const last = ui.messages.lastElementChild;
  const messageId = last && last.dataset.messageId;
  clearAfterLastUser();
  startSend(message, { trigger: "regenerate-message", messageId, branching: true });
}

export function retryLast(box) {
  if (streaming()) return;
  if (box && box._resend) {
    // The server refused the message before running it: send it again as it was.
    box.remove();
    startSend(box._resend);
    return;
  }
  const message = lastUserMessage();
  if (!message) return;
  clearAfterLastUser();
  startSend(message, { trigger: "regenerate-message", branching: true });
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
export function answerApproval(card) {
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

// Learn about a turn started elsewhere (another tab) when this tab comes back into view.
function probe() {
  if (!state.chatId || state.stream || !socket.isOpen) return;
  if (Date.now() - state.lastProbe < 3000) return;
  state.lastProbe = Date.now();
  startResume({ fresh: true, needsHistory: true });
}

/** Stop, and the probes when the tab comes back into view. */
export function setupStream() {
  ui.stop.addEventListener("click", () => {
    const s = state.stream;
    if (!s) return;
    socket.send({ type: "abort", requestId: s.requestId });
    ui.stop.disabled = true;
    ui.stop.textContent = "Stopping…";
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") probe();
  });
  window.addEventListener("focus", probe);
}
