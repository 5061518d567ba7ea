// What the Node scripts run by tests/browser.rs share: launching Debian's Chromium, one JSON line
// per thing on stdout, the overall timeout, the last `{"kind":"result",...}` line and the exit,
// and the `finish` line the test writes to stdin when it has done its part.
//
// Environment: CHROMIUM_PATH (default /usr/bin/chromium), BROWSER_TEST_TIMEOUT_MS (default: the
// script's own).

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const started = Date.now();
let browser;
let finished = false;

/** Prints `line` as one JSON line for the Rust side. */
export const emit = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

/** Resolves after `ms`, without keeping the process alive. */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Launches headless Chromium with extra command-line `args`; the browser is closed by `end`. */
export async function launch(args = []) {
  const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  browser = await chromium.launch({ executablePath, headless: true, args });
  return browser;
}

/** Prints the result line (with the elapsed time), closes the browser and exits with `status`. */
export async function end(result, status) {
  if (finished) return;
  finished = true;
  emit({ kind: 'result', elapsed_ms: Date.now() - started, ...result });
  // Closing the browser can hang if it is wedged; never wait for it past a few seconds.
  await Promise.race([browser?.close().catch(() => {}), sleep(3000)]);
  process.exit(status);
}

/** Milliseconds since the script started. */
export const elapsed = () => Date.now() - started;

/**
 * Ends with status 2 after BROWSER_TEST_TIMEOUT_MS (else `defaultMs`), reporting the problems
 * found so far and what was `observed` (both as `sofar()` returns them, if given).
 */
export function exitAfter(defaultMs, sofar = () => ({ problems: [] })) {
  const timeoutMs = Number(process.env.BROWSER_TEST_TIMEOUT_MS || defaultMs);
  const overall = setTimeout(() => {
    const { problems = [], ...rest } = sofar();
    end({ ok: false, problems: [...problems, `timed out after ${timeoutMs} ms`], ...rest }, 2);
  }, timeoutMs);
  overall.unref();
}

/** Resolves on a `finish` line on stdin, or when stdin ends. */
export function waitForFinish() {
  return new Promise((resolve) => {
    const lines = createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      if (line.trim() === 'finish') resolve();
    });
    lines.on('close', resolve);
  });
}
