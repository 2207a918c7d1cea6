// Live supervision in the admin (chat/live_admin.py, templates/admin/chat/live_panel.html): reads
// the staff-only SSE stream of a session's running turn and renders it plainly, read-only: text
// and reasoning as they arrive, tool calls with their input and output, the end. The Stop form
// is posted in the background; the stream then shows the turn ending. Everything is written with
// textContent (never HTML): the model's output is untrusted.

const OUTPUT_LIMIT = 2000;
const MAX_RECONNECTS = 3;

function clip(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 1);
  return text.length > OUTPUT_LIMIT ? `${text.slice(0, OUTPUT_LIMIT)}… (${text.length - OUTPUT_LIMIT} more)` : text;
}

class LiveView {
  constructor(panel) {
    this.panel = panel;
    this.url = panel.dataset.streamUrl;
    this.status = panel.querySelector(".live-status");
    this.output = panel.querySelector(".live-output");
    this.watchButton = panel.querySelector(".live-watch");
    this.stopForm = panel.querySelector("form.live-stop");
    this.lastSequence = -1;
    this.waiting = false;
    this.ended = "";
    this.current = null; // the element receiving text deltas
    this.tools = new Map(); // toolCallId -> element
    this.controller = null;
  }

  setStatus(text, state) {
    this.status.textContent = text;
    this.panel.dataset.state = state;
  }

  line(className, text) {
    const el = document.createElement("div");
    el.className = className;
    el.textContent = text;
    this.output.append(el);
    this.current = null;
    this.output.scrollTop = this.output.scrollHeight;
    return el;
  }

  append(kind, delta) {
    if (!this.current || this.current.dataset.kind !== kind) {
      this.current = document.createElement("span");
      this.current.dataset.kind = kind;
      this.current.className = `live-${kind}`;
      if (kind === "reasoning") this.current.style.fontStyle = "italic";
      this.output.append(this.current);
    }
    this.current.textContent += delta;
    this.output.scrollTop = this.output.scrollHeight;
  }

  toolLine(id, text, className = "live-tool") {
    const el = this.line(className, text);
    if (id) this.tools.set(id, el);
    return el;
  }

  render(chunk) {
    this.waiting = chunk.type === "tool-approval-request";
    switch (chunk.type) {
      case "text-delta":
        this.append("text", chunk.delta ?? "");
        break;
      case "reasoning-delta":
        this.append("reasoning", chunk.delta ?? "");
        break;
      case "tool-input-start":
        this.toolLine(chunk.toolCallId, `⚙ ${chunk.toolName} …`);
        break;
      case "tool-input-available": {
        const text = `⚙ ${chunk.toolName} ${clip(chunk.input ?? {})}`;
        const el = this.tools.get(chunk.toolCallId);
        if (el) el.textContent = text;
        else this.toolLine(chunk.toolCallId, text);
        this.current = null;
        break;
      }
      case "tool-output-available":
        this.line("live-tool-output", `→ ${clip(chunk.output ?? "")}`);
        break;
      case "tool-output-error":
        this.line("live-tool-error", `✗ ${clip(chunk.errorText ?? "")}`);
        break;
      case "tool-approval-request":
        this.line("live-note", "… waiting for the user's approval of a tool call");
        break;
      case "error":
        this.line("live-error", `error: ${chunk.errorText ?? ""}`);
        break;
      case "abort":
        this.line("live-note", "■ stopped");
        break;
      case "finish": {
        const reason = chunk.messageMetadata?.stopped ? "stopped" : (chunk.finishReason ?? "");
        this.line("live-note", `■ finished${reason ? ` (${reason})` : ""}`);
        this.ended = reason || "finished";
        break;
      }
      default:
        break; // start, step boundaries, text-start/-end, data-* parts: nothing to show
    }
  }

