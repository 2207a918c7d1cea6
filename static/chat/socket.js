// The chat page's websocket (docs/browser.md "Modules"): one per tab, speaking the AI SDK
// WebSocketChatTransport protocol (CONTRACT §4). It connects, queues frames while it is down,
// reconnects with a jittered backoff, tells a signed-out user so, and hands every parsed frame
// and every (re)opening to the callbacks app.js sets (`socket.onFrame`, `socket.onOpen`).

import { config, ui, notice, api } from "./page.js";

export class ChatSocket {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.queue = [];
    this.attempts = 0;
    this.opened = false;
    this.timer = null;
    this.onOpen = (_reconnect) => {}; // the socket opened (again, when reconnect is true)
    this.onFrame = (_frame) => {}; // a frame arrived
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
      this.onOpen(reconnect);
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
      this.onFrame(frame);
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
export const socket = new ChatSocket(wsUrl);
