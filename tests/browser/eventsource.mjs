// Drives a real EventSource in headless Chromium against the server; run by tests/browser.rs.
//
//   node eventsource.mjs <page_url> <server_url> <user_id> [<event types besides "message">]
//
// <page_url> serves eventsource.html (from another origin than <server_url>, to make the stream
// cross-origin). The script opens it, which opens `GET <server_url>/sse/stream?user_id=<user_id>`.
// While it runs it prints one JSON line per thing that happens (`created`, `request`, `open`,
// `error`, `event`, `console`), so the caller can act on them; a line `finish` on stdin (or its
// end) makes it check what the page received and print the last line, `{"kind":"result",...}`.
// Exit status: 0 if every check passed, 1 if one failed, 2 on error or timeout.
//
// Environment: CHROMIUM_PATH (default /usr/bin/chromium), BROWSER_TEST_TIMEOUT_MS (default 25000);
// the launch, the timeout and the result line are driver.mjs's.

import { emit, end, exitAfter, launch, sleep, waitForFinish } from './driver.mjs';

const [pageUrl, serverUrl, userId, typesArg = ''] = process.argv.slice(2);
if (!pageUrl || !serverUrl || !userId) {
  process.stderr.write('usage: node eventsource.mjs <page_url> <server_url> <user_id> [types]\n');
  process.exit(2);
}
const serverOrigin = new URL(serverUrl).origin;
// The outbound JSON's fields, in the wire contract's order.
const FIELDS = ['event_type', 'event_id', 'user_id', 'timestamp', 'data'];

exitAfter(25000);

/** Everything that is wrong with what the page saw, as readable sentences. */
function check(log, failures) {
  const problems = [...failures];
  const created = log.find((entry) => entry.kind === 'created');
  if (!created) {
    problems.push('the page never created its EventSource');
  } else if (created.page_origin === serverOrigin) {
    problems.push(`the page is same-origin with the server (${serverOrigin}); it should not be`);
  }
  const seen = new Set();
  const events = [];
  for (const entry of log.filter((e) => e.kind === 'event')) {
    const where = `event #${events.length + 1} (${entry.type}, lastEventId ${entry.last_event_id})`;
    let parsed;
    try {
      parsed = JSON.parse(entry.data);
    } catch (error) {
      problems.push(`${where}: data is not JSON: ${entry.data}`);
      continue;
    }
    events.push({ type: entry.type, last_event_id: entry.last_event_id, event: parsed });
    if (entry.type === 'resync') problems.push(`${where}: a resync notice: ${entry.data}`);
    const keys = Object.keys(parsed);
    if (JSON.stringify(keys) !== JSON.stringify(FIELDS)) {
      problems.push(`${where}: fields ${keys.join(',')}, expected ${FIELDS.join(',')}`);
    }
    if (parsed.event_type !== entry.type) {
      problems.push(`${where}: dispatched as "${entry.type}", event_type "${parsed.event_type}"`);
    }
    if (parsed.event_id !== entry.last_event_id) {
      problems.push(`${where}: lastEventId differs from event_id ${parsed.event_id}`);
    }
    if (parsed.user_id !== userId) problems.push(`${where}: user_id ${parsed.user_id}`);
    if (typeof parsed.timestamp !== 'number') problems.push(`${where}: timestamp not a number`);
    if (typeof parsed.data !== 'object' || parsed.data === null || Array.isArray(parsed.data)) {
      problems.push(`${where}: data is not an object`);
    }
    if (entry.origin !== serverOrigin) {
      problems.push(`${where}: origin ${entry.origin}, expected ${serverOrigin}`);
    }
    if (seen.has(parsed.event_id)) problems.push(`${where}: received twice`);
    seen.add(parsed.event_id);
  }
  return { problems, events, created };
}

async function main() {
  const browser = await launch();
  const context = await browser.newContext();
  const page = await context.newPage();
  const failures = [];
  const requests = [];
  const pendingHeaders = [];

  page.on('pageerror', (error) => failures.push(`page error: ${error}`));
  page.on('console', (message) => emit({ kind: 'console', type: message.type(), text: message.text() }));
  page.on('request', (request) => {
    if (!request.url().startsWith(`${serverOrigin}/sse/stream`)) return;
    const entry = { url: request.url(), last_event_id: null, origin: null };
    requests.push(entry);
    // Chromium adds Last-Event-ID itself, below the page: only the full headers, which come in
    // a separate DevTools event, have it (request.headers() does not). Wait for them, not forever.
    const unavailable = sleep(5000).then(() => {
      throw new Error('no full request headers within 5 s');
    });
    pendingHeaders.push(
      Promise.race([request.allHeaders(), unavailable])
        .then((headers) => {
          entry.last_event_id = headers['last-event-id'] ?? null;
          entry.origin = headers.origin ?? null;
        })
        .catch((error) => failures.push(`request #${requests.indexOf(entry) + 1}: ${error}`))
        .finally(() => emit({ kind: 'request', n: requests.indexOf(entry) + 1, ...entry })),
    );
  });
  await page.exposeFunction('report', (entry) => emit(entry));

  const url = new URL(pageUrl);
  url.searchParams.set('server', serverUrl);
  url.searchParams.set('user_id', userId);
  url.searchParams.set('types', typesArg);
  await page.goto(url.href, { waitUntil: 'load' });

  await waitForFinish();

  const readyState = await page.evaluate(() => window.source.readyState);
  await page.evaluate(() => window.source.close());
  const log = await page.evaluate(() => window.log);
  await Promise.all(pendingHeaders);
  const { problems, events, created } = check(log, failures);
  if (readyState === 2) problems.push('the EventSource gave up (readyState CLOSED)');
  await end(
    {
      ok: problems.length === 0,
      problems,
      browser: `chromium ${browser.version()}`,
      page_origin: created?.page_origin ?? null,
      server_origin: serverOrigin,
      ready_state: readyState,
      opens: log.filter((entry) => entry.kind === 'open').length,
      errors: log.filter((entry) => entry.kind === 'error').length,
      requests,
      events,
    },
    problems.length === 0 ? 0 : 1,
  );
}

main().catch((error) => end({ ok: false, problems: [`error: ${error?.stack ?? error}`] }, 2));
