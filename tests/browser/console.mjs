// Drives the web console in headless Chromium against the server; run by tests/browser.rs.
//
//   node console.mjs '<json options>'
//
// Options: { url (the console page), user, token (a subscriber JWT, or ""), api_key (or ""),
// screenshot (a PNG path, or "") }. The script uses the page as a person would: connects as
// `user` over WebSocket, pushes from the page's form, checks the frame shows up in the page's
// list and the stats count the connection; the same over SSE, then a resume over SSE; then takes
// a screenshot. It prints one JSON line per step (`{"kind":"step",...}`) and last
// `{"kind":"result","ok":...,"problems":[...],...}`.
// Exit status: 0 if every check passed, 1 if one failed, 2 on error or timeout.
//
// Environment: CHROMIUM_PATH (default /usr/bin/chromium), BROWSER_TEST_TIMEOUT_MS (default 60000); the launch, the timeout and the result line are driver.mjs's.

import { elapsed, emit, end, exitAfter, launch, sleep } from './driver.mjs';

const options = JSON.parse(process.argv[2] ?? '{}');
if (!options.url || !options.user) {
  process.stderr.write("usage: node console.mjs '{\"url\":…,\"user\":…}'\n");
  process.exit(2);
}
/** Longest wait for one thing to show up in the page. */
const STEP_MS = 10000;
const step = (name, detail = {}) => emit({ kind: 'step', name, ms: elapsed(), ...detail });

let browser;
const problems = [];
const observed = { websocket_urls: [], stream_urls: [], script_urls: [], pushes: [], frames: {} };

exitAfter(60000, () => ({ problems, observed }));

function expect(condition, message) {
  if (!condition) problems.push(message);
  return condition;
}

