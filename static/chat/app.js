// The browser chat page's entry (docs/browser.md "Modules"): it wires the page's modules
// together and starts them. Each module has one concern and imports only modules below it:
//
//   page.js      shared state, the elements, small helpers, the HTTP API, scrolling
//   views.js     message views (TextPart, ReasoningPart, ToolCard, AssistantView, markers)
//   sessions.js  the sidebar's chat list, the chat's title, loading the history
//   socket.js    the websocket: connect, reconnect, queue, frames
//   stream.js    the request this tab follows: frames → chunks → views; Stop, Regenerate,
//                Retry, tool-approval answers
//   composer.js  the message box, attachments, sending
//   branches.js  edit a user message, ‹ i/n › switches between branches
//   conversation.js  share links, export, import
//
// What a lower module must call in a higher one is a callback set here (viewHooks,
// socket.onOpen / onFrame), so there is no import cycle.

import { setupSettings } from "./steering.js";
import { setupFiles } from "./files.js";
import { messageReveal, setupSearch } from "./search.js";
import { config, state, ui, notice, api, csrfToken, setupScrolling, updateEmpty } from "./page.js";
import { viewHooks } from "./views.js";
import { ensureChat, loadHistory, loadSessions, onSessionInfo, openSearchHit, setupSessions } from "./sessions.js";
import { socket } from "./socket.js";
import { answerApproval, onFrame, onSocketOpen, regenerate, retryLast, setupStream, startResume } from "./stream.js";
import { setupComposer } from "./composer.js";
import { branchSwitch, editMessage, userActions } from "./branches.js";
import { setupConversation } from "./conversation.js";

Object.assign(viewHooks, {
  answerApproval,
  sessionInfo: onSessionInfo,
  retry: retryLast,
  regenerate,
  edit: editMessage,
  userActions,
  branchSwitch,
});
socket.onOpen = onSocketOpen;
socket.onFrame = onFrame;
window.__chat = { state, socket }; // for debugging and the browser tests

async function init() {
  setupScrolling();
  setupSessions();
  setupStream();
  setupComposer();
  setupSettings({ api, apiBase: config.apiBase, chatId: () => state.chatId, ensureChat, notice, defaultModel: config.model });
  state.filesPanel = setupFiles({
    api,
    apiBase: config.apiBase,
    chatId: () => state.chatId,
    ensureChat,
    csrfToken,
    uploadMaxBytes: config.uploadMaxBytes,
  });
  setupSearch({ api, onOpen: openSearchHit });
  setupConversation();
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
