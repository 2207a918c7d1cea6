// The production lane's scenarios (docs/production.md): a deployed Copilot Server (two daphne
// workers, DEBUG=false, PostgreSQL + Redis, the model across a network hop) driven from outside
// with the AI SDK's own client: `WebSocketChatTransport` for /ws/chat/, `DefaultChatTransport`
// for POST /api/v1/chat/, `readUIMessageStream` to assemble the messages and
// `uiMessageChunkSchema` to validate every chunk. scripts/prod-lane.sh starts the deployment and
// runs `node --test scenarios.mjs` once per backend with:
//   E2E_BACKEND       sdk | api (only for expectations and names)
//   E2E_WORKERS       http://127.0.0.1:P1,http://127.0.0.1:P2
//   E2E_WORKER_PIDS   their pids (the SIGTERM scenario signals the second one; it runs last)
//   E2E_KEYS          API keys of distinct users (Authorization: Bearer)
//   E2E_MIDSTREAM     comma-separated directives whose reply fails mid-stream (default "/drop");
//                     add new scripted-model fault directives here or in MIDSTREAM_DEFAULT.
// Tests in this file run one after another, in order.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import WS from 'ws';
import { DefaultChatTransport, WebSocketChatTransport, asSchema, readUIMessageStream, uiMessageChunkSchema } from 'ai';

const BACKEND = process.env.E2E_BACKEND ?? 'api';
const WORKERS = (process.env.E2E_WORKERS ?? '').split(',').filter(Boolean);
const PIDS = (process.env.E2E_WORKER_PIDS ?? '').split(',').filter(Boolean).map(Number);
const KEYS = (process.env.E2E_KEYS ?? '').split(',').filter(Boolean);
const MIDSTREAM_DEFAULT = ['/drop'];
const MIDSTREAM = (process.env.E2E_MIDSTREAM ?? '').split(',').map((s) => s.trim()).filter(Boolean);
const MIDSTREAM_DIRECTIVES = MIDSTREAM.length ? MIDSTREAM : MIDSTREAM_DEFAULT;
const TURN_MS = 60_000; // one turn, generously (a fresh Claude Code CLI takes a few seconds)
const EXIT_LIMIT_MS = 20_000; // a worker must exit this soon after SIGTERM
const SHUTDOWN_TEXT = /server restarted/i;

assert.equal(WORKERS.length, 2, 'E2E_WORKERS must name two workers');
assert.ok(KEYS.length >= 2, 'E2E_KEYS must hold at least two API keys');
const [W1, W2] = WORKERS;

// --- chunk validation ------------------------------------------------------------------------

const chunkSchema = asSchema(uiMessageChunkSchema);

async function assertValidChunk(chunk) {
  const result = await chunkSchema.validate(chunk);
  assert.ok(result.success, `invalid UI message chunk ${JSON.stringify(chunk)}: ${result.error}`);
}

// --- clients ---------------------------------------------------------------------------------

const userMessage = (text) => ({ id: randomUUID(), role: 'user', parts: [{ type: 'text', text }] });
const wsUrl = (worker) => `${worker.replace(/^http/, 'ws')}/ws/chat/`;

/** A WebSocketChatTransport on one worker, authenticated with a Bearer key on the handshake
 * (the `ws` package: Node 20 has no WebSocket that can set handshake headers). Every raw server
 * frame is recorded in `frames` for the sequence checks. */
class WsClient {
  constructor(worker, key) {
    const frames = (this.frames = []);
    this.sockets = [];
    const sockets = this.sockets;
    class BearerWebSocket extends WS {
      constructor(url, protocols) {
        super(url, protocols, { headers: { Authorization: `Bearer ${key}` } });
        sockets.push(this);
        this.addEventListener('message', (event) => frames.push(JSON.parse(String(event.data))));
      }
    }
    this.transport = new WebSocketChatTransport({ url: wsUrl(worker), webSocket: BearerWebSocket });
  }

  async send(chatId, text, { abortSignal } = {}) {
    const mark = this.frames.length;
    const stream = await this.transport.sendMessages({
      chatId, messages: [userMessage(text)], trigger: 'submit-message', messageId: undefined, abortSignal,
    });
    return observe(stream, () => this.requestFrames(mark));
  }

