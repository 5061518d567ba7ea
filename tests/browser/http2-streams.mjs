// Opens http2-streams.html (ten EventSources to one HTTPS origin) in headless Chromium, trusting
// the test's self-signed certificate by its public key; run by tests/browser/http2.rs.
//
//   node http2-streams.mjs <page_url> <spki_sha256_base64>
//
// Every record the page makes (`open`, `event`, `error`, `pushed`) is printed as a JSON line as it
// happens, and so is the protocol of every response (`{"kind":"response","url","protocol"}`, from
// the DevTools protocol: a page cannot see it for another origin); a line `finish` on stdin (or its
// end) makes it print `{"kind":"result","ok":…,"problems":[…],"log":[…],"responses":[…]}`. The
// checks are the caller's.

import { emit, end, exitAfter, launch, waitForFinish } from './driver.mjs';

const [pageUrl, spki] = process.argv.slice(2);
if (!spki) {
  process.stderr.write('usage: node http2-streams.mjs <page_url> <spki_sha256_base64>\n');
  process.exit(2);
}

exitAfter(30000);

async function main() {
  // The certificate is the test's own: trusted by its key, as an operator would pin it.
  const browser = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
  const page = await (await browser.newContext()).newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error}`));
  await page.exposeFunction('report', (entry) => emit(entry));
  const responses = [];
  const devtools = await page.context().newCDPSession(page);
  await devtools.send('Network.enable');
  devtools.on('Network.responseReceived', ({ response }) => {
    const entry = { kind: 'response', url: response.url, protocol: response.protocol };
    responses.push(entry);
    emit(entry);
  });
  await page.goto(pageUrl, { waitUntil: 'load' });
  await waitForFinish();
  const log = await page.evaluate(() => window.log);
  const ok = problems.length === 0;
  await end({ ok, problems, browser: `chromium ${browser.version()}`, log, responses }, ok ? 0 : 1);
}

main().catch((error) => end({ ok: false, problems: [`error: ${error?.stack ?? error}`] }, 2));