  async watch(attempt = 0) {
    if (this.controller) return;
    this.controller = new AbortController();
    this.setStatus(attempt ? "Reconnecting…" : "Connecting…", "connecting");
    let response;
    try {
      const headers = { Accept: "text/event-stream" };
      if (this.lastSequence >= 0) headers["Last-Event-ID"] = String(this.lastSequence);
      response = await fetch(this.url, { headers, credentials: "same-origin", signal: this.controller.signal });
    } catch (error) {
      this.controller = null;
      this.failed(error, attempt);
      return;
    }
    if (response.status === 204) {
      this.controller = null;
      this.setStatus(this.lastSequence >= 0 ? this.endedText() : "No turn is running.", "idle");
      this.enableStop(false);
      return;
    }
    if (!response.ok) {
      this.controller = null;
      this.setStatus(`Refused (${response.status}): ${(await response.text()).slice(0, 200)}`, "refused");
      return;
    }
    this.setStatus("Watching the running turn (read-only).", "streaming");
    this.enableStop(true);
    let done = false;
    try {
      done = await this.read(response.body.getReader());
    } catch (error) {
      this.controller = null;
      this.failed(error, attempt);
      return;
    }
    this.controller = null;
    if (done && this.waiting) {
      // The turn waits for its user's answer, holding its place: the stream pauses here.
      this.setStatus("Waiting for the user's approval of a tool call (Watch again to follow the answer).", "waiting");
    } else if (done) {
      this.setStatus(this.endedText(), "ended");
      this.enableStop(false);
    } else {
      this.failed(new Error("the stream closed early"), attempt);
    }
  }

  endedText() {
    return `The turn has ended${this.ended ? ` (${this.ended})` : ""}.`;
  }

  failed(error, attempt) {
    if (attempt < MAX_RECONNECTS) {
      setTimeout(() => this.watch(attempt + 1), 500 * (attempt + 1));
      return;
    }
    this.setStatus(`The stream failed: ${error.message}`, "failed");
  }

  // Server-sent events: blocks separated by a blank line; `id:` is the chunk's sequence,
  // `data:` its JSON (or [DONE]); lines starting with ':' are keep-alive comments.
  async read(reader) {
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let id = null;
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("id:")) id = Number(line.slice(3).trim());
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (!data.length) continue;
        const payload = data.join("\n");
        if (payload === "[DONE]") return true;
        if (id !== null && Number.isFinite(id)) {
          if (id <= this.lastSequence) continue; // already shown before a reconnect
          this.lastSequence = id;
        }
        try {
          this.render(JSON.parse(payload));
        } catch {
          this.line("live-error", "(unreadable chunk)");
        }
      }
    }
  }

  enableStop(enabled) {
    const button = this.stopForm?.querySelector("button");
    if (button) button.disabled = !enabled;
  }

  async stop(event) {
    event.preventDefault();
    const button = this.stopForm.querySelector("button");
    button.disabled = true;
    try {
      const response = await fetch(this.stopForm.action, {
        method: "POST",
        body: new FormData(this.stopForm),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const body = await response.json();
      this.line("live-note", body.detail ?? (response.ok ? "Stop requested." : "Stop refused."));
      if (!body.stopped) button.disabled = false;
      else if (this.panel.dataset.state === "waiting") this.watch(); // paused: read the turn's end
    } catch (error) {
      this.line("live-error", `Stop failed: ${error.message}`);
      button.disabled = false;
    }
  }

  start() {
    this.watchButton?.addEventListener("click", () => {
      this.lastSequence = -1;
      this.ended = "";
      this.waiting = false;
      this.output.textContent = "";
      this.tools.clear();
      this.current = null;
      this.watch();
    });
    this.stopForm?.addEventListener("submit", (event) => this.stop(event));
    if (this.panel.dataset.running === "true") this.watch();
    this.panel.dataset.ready = "true";
  }
}

const panel = document.getElementById("live-turn");
if (panel) new LiveView(panel).start();