  async resume(chatId) {
    const mark = this.frames.length;
    const stream = await this.transport.reconnectToStream({ chatId });
    return stream === null ? null : observe(stream, () => this.requestFrames(mark));
  }

  /** The raw frames of the one request started after `mark`. */
  requestFrames(mark) {
    const later = this.frames.slice(mark);
    const first = later.find((f) => f.type === 'start' || f.type === 'chunk');
    return first ? later.filter((f) => f.requestId === first.requestId) : [];
  }

  close() {
    this.transport.close();
  }
}

/** A DefaultChatTransport on one worker. Its fetch tees each response so the raw SSE events
 * (`id:` + `data:`) are recorded too. `X-Forwarded-Proto: https` is what the TLS-terminating
 * load balancer in front of the workers sets (DEBUG=false redirects plain HTTP). */
class HttpClient {
  constructor(worker, key) {
    this.worker = worker;
    this.key = key;
    this.responses = [];
    const responses = this.responses;
    const tapFetch = async (url, init) => {
      const response = await fetch(url, init);
      if (!response.body) return response;
      const [mine, theirs] = response.body.tee();
      const record = { url: String(url), status: response.status, headers: response.headers, events: [] };
      responses.push(record);
      record.done = readSse(mine, record.events);
      return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
    };
    this.transport = new DefaultChatTransport({ api: `${worker}/api/v1/chat/`, headers: this.headers(), fetch: tapFetch });
  }

  headers() {
    return { Authorization: `Bearer ${this.key}`, 'X-Forwarded-Proto': 'https' };
  }

  async send(chatId, text) {
    const stream = await this.transport.sendMessages({
      chatId, messages: [userMessage(text)], trigger: 'submit-message', messageId: undefined, abortSignal: undefined,
    });
    return observe(stream, () => this.responses.at(-1)?.events ?? []);
  }

  async resume(chatId) {
    const stream = await this.transport.reconnectToStream({ chatId });
    return stream === null ? null : observe(stream, () => this.responses.at(-1)?.events ?? []);
  }

  async get(path) {
    const response = await fetch(`${this.worker}${path}`, { headers: this.headers() });
    assert.equal(response.status, 200, `GET ${path}: ${response.status}`);
    return response.json();
  }
}

async function readSse(stream, events) {
  const decoder = new TextDecoder();
  let buffer = '';
  let event = {};
  for await (const bytes of stream) {
    buffer += decoder.decode(bytes, { stream: true });
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (event.data !== undefined) events.push(event);
        event = {};
      } else if (line.startsWith('id:')) event.id = line.slice(3).trim();
      else if (line.startsWith('data:')) event.data = (event.data === undefined ? '' : event.data + '\n') + line.slice(5).trimStart();
    }
  }
}

/** Follow one response stream: `chunks` (as the transport delivered them, live), `message` (the
 * UIMessage readUIMessageStream assembled), `errors` (its onError calls), `streamError` (the
 * stream failed, e.g. the socket closed). `until(pred)` waits for a state; `finished` for the end. */
function observe(stream, raw) {
  const [forChunks, forMessage] = stream.tee();
  const obs = { chunks: [], errors: [], message: undefined, streamError: undefined, closed: false, raw };
  const wakers = new Set();
  const wake = () => wakers.forEach((w) => w());
  const collect = (async () => {
    const reader = forChunks.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        obs.chunks.push(value);
        wake();
      }
    } catch (error) {
      obs.streamError = error;
    } finally {
      obs.closed = true;
      wake();
    }
  })();
  const assemble = (async () => {
    try {
      for await (const message of readUIMessageStream({ stream: forMessage, onError: (e) => obs.errors.push(e) })) {
        obs.message = message;
      }
    } catch (error) {
      obs.streamError ??= error;
    }
  })();
  let timer;
  obs.finished = Promise.race([
    Promise.all([collect, assemble]).then(() => obs),
    new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`stream did not end within ${TURN_MS} ms; last chunks ${JSON.stringify(obs.chunks.slice(-3))}`)),
        TURN_MS,
      );
    }),
  ]).finally(() => clearTimeout(timer));
  obs.until = (pred, what = 'condition') =>
    new Promise((resolve, reject) => {
      const check = () => {
        if (pred(obs)) {
          wakers.delete(check);
          clearTimeout(timer);
          resolve(obs);
        } else if (obs.closed) {
          wakers.delete(check);
          clearTimeout(timer);
          reject(new Error(`stream ended before ${what}: ${JSON.stringify(obs.chunks.slice(-3))} ${obs.streamError ?? ''}`));
        }
      };
      const timer = setTimeout(() => {
        wakers.delete(check);
        reject(new Error(`timed out waiting for ${what}`));
      }, TURN_MS);
      wakers.add(check);
      check();
    });
  return obs;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const deltas = (obs) => obs.chunks.filter((c) => c.type === 'text-delta').length;