async function main() {
  browser = await launch();
  const context = await browser.newContext({
    viewport: { width: 1440, height: 960 },
    deviceScaleFactor: 1,
    colorScheme: 'light',
  });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const errors = [];
  page.on('pageerror', (error) => errors.push(`page error: ${error}`));
  page.on('console', (message) => {
    // CSP violations and failed loads are reported as console errors; the 401s are expected (a
    // push, and the stats, before the API key is filled in).
    const expected = /the server responded with a status of 401/.test(message.text());
    if (message.type() === 'error' && !expected) errors.push(`console error: ${message.text()}`);
  });
  page.on('websocket', (socket) => observed.websocket_urls.push(socket.url()));
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (request.headers().accept === 'text/event-stream') observed.stream_urls.push(url.href);
    if (request.resourceType() === 'script') observed.script_urls.push(url.pathname);
    if (url.protocol.startsWith("http") && url.origin !== new URL(options.url).origin) errors.push(`a request to another origin: ${url.href}`);
  });

  const response = await page.goto(options.url, { waitUntil: 'load' });
  observed.page_status = response.status();
  observed.page_headers = await response.allHeaders();
  observed.config = await page.evaluate(() =>
    JSON.parse(document.getElementById('console-config').textContent),
  );
  await page.waitForSelector('#health[data-state="ok"]');
  step('loaded', { config: observed.config });

  // The forms, as a person fills them.
  await page.fill('#connect-user', options.user);
  expect(
    (await page.inputValue('#push-user')) === options.user,
    'the push form did not take the connect form’s user id',
  );
  if (options.token) await page.fill('#connect-token', options.token);

  // Data validation: invalid JSON, then an array, are refused in the page.
  await page.fill('#push-data', '{"oops": ');
  await page.waitForSelector('#push-data-error:not([hidden])');
  expect(await page.isDisabled('#push-button'), 'push enabled with invalid JSON');
  observed.invalid_json_error = await page.textContent('#push-data-error');
  await page.fill('#push-data', '[1, 2]');
  observed.array_error = await page.textContent('#push-data-error');
  expect(/object/.test(observed.array_error), `an array was not refused: ${observed.array_error}`);

  if (options.api_key) {
    // Without the key, the page shows the server's 401.
    const refused = await pushFromPage(page, 'message', { step: 'no key' }, { expectStatus: 401 });
    expect(refused.status === 401, `a push without the API key got ${refused.status}`);
    await page.fill('#push-key', options.api_key);
  }

  // WebSocket.
  await chooseTransport(page, 'websocket');
  await page.click('#connect-button');
  await page.waitForSelector('#connection-status[data-state="open"]');
  step('websocket open');
  await waitForStats(page, { connections: '1', websocket: '1', sse: '0', users: '1' });
  step('stats show the WebSocket');
  const wsPush = await pushFromPage(page, 'greeting', { hello: 'over WebSocket', n: 1 });
  observed.frames.websocket = await frameFor(page, wsPush.body.event_id);
  step('websocket frame shown', { frame: observed.frames.websocket });
  // A text frame from the page, answered with an ack.
  await page.fill('#send-text', 'hello server');
  await page.click('#send-button');
  const ack = await page.waitForSelector('#frames li[data-event-type="ack"]');
  observed.ack = JSON.parse(await ack.$eval('pre', (pre) => pre.textContent));
  await page.click('#disconnect-button');
  await page.waitForSelector('#connection-status[data-state="idle"]');
  await waitForStats(page, { connections: '0' });
  step('websocket closed');

  // SSE.
  await chooseTransport(page, 'sse');
  await page.click('#connect-button');
  await page.waitForSelector('#connection-status[data-state="open"]');
  step('sse open');
  await waitForStats(page, { connections: '1', websocket: '0', sse: '1', users: '1' });
  step('stats show the SSE stream');
  const ssePush = await pushFromPage(page, 'alert', { hello: 'over SSE', level: 'info' });
  observed.frames.sse = await frameFor(page, ssePush.body.event_id);
  step('sse frame shown', { frame: observed.frames.sse });

  // Resume: a push while disconnected arrives on reconnect with "resume" ticked.
  await page.click('#disconnect-button');
  await page.waitForSelector('#connection-status[data-state="idle"]');
  observed.resume_from = await page.textContent('#last-event-id');
  const missed = await pushFromPage(page, 'message', { missed: 'while away' });
  expect(missed.body.delivered === 0, `pushed while away but delivered: ${JSON.stringify(missed.body)}`);
  await page.check('#connect-resume');
  await page.click('#connect-button');
  await page.waitForSelector('#connection-status[data-state="open"]');
  observed.frames.resumed = await frameFor(page, missed.body.event_id);
  step('missed frame replayed', { frame: observed.frames.resumed });

  // A few more pushes, spread out, so the chart and the list look like a working day.
  // Meanwhile an upstream pushes to this user and to others who are offline (stored, not
  // delivered), at a varying rate.
  const upstream = backgroundPushes(observed.config.sse_path, 7000);
  const extra = [
    ['order_update', { order_id: 'A-1042', status: 'shipped', carrier: 'DHL' }],
    ['message', { message: 'Your report is ready', url: '/reports/2024-06' }],
    ['order_update', { order_id: 'A-1043', status: 'packed' }],
    ['notification', { title: 'New comment', by: 'sam', unread: 3 }],
  ];
  for (const [type, data] of extra) {
    await pushFromPage(page, type, data);
    await sleep(1200);
  }
  observed.background_pushes = await upstream;
  await page.waitForFunction(() => Number(document.getElementById('chart').dataset.samples) >= 5);
  observed.rates_seen = await page.evaluate(() => ({
    samples: Number(document.getElementById('chart').dataset.samples),
    pushes_total: document.getElementById('stat-pushes-total').textContent,
    deliveries_total: document.getElementById('stat-deliveries-total').textContent,
  }));
  observed.frame_count = await page.$$eval('#frames li[data-kind="frame"]', (items) => items.length);
  observed.frame_types = await page.$$eval('#frames li[data-kind="frame"]', (items) =>
    items.map((item) => `${item.dataset.transport}:${item.dataset.eventType}`),
  );
  if (options.screenshot) {
    await page.fill('#push-data', '{\n  "message": "Hello from the console!",\n  "priority": "high"\n}');
    await page.fill('#push-type', 'message');
    await sleep(1200); // one more poll, and the arrival highlight has faded
    await page.screenshot({ path: options.screenshot });
    step('screenshot', { path: options.screenshot });
  }

  await page.click('#disconnect-button');
  await page.waitForSelector('#connection-status[data-state="idle"]');
  problems.push(...errors);
  await end(
    { ok: problems.length === 0, problems, browser: `chromium ${browser.version()}`, observed },
    problems.length === 0 ? 0 : 1,
  );
}

