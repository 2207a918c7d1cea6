// The peer baseline of issue 21: the canonical AI SDK chat backend on node:http.
//   node server.mjs --port 8123 --model-url http://127.0.0.1:PORT [--model claude-sonnet-5-5]
// POST (any path) with {messages} → streamText({model: anthropic(model), messages:
// await convertToModelMessages(messages)}) → result.toUIMessageStreamResponse(), its body piped
// to the Node response. The provider reads the same scripted model as the Django server
// (createAnthropic with baseURL <model-url>/v1). bench/bench_peer.py starts it.
import http from 'node:http';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { createAnthropic } from '@ai-sdk/anthropic';
import { convertToModelMessages, streamText } from 'ai';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '8123' },
    host: { type: 'string', default: '127.0.0.1' },
    'model-url': { type: 'string' },
    model: { type: 'string', default: 'claude-sonnet-5-5' },
  },
});
if (!args['model-url']) {
  console.error('--model-url is required');
  process.exit(2);
}
const anthropic = createAnthropic({ baseURL: `${args['model-url'].replace(/\/$/, '')}/v1`, apiKey: 'x' });

async function readJson(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return JSON.parse(Buffer.concat(parts).toString('utf8'));
}

async function chat(req, res) {
  const { messages } = await readJson(req);
  const result = streamText({
    model: anthropic(args.model),
    messages: await convertToModelMessages(messages),
  });
  const response = result.toUIMessageStreamResponse();
  res.writeHead(response.status, Object.fromEntries(response.headers));
  Readable.fromWeb(response.body).pipe(res);
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST') {
    res.writeHead(req.url === '/health' ? 200 : 405).end();
    return;
  }
  chat(req, res).catch((err) => {
    console.error(err);
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(err));
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(args.port), args.host, () => {
  console.log(`peer listening on http://${args.host}:${args.port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