const textOf = (chunks) => chunks.filter((c) => c.type === 'text-delta').map((c) => c.delta).join('');
const messageText = (message) => (message?.parts ?? []).filter((p) => p.type === 'text').map((p) => p.text).join('');
const slowWords = (n) => Array.from({ length: n }, (_, i) => `w${i} `).join('');

/** Every chunk valid; the raw frames/events of the request numbered from `first` without gaps
 * or duplicates, carrying exactly the chunks the transport delivered; the stream ends once. */
async function assertWellFormed(obs, { first = 0, terminal = ['finish'], door = 'ws' } = {}) {
  for (const chunk of obs.chunks) await assertValidChunk(chunk);
  const raw = obs.raw();
  let sequences;
  let rawChunks;
  if (door === 'ws') {
    const chunkFrames = raw.filter((f) => f.type === 'chunk');
    sequences = chunkFrames.map((f) => f.sequence);
    rawChunks = chunkFrames.map((f) => f.chunk);
    if (terminal.length) assert.equal(raw.at(-1)?.type, 'end', `last frame ${JSON.stringify(raw.at(-1))}`);
  } else {
    const events = raw.filter((e) => e.data !== '[DONE]');
    sequences = events.map((e) => Number(e.id));
    rawChunks = events.map((e) => JSON.parse(e.data));
    if (terminal.length) assert.equal(raw.at(-1)?.data, '[DONE]', 'the SSE stream closes with [DONE]');
  }
  for (const chunk of rawChunks) await assertValidChunk(chunk);
  assert.deepEqual(sequences, sequences.map((_, i) => first + i), `sequences ${sequences.join(',')}`);
  assert.deepEqual(rawChunks.map((c) => c.type), obs.chunks.map((c) => c.type), 'the transport delivered every raw chunk once');
  if (terminal.length) {
    const ends = obs.chunks.filter((c) => c.type === 'finish' || c.type === 'error');
    assert.equal(ends.length, 1, `one terminal chunk, got ${JSON.stringify(ends)}`);
    assert.ok(terminal.includes(obs.chunks.at(-1).type), `ends with ${terminal}: ${JSON.stringify(obs.chunks.at(-1))}`);
  }
}

async function finishedTurn(obs, door = 'ws') {
  await obs.finished;
  assert.equal(obs.streamError, undefined, `stream error: ${obs.streamError}`);
  assert.deepEqual(obs.errors.map(String), [], 'no error chunk');
  await assertWellFormed(obs, { door });
  assert.equal(obs.chunks.at(-1).type, 'finish');
  assert.equal(obs.message?.role, 'assistant');
  return obs;
}

// Each scenario uses its own chats; users are spread over the keys so per-user caps never bite.
let keyTurn = 0;
const nextKey = () => KEYS[keyTurn++ % KEYS.length];
const clients = [];
function ws(worker, key = nextKey()) {
  const client = new WsClient(worker, key);
  clients.push(client);
  return client;
}
test.after(() => clients.forEach((c) => c.close()));

// --- scenarios -------------------------------------------------------------------------------

test(`[${BACKEND}] text over the websocket`, async () => {
  const client = ws(W1);
  const obs = await finishedTurn(await client.send(randomUUID(), 'hello from the production lane'));
  assert.match(messageText(obs.message), /hello from the production lane/);
  assert.equal(messageText(obs.message), textOf(obs.chunks));
  assert.ok(obs.chunks.some((c) => c.type === 'data-usage'), 'a data-usage chunk');
});

