import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { ensureDebianPackage } from './debian';

const CHROMIUM = '/usr/bin/chromium';

/** Installs Debian's chromium when missing (root only); null when it runs, or why it cannot. */
export function ensureChromium(): string | null {
  return ensureDebianPackage(CHROMIUM, 'chromium', ['--version']);
}

/**
 * Headless Debian chromium under playwright-core. The flags keep it off the network (this machine refuses every
 * connection but loopback; without them chromium retries Google's hosts at every start) and let it run as root.
 */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Screenshots of one test run, numbered in the order taken, under test-output/<suite>/. */
export function screenshots(suite: string): (page: Page, name: string) => Promise<void> {
  const dir = join(process.cwd(), 'test-output', suite);
  let n = 0;
  return async (page, name) => {
    await mkdir(dir, { recursive: true });
    n += 1;
    await page.screenshot({ path: join(dir, `${String(n).padStart(2, '0')}-${name}.png`), fullPage: true });
  };
}

// What runs in the page is given as source text: these files compile without the DOM's types, which would clash
// with Node's in the rest of the tests.

/** The controls of the page with no accessible name: none of a <label>, aria-label, aria-labelledby, text. */
const UNLABELLED = `Array.from(document.querySelectorAll('input, select, textarea, button'))
  .filter((el) => el.type !== 'hidden')
  .filter((el) => !((el.labels && el.labels.length > 0)
    || (el.getAttribute('aria-label') || '').trim() !== ''
    || el.hasAttribute('aria-labelledby')
    || (el.tagName === 'BUTTON' && (el.textContent || '').trim() !== '')))
  .map((el) => el.outerHTML.slice(0, 120))`;

/** Controls (inputs, selects, text areas, buttons) without an accessible name, each described. */
export function unlabelledControls(page: Page): Promise<string[]> {
  return page.evaluate<string[]>(UNLABELLED);
}

/** The accessible name (its label's text, or aria-label) of the element with the keyboard focus. */
export function focusedName(page: Page): Promise<string | null> {
  return page.evaluate<string | null>(`(() => {
    const el = document.activeElement;
    if (!el) return null;
    if (el.labels && el.labels.length > 0) return el.labels[0].textContent.trim();
    return el.getAttribute('aria-label');
  })()`);
}

/** Everything the page keeps in sessionStorage and localStorage, as one string. */
export function storedByPage(page: Page): Promise<string> {
  return page.evaluate<string>('JSON.stringify({ ...sessionStorage, ...localStorage })');
}