/** Pushes from here (an upstream service) for `ms` milliseconds; resolves to how many were accepted. */
async function backgroundPushes(path, ms) {
  const url = new URL(path, options.url).href;
  const users = [options.user, 'alice', 'bob', 'carol', 'dave'];
  const headers = { 'Content-Type': 'application/json' };
  if (options.api_key) headers.Authorization = `Bearer ${options.api_key}`;
  const until = Date.now() + ms;
  let accepted = 0;
  for (let round = 0; Date.now() < until; round += 1) {
    const burst = 1 + ((round * 7) % 5);
    for (let i = 0; i < burst; i += 1) {
      const user = users[(round + i) % users.length];
      const body = { user_id: user, event_type: 'price', data: { symbol: 'ACME', price: 100 + ((round * 13 + i) % 17) / 4 } };
      const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(STEP_MS) });
      if (response.ok) accepted += 1;
      else problems.push(`an upstream push got ${response.status}`);
    }
    await sleep(400);
  }
  return accepted;
}

async function chooseTransport(page, transport) {
  await page.click(`#transport label:has(input[value="${transport}"]) span`);
  expect(
    await page.isChecked(`input[name="transport"][value="${transport}"]`),
    `${transport} not selected`,
  );
}

/** Pushes from the page's form; returns { status, body } as the page shows them. */
async function pushFromPage(page, type, data, { expectStatus = 200 } = {}) {
  await page.evaluate(() => {
    delete document.getElementById('push-result').dataset.status;
  });
  await page.fill('#push-type', type);
  await page.fill('#push-data', JSON.stringify(data, null, 2));
  await page.click('#push-button');
  const result = await page.waitForSelector('#push-result[data-status]');
  const status = Number(await result.getAttribute('data-status'));
  const body = JSON.parse(await page.textContent('#push-response'));
  observed.pushes.push({ type, status, event_id: body.event_id ?? null, delivered: body.delivered ?? null });
  if (status !== expectStatus) {
    throw new Error(`push ${type}: HTTP ${status}, expected ${expectStatus}: ${JSON.stringify(body)}`);
  }
  return { status, body };
}

/** Waits for the frame of `eventId` in the page's list; returns what the page shows of it. */
async function frameFor(page, eventId) {
  const item = await page.waitForSelector(`#frames li[data-kind="frame"][data-event-id="${eventId}"]`);
  return {
    transport: await item.getAttribute('data-transport'),
    event_type: await item.getAttribute('data-event-type'),
    time: await item.$eval('.time', (node) => node.textContent),
    json: JSON.parse(await item.$eval('pre', (pre) => pre.textContent)),
  };
}

/** Waits until the stats tiles show these values (they are polled every second). */
async function waitForStats(page, wanted) {
  try {
    await page.waitForFunction((values) => {
      return Object.entries(values).every(
        ([name, value]) => document.getElementById(`stat-${name}`).textContent === value,
      );
    }, wanted);
  } catch (error) {
    const shown = await page.evaluate(() =>
      Object.fromEntries(
        ['connections', 'websocket', 'sse', 'users'].map((name) => [
          name,
          document.getElementById(`stat-${name}`).textContent,
        ]),
      ),
    );
    const note = await page.textContent('#stats-note');
    throw new Error(`stats never showed ${JSON.stringify(wanted)}: ${JSON.stringify(shown)} (${note})`);
  }
}

main().catch((error) =>
  end({ ok: false, problems: [...problems, `error: ${error?.stack ?? error}`], observed }, 2),
);