test(`[${BACKEND}] text over HTTP (POST /api/v1/chat/, SSE)`, async () => {
  const client = new HttpClient(W2, nextKey());
  const obs = await finishedTurn(await client.send(randomUUID(), 'hello over sse'), 'http');
  assert.equal(client.responses.at(-1).headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  assert.match(client.responses.at(-1).headers.get('content-type'), /^text\/event-stream/);
  assert.match(messageText(obs.message), /hello over sse/);
});

test(`[${BACKEND}] a tool call (/tool bash echo hi)`, async () => {
  const client = ws(W1);
  const obs = await finishedTurn(await client.send(randomUUID(), 'please /tool bash echo hi'));
  const tools = obs.message.parts.filter((p) => p.type.startsWith('tool-') || p.type === 'dynamic-tool');
  assert.equal(tools.length, 1, JSON.stringify(obs.message.parts));
  assert.equal(tools[0].state, 'output-available', JSON.stringify(tools[0]));
  assert.equal(tools[0].input.command, 'echo hi');
  assert.match(JSON.stringify(tools[0].output), /hi/);
  assert.match(messageText(obs.message), /Tool result: .*hi/s);
});

test(`[${BACKEND}] a tool call over HTTP`, async () => {
  const client = new HttpClient(W2, nextKey());
  const obs = await finishedTurn(await client.send(randomUUID(), 'please /tool bash echo hi'), 'http');
  const tool = obs.message.parts.find((p) => p.type.startsWith('tool-') || p.type === 'dynamic-tool');
  assert.equal(tool?.state, 'output-available', JSON.stringify(obs.message.parts));
});

test(`[${BACKEND}] thinking (/think)`, async () => {
  const client = ws(W2);
  const obs = await finishedTurn(await client.send(randomUUID(), 'please /think'));
  const reasoning = obs.message.parts.filter((p) => p.type === 'reasoning');
  assert.equal(reasoning.length, 1, JSON.stringify(obs.message.parts));
  assert.ok(reasoning[0].text.length > 10, 'reasoning text');
  assert.ok(obs.message.parts.findIndex((p) => p.type === 'reasoning') < obs.message.parts.findIndex((p) => p.type === 'text'));
  assert.match(messageText(obs.message), /after thinking/);
});

test(`[${BACKEND}] stop mid-turn (abort with /slow 200)`, async () => {
  const key = nextKey();
  const chatId = randomUUID();
  const client = ws(W1, key);
  const watcher = ws(W2, key); // another connection, on the other worker, sees how the turn ends
  const abort = new AbortController();
  const obs = await client.send(chatId, 'please /slow 200 100', { abortSignal: abort.signal });
  await obs.until((o) => deltas(o) >= 3, '3 deltas');
  const tab = await watcher.resume(chatId);
  assert.ok(tab, 'the turn is active');
  await tab.until((o) => deltas(o) >= 3, 'the replay');
  abort.abort();
  await obs.finished; // the transport closes the aborted request's stream at once
  await tab.finished;
  await assertWellFormed(tab);
  const end = tab.chunks.at(-1);
  assert.equal(end.type, 'finish');
  assert.equal(end.finishReason, 'stop');
  assert.deepEqual(end.messageMetadata, { stopped: true });
  assert.ok(deltas(tab) < 100, 'stopped before the end');
  // The turn itself stopped (not only this socket's view): the chat is free again.
  assert.equal(await watcher.resume(chatId), null, 'no active turn after the stop');
  await finishedTurn(await client.send(chatId, 'after the stop'));
});

test(`[${BACKEND}] resume from a second connection on the other worker`, async () => {
  const key = nextKey();
  const chatId = randomUUID();
  const first = ws(W1, key);
  const obs = await first.send(chatId, 'please /slow 60 30');
  await obs.until((o) => deltas(o) >= 3, '3 deltas');
  const second = ws(W2, key);
  const tab = await second.resume(chatId);
  assert.ok(tab, 'resume found the active turn');
  await finishedTurn(obs);
  await finishedTurn(tab);
  assert.equal(textOf(obs.chunks), slowWords(30));
  assert.deepEqual(tab.chunks, obs.chunks, 'the second connection saw the same chunks');
  assert.deepEqual(tab.message.parts, obs.message.parts);

  // The same over HTTP: GET /api/v1/chat/<id>/stream on the other worker.
  const chat2 = randomUUID();
  const sse = new HttpClient(W1, key);
  const live = await (await ws(W2, key)).send(chat2, 'please /slow 60 20');
  await live.until((o) => deltas(o) >= 2, '2 deltas');
  const resumed = await sse.resume(chat2);
  assert.ok(resumed, 'the HTTP resume found the active turn');
  await finishedTurn(resumed, 'http');
  await finishedTurn(live);
  assert.equal(messageText(resumed.message), slowWords(20));
  assert.equal(await sse.resume(chat2), null, '204 once the turn is over');
});

for (const directive of MIDSTREAM_DIRECTIVES) {
  test(`[${BACKEND}] the model fails mid-stream (${directive})`, async () => {
    const client = ws(W1);
    const chatId = randomUUID();
    const obs = await client.send(chatId, `please ${directive}`);
    await obs.finished;
    assert.equal(obs.streamError, undefined, `stream error: ${obs.streamError}`);
    await assertWellFormed(obs, { terminal: ['error'] });
    assert.equal(obs.errors.length, 1, 'readUIMessageStream reported the error chunk');
    assert.ok(obs.chunks.at(-1).errorText.length > 0);
    // The next turn works. It carries its own directive: after a failed turn the CLI sends the
    // failed user text and the new one as one user message, and the scripted model would act on
    // the older directive again (a real model would just answer).
    const next = await finishedTurn(await client.send(chatId, '/long 3 after the fault'));
    assert.equal(messageText(next.message), 'w0 w1 w2 ');
  });
}

test(`[${BACKEND}] refresh: close the socket mid-turn, reconnect, resume, get the rest`, async () => {
  const key = nextKey();
  const chatId = randomUUID();
  const before = ws(W1, key);
  const obs = await before.send(chatId, 'please /slow 60 40');
  await obs.until((o) => deltas(o) >= 5, '5 deltas');
  before.close(); // the page goes away
  await obs.finished;
  assert.ok(obs.streamError, 'the closed transport errors its stream');
  const seenFrames = before.frames.filter((f) => f.type === 'chunk');
  const lastSequence = seenFrames.at(-1).sequence;
  assert.deepEqual(seenFrames.map((f) => f.sequence), seenFrames.map((_, i) => i));

  // The reloaded page: a new transport (on the other worker) resumes; AI SDK replays from 0.
  const after = ws(W2, key);
  const replay = await after.resume(chatId);
  assert.ok(replay, 'resume found the turn');
  // And a raw resume with lastSequence gets exactly the rest.
  const rest = await rawResume(W1, key, chatId, lastSequence);
  await finishedTurn(replay);
  assert.equal(messageText(replay.message), slowWords(40), 'nothing lost, nothing twice');
  const replayFrames = replay.raw().filter((f) => f.type === 'chunk');
  assert.deepEqual(
    seenFrames.map((f) => f.chunk),
    replayFrames.slice(0, seenFrames.length).map((f) => f.chunk),
    'what the closed page saw is a prefix of the replay',
  );
  assert.equal(rest.at(-1).type, 'end');
  const restChunks = rest.filter((f) => f.type === 'chunk');
  assert.deepEqual(restChunks.map((f) => f.sequence), restChunks.map((_, i) => lastSequence + 1 + i), 'the rest from lastSequence+1, no gaps');
  for (const f of restChunks) await assertValidChunk(f.chunk);
  assert.deepEqual(
    [...seenFrames, ...restChunks].map((f) => f.chunk),
    replayFrames.map((f) => f.chunk),
    'seen + rest = the whole turn, no gaps or duplicates',
  );
});

/** `resume {lastSequence}` on a raw socket (the transport always asks for a full replay);
 * returns the request's frames up to `end`. */
function rawResume(worker, key, chatId, lastSequence) {
  return new Promise((resolve, reject) => {
    const socket = new WS(wsUrl(worker), { headers: { Authorization: `Bearer ${key}` } });
    const frames = [];
    const timer = setTimeout(() => reject(new Error('raw resume timed out')), TURN_MS);
    socket.on('open', () => socket.send(JSON.stringify({
      type: 'resume', requestId: 'raw-resume', id: chatId, lastSequence, headers: {}, body: {}, metadata: null,
    })));
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.requestId !== 'raw-resume') return;
      frames.push(frame);
      if (['end', 'error', 'no-active'].includes(frame.type)) {
        clearTimeout(timer);
        socket.close();
        resolve(frames);
      }
    });
    socket.on('error', reject);
  });
}

