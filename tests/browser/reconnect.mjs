// Runs one of the documented reconnecting clients (docs/examples/*.js) in headless Chromium
// against the server; run by tests/browser/reconnect.rs.
//
//   node reconnect.mjs <page_url>
//
// <page_url> serves reconnect.html with its query (server, example), the example files and the
// page's token endpoint. The script opens it; the page loads the example, which connects at once.
// Every record the page makes (`token`, `connect`, `open`, `close`, `error`, `event`, `stopped`,
// …) is printed as a JSON line as it happens, so the caller can act on them; a line `finish` on
// stdin (or its end) makes it print `{"kind":"result","ok":…,"problems":[…],"log":[…]}` with the
// page's whole record. The checks are the caller's; `ok` only says the page threw nothing.
// Exit status: 0 if the page threw nothing, 1 if it did, 2 on error or timeout.
//
// Environment: CHROMIUM_PATH (default /usr/bin/chromium), BROWSER_TEST_TIMEOUT_MS (default
// 40000); the launch, the timeout and the result line are driver.mjs's.

import { emit, end, exitAfter, launch, waitForFinish } from './driver.mjs';

const [pageUrl] = process.argv.slice(2);
if (!pageUrl) {
  process.stderr.write('usage: node reconnect.mjs <page_url>\n');
  process.exit(2);
}

exitAfter(40000);

async function main() {
  const browser = await launch();
  const page = await (await browser.newContext()).newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error}`));
  page.on('console', (message) => emit({ kind: 'console', type: message.type(), text: message.text() }));
  await page.exposeFunction('report', (entry) => emit(entry));
  await page.goto(pageUrl, { waitUntil: 'load' });

  await waitForFinish();

  const log = await page.evaluate(() => window.log);
  const ok = problems.length === 0;
  await end({ ok, problems, browser: `chromium ${browser.version()}`, log }, ok ? 0 : 1);
}

main().catch((error) => end({ ok: false, problems: [`error: ${error?.stack ?? error}`] }, 2));
