// Drives the web console in headless Chromium through the ways a connection ends; run by
// tests/browser/console.rs.
//
//   node console-reconnect.mjs '<json options>'
//
// Options: { url (the console page), user (a prefix for this script's user ids), jwt_secret (the
// server's HS256 secret: the script mints its tokens), push_path and batch_path (where to push) }.
// For each transport (WebSocket, then SSE) the script, as a person at the page would:
//   1. forbidden: connects with a token for another user than the user id field; the console must
//      stop with the server's reason and make no further attempt;
//   2. slow consumer: pushes a burst the server cannot queue for the console, which is closed as a
//      slow consumer; the console must reconnect by itself, resuming, and end up with every event
//      once, in order, and an event pushed after the reconnect;
//   3. token expiry: connects with a token that expires seconds later; the console must stop,
//      say so, tick "resume" and focus the token field; with a fresh token, Connect resumes and
//      the event pushed meanwhile arrives.
// It prints one JSON line per step (`{"kind":"step",...}`) and last
// `{"kind":"result","ok":...,"problems":[...],"observed":{...}}`.
// Exit status: 0 if every check passed, 1 if one failed, 2 on error or timeout.
//
// Environment: CHROMIUM_PATH (default /usr/bin/chromium), BROWSER_TEST_TIMEOUT_MS (default 90000); the launch, the timeout and the result line are driver.mjs's.

import { createHmac } from 'node:crypto';
import { elapsed, emit, end, exitAfter, launch, sleep } from './driver.mjs';

const options = JSON.parse(process.argv[2] ?? '{}');
if (!options.url || !options.user || !options.jwt_secret || !options.push_path || !options.batch_path) {
  process.stderr.write(
    "usage: node console-reconnect.mjs '{\"url\":…,\"user\":…,\"jwt_secret\":…,\"push_path\":…,\"batch_path\":…}'\n",
  );
  process.exit(2);
}
/** Longest wait for one thing to show up in the page. */
const STEP_MS = 10000;
/** How long the console must stay quiet after it stopped, to show it makes no further attempt. */
const QUIET_MS = 2000;
/** Lifetime of the token that expires during the session, in seconds (at least this minus 1). */
const SHORT_TOKEN_SECONDS = 4;
/** The burst that makes the console a slow consumer: this many events of PAD_BYTES each. */
const BURST = 20;
const PAD_BYTES = 40 * 1024;
const step = (name, detail = {}) => emit({ kind: 'step', name, ms: elapsed(), ...detail });

let browser;
const problems = [];
const observed = {};
/** Every connection attempt the page made: { transport, url }. */
const attempts = [];

exitAfter(90000, () => ({ problems, observed }));

function expect(condition, message) {
  if (!condition) problems.push(message);
  return condition;
}

/** An HS256 subscriber token for `sub`, expiring `seconds` from now. */
function mint(sub, seconds) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, iat: now, exp: now + seconds })}`;
  const signature = createHmac('sha256', options.jwt_secret).update(signed).digest('base64url');
  return `${signed}.${signature}`;
}

async function main() {
  browser = await launch();
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  const errors = [];
  page.on('pageerror', (error) => errors.push(`page error: ${error}`));
  page.on('console', (message) => {
    // The refused stream requests (403) are expected; the stats poll needs no key here.
    const expected = /the server responded with a status of 403/.test(message.text());
    if (message.type() === 'error' && !expected) errors.push(`console error: ${message.text()}`);
  });
  page.on('websocket', (socket) => attempts.push({ transport: 'websocket', url: socket.url() }));
  page.on('request', (request) => {
    if (request.headers().accept === 'text/event-stream') {
      attempts.push({ transport: 'sse', url: request.url() });
    }
  });
  await page.goto(options.url, { waitUntil: 'load' });
  await page.waitForSelector('#health[data-state="ok"]');
  step('loaded');

  for (const transport of ['websocket', 'sse']) {
    await page.click(`#transport label:has(input[value="${transport}"]) span`);
    observed[transport] = {
      forbidden: await forbidden(page, transport),
      slow_consumer: await slowConsumer(page, transport),
      token_expiry: await tokenExpiry(page, transport),
    };
  }
  problems.push(...errors);
  const result = { ok: problems.length === 0, problems, browser: `chromium ${browser.version()}`, observed };
  await end(result, problems.length === 0 ? 0 : 1);
}