// --- SIGTERM (last: it takes the second worker down) ------------------------------------------

function childPids(pid) {
  const parents = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!parents.has(ppid)) parents.set(ppid, []);
      parents.get(ppid).push(Number(entry));
    } catch {}
  }
  const out = [];
  const todo = [pid];
  while (todo.length) for (const child of parents.get(todo.pop()) ?? []) out.push(child), todo.push(child);
  return out;
}

function cmdline(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
}

function alive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

test(`[${BACKEND}] SIGTERM to a worker with running turns and kept CLI clients: exits within 20 s`, async () => {
  const pid = PIDS[1];
  assert.ok(pid && alive(pid), `the second worker (pid ${pid}) runs`);
  const key = KEYS[KEYS.length - 1];
  const client = ws(W2, key);
  // Two sessions that finished a turn: their CLI processes (sdk) are kept for the next turn.
  const idleChats = [randomUUID(), randomUUID()];
  for (const chatId of idleChats) await finishedTurn(await client.send(chatId, 'a turn before the restart'));
  // Two turns running on the worker.
  const running = [];
  for (const k of [0, 1]) {
    const chatId = randomUUID();
    const obs = await ws(W2, KEYS[k]).send(chatId, 'please /slow 200 100');
    running.push({ chatId, key: KEYS[k], obs });
  }
  for (const { obs } of running) await obs.until((o) => deltas(o) >= 2, '2 deltas');
  const clis = childPids(pid).filter((p) => /claude/.test(cmdline(p)));
  if (BACKEND === 'sdk') assert.ok(clis.length >= 4, `2 kept + 2 busy CLI processes, found ${clis.length}`);

  const t0 = Date.now();
  process.kill(pid, 'SIGTERM');
  for (const { obs } of running) {
    await obs.finished;
    if (obs.streamError === undefined) {
      await assertWellFormed(obs, { terminal: ['error'] });
      assert.match(obs.chunks.at(-1).errorText, SHUTDOWN_TEXT);
    } else {
      assert.match(String(obs.streamError), /closed|network/i, 'the socket closed');
    }
  }
  while (alive(pid) && Date.now() - t0 < EXIT_LIMIT_MS + 1000) await sleep(100);
  const took = Date.now() - t0;
  assert.ok(!alive(pid), `the worker still runs ${took} ms after SIGTERM`);
  assert.ok(took < EXIT_LIMIT_MS, `exited after ${took} ms`);
  console.log(`# worker ${pid} exited ${took} ms after SIGTERM (${clis.length} CLI processes)`);
  await sleep(500);
  const left = clis.filter(alive);
  assert.deepEqual(left, [], `CLI processes outlived their worker: ${left.map(cmdline)}`);

  // The other worker carries on: the interrupted chats are free, their partial answers kept.
  for (const { chatId, key: k, obs } of running) {
    const other = ws(W1, k);
    assert.equal(await other.resume(chatId), null, 'no active turn left behind');
    await finishedTurn(await other.send(chatId, 'after the restart'));
    const page = await new HttpClient(W1, k).get(`/api/v1/sessions/${chatId}/messages/`);
    const rows = page.results ?? page;
    const interrupted = rows.filter((m) => m.role === 'assistant')[0];
    assert.ok(interrupted, JSON.stringify(rows).slice(0, 500));
    assert.ok(textOf(obs.chunks).startsWith('w0 '), 'the client saw the start of the answer');
    const keptText = (interrupted.parts ?? []).filter((p) => p.type === 'text').map((p) => p.text).join('') || interrupted.text || '';
    assert.equal(keptText, textOf(obs.chunks), 'the partial answer the client saw is kept');
  }
  await finishedTurn(await ws(W1, key).send(idleChats[0], 'the next turn of a kept session, elsewhere'));
});
