// Runs the official client (clients/js/push-client.js) in Node 22+ against the server, with
// Node's own global WebSocket and fetch (no browser, no EventSource); run by
// tests/browser/push_client.rs.
//
//   node node-client.mjs <server_url> <token_url> <transport>
//
// <token_url> answers each GET with a fresh subscriber token. Every record (`token`, `connect`,
// `open`, `close`, `event`, `resync`, `stopped`) is printed as a JSON line as it happens, in the
// shape the browser page (reconnect.html) records; a line `finish` on stdin (or its end) makes it
// print `{"kind":"result","ok":…,"log":[…]}` and exit.

import { createInterface } from 'node:readline';

import { PushClient } from '../../clients/js/push-client.js';

const [server, tokenUrl, transport] = process.argv.slice(2);
if (!transport) {
  process.stderr.write('usage: node node-client.mjs <server_url> <token_url> <transport>\n');
  process.exit(2);
}

const started = performance.now();
const log = [];
function record(entry) {
  entry.at_ms = Math.round(performance.now() - started);
  log.push(entry);
  process.stdout.write(`${JSON.stringify(entry)}\n`);
}

async function fetchToken() {
  const response = await fetch(tokenUrl, { cache: 'no-store' });
  if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
  record({ kind: 'token' });
  return response.text();
}

const client = new PushClient(server, {
  token: fetchToken,
  transport,
  reconnect: { initialDelayMs: 200, maxDelayMs: 1000 },
});
client.addEventListener('message', ({ detail }) => record({ kind: 'event', event: detail }));
client.addEventListener('resync', () => record({ kind: 'resync' }));
client.addEventListener('state', ({ detail }) => {
  if (detail.url !== undefined) record({ kind: 'connect', url: detail.url, transport: client.transport });
  else if (detail.state === 'open') record({ kind: 'open' });
  else if (detail.state === 'reconnecting') record({ kind: 'close', cause: detail.cause, reason: detail.reason });
});
client.addEventListener('error', ({ detail }) => {
  if (detail.final) record({ kind: 'stopped', why: detail.error.message });
});
client.connect();

const overall = setTimeout(() => finish(2), Number(process.env.BROWSER_TEST_TIMEOUT_MS || 40000));
createInterface({ input: process.stdin })
  .on('line', (line) => line.trim() === 'finish' && finish(0))
  .on('close', () => finish(0));

function finish(status) {
  clearTimeout(overall);
  client.close();
  const result = { kind: 'result', ok: status === 0, node: process.version, log };
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(status));
}