/** 1. A token for another user than the user id field: the console stops, and stays stopped. */
async function forbidden(page, transport) {
  const user = `${options.user}-${transport}-mismatch`;
  await page.fill('#connect-user', user);
  await page.fill('#connect-token', mint(`${user}-other`, 600));
  const before = attempts.length;
  await page.click('#connect-button');
  const status = await waitForStatus(page, 'error');
  await sleep(QUIET_MS);
  const seen = {
    status,
    attempts: attempts.length - before,
    status_after_quiet: await page.textContent('#connection-status'),
  };
  expect(/forbidden: the user id is not the token's/.test(status), `${transport}: forbidden said ${status}`);
  expect(seen.attempts === 1, `${transport}: ${seen.attempts} attempts after a 403`);
  expect(seen.status_after_quiet === status, `${transport}: the status changed after stopping`);
  expect(!(await page.isDisabled('#connect-button')), `${transport}: Connect stayed disabled`);
  step(`${transport}: forbidden stops`, seen);
  return seen;
}

/** 2. Closed as a slow consumer: the console reconnects by itself, resuming without a gap. */
async function slowConsumer(page, transport) {
  const user = `${options.user}-${transport}-slow`;
  await page.click('#clear-button');
  await page.fill('#connect-user', user);
  await page.fill('#connect-token', mint(user, 600));
  await page.uncheck('#connect-resume');
  const before = attempts.length;
  await page.click('#connect-button');
  await waitForStatus(page, 'open');
  const pushed = [(await push(user, { n: 0 })).event_id];
  await frameFor(page, pushed[0]);

  const pad = 'x'.repeat(PAD_BYTES);
  const burst = await pushBatch(
    Array.from({ length: BURST }, (_, i) => ({ user_id: user, data: { n: i + 1, pad } })),
  );
  pushed.push(...burst.map((result) => result.event_id));
  const notice = await waitForSystemLine(page, /^reconnecting in [\d.]+ s \(slow consumer\)$/);
  await page.waitForFunction(
    ([count]) => {
      const frames = document.querySelectorAll('#frames li[data-kind="frame"]');
      return [...frames].filter((item) => item.dataset.eventType !== 'close').length >= count;
    },
    [pushed.length],
  );
  await waitForStatus(page, 'open');
  const after = await push(user, { n: 'after the reconnect' });
  pushed.push(after.event_id);
  await frameFor(page, after.event_id);
  const urls = attempts.slice(before).map((attempt) => attempt.url);
  const seen = { notice, urls, received: await receivedIds(page), pushed };
  expect(urls.length === 2, `${transport}: ${urls.length} connections, expected 2: ${urls}`);
  expect(!/last_event_id=/.test(urls[0] ?? ''), `${transport}: the first connection resumed`);
  expect(
    /last_event_id=/.test(urls[1] ?? ''),
    `${transport}: the reconnect did not resume (the box was not ticked, it must anyway): ${urls[1]}`,
  );
  expect(
    JSON.stringify(seen.received) === JSON.stringify(pushed),
    `${transport}: received ${JSON.stringify(seen.received)}, pushed ${JSON.stringify(pushed)}`,
  );
  step(`${transport}: reconnected after a slow consumer`, { notice, urls });
  await page.click('#disconnect-button');
  await waitForStatus(page, 'idle');
  return seen;
}

/** 3. The token expires: the console stops and asks for a fresh one; Connect then resumes. */
async function tokenExpiry(page, transport) {
  const user = `${options.user}-${transport}-expiry`;
  await page.click('#clear-button');
  await page.fill('#connect-user', user);
  await page.fill('#connect-token', mint(user, SHORT_TOKEN_SECONDS));
  await page.uncheck('#connect-resume');
  const before = attempts.length;
  await page.click('#connect-button');
  await waitForStatus(page, 'open');
  const first = await push(user, { n: 'before the expiry' });
  await frameFor(page, first.event_id);
  const status = await waitForStatus(page, 'error', (SHORT_TOKEN_SECONDS + 1) * 1000 + STEP_MS);
  const stopped = {
    status,
    resume_ticked: await page.isChecked('#connect-resume'),
    focused: await page.evaluate(() => document.activeElement?.id ?? null),
  };
  await sleep(QUIET_MS);
  stopped.attempts = attempts.length - before;
  expect(
    status === `token expired: paste a fresh token and press Connect — it resumes from ${first.event_id}`,
    `${transport}: token expiry said ${status}`,
  );
  expect(stopped.resume_ticked, `${transport}: "resume" not ticked after the expiry`);
  expect(stopped.focused === 'connect-token', `${transport}: focus on ${stopped.focused}`);
  expect(stopped.attempts === 1, `${transport}: ${stopped.attempts} attempts after the expiry`);

  const missed = await push(user, { n: 'while the token was expired' });
  expect(missed.delivered === 0, `${transport}: delivered while stopped: ${JSON.stringify(missed)}`);
  await page.fill('#connect-token', mint(user, 600));
  await page.click('#connect-button');
  await waitForStatus(page, 'open');
  await frameFor(page, missed.event_id);
  const urls = attempts.slice(before).map((attempt) => attempt.url);
  const seen = { ...stopped, urls, received: await receivedIds(page) };
  expect(
    (urls[1] ?? '').includes(`last_event_id=${encodeURIComponent(first.event_id)}`),
    `${transport}: Connect after the expiry did not resume from ${first.event_id}: ${urls[1]}`,
  );
  expect(
    JSON.stringify(seen.received) === JSON.stringify([first.event_id, missed.event_id]),
    `${transport}: received ${JSON.stringify(seen.received)}`,
  );
  step(`${transport}: token expiry, then resumed with a fresh token`, seen);
  await page.click('#disconnect-button');
  await waitForStatus(page, 'idle');
  return seen;
}

/** Waits for the connection status to be in `state`; returns its text. */
async function waitForStatus(page, state, timeout = STEP_MS) {
  try {
    await page.waitForSelector(`#connection-status[data-state="${state}"]`, { timeout });
  } catch (error) {
    const shown = await page.textContent('#connection-status');
    throw new Error(`the status never became ${state} (it says: ${shown}): ${error.message}`);
  }
  return page.textContent('#connection-status');
}

/** Waits for a line about the connection matching `pattern` in the frame list; returns it. */
async function waitForSystemLine(page, pattern) {
  try {
    const handle = await page.waitForFunction(
      ([source, flags]) => {
        const wanted = new RegExp(source, flags);
        const lines = [...document.querySelectorAll('#frames li[data-kind="system"] .text')];
        return lines.map((line) => line.textContent).find((text) => wanted.test(text)) ?? false;
      },
      [pattern.source, pattern.flags],
    );
    return await handle.jsonValue();
  } catch (error) {
    const lines = await page.$$eval('#frames li[data-kind="system"] .text', (items) =>
      items.map((item) => item.textContent),
    );
    throw new Error(`no line matching ${pattern} among ${JSON.stringify(lines)}: ${error.message}`);
  }
}

/** The ids of the events in the page's list, oldest first (the list shows the newest first). */
async function receivedIds(page) {
  const ids = await page.$$eval('#frames li[data-kind="frame"]', (items) =>
    items.filter((item) => item.dataset.eventType !== 'close').map((item) => item.dataset.eventId),
  );
  return ids.reverse();
}

async function frameFor(page, eventId) {
  await page.waitForSelector(`#frames li[data-kind="frame"][data-event-id="${eventId}"]`);
}

async function post(path, body) {
  const response = await fetch(new URL(path, options.url), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`POST ${path}: HTTP ${response.status}: ${JSON.stringify(answer)}`);
  return answer;
}

/** Pushes one event to `user` (as an upstream service would); returns the push response. */
async function push(user, data) {
  return post(options.push_path, { user_id: user, data });
}

/** Pushes a batch; returns its per-item results. */
async function pushBatch(messages) {
  return (await post(options.batch_path, messages)).results;
}

main().catch(async (error) => {
  observed.page_at_error = await pageState().catch((why) => `unavailable: ${why}`);
  end({ ok: false, problems: [...problems, `error: ${error?.stack ?? error}`], observed }, 2);
});

/** What the page shows of its connection, for the report of a failure. */
async function pageState() {
  const [page] = browser.contexts().flatMap((context) => context.pages());
  return {
    status: await page.textContent('#connection-status'),
    lines: await page.$$eval('#frames li .meta', (items) => items.map((item) => item.textContent)),
  };
}
