import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { systemMeta } from '@strata/events';
import {
  ensureChromium,
  focusedName,
  launchChromium,
  screenshots,
  storedByPage,
  unlabelledControls,
} from '../support/browser';
import { buildLayout, createContainersEnv, type ContainersEnv, type Layout } from '../support/containers';
import { ensureDebianPackage, reportSkip } from '../support/debian';
import { startTestApp, type TestApp } from '../support/test-app';

const skip = ensureDebianPackage('skopeo') ?? ensureChromium();
reportSkip('the web UI browser tests', skip);

interface Stored {
  readonly digest: string;
  readonly layers: string[];
}

const short = (digest: string): string => digest.slice('sha256:'.length, 'sha256:'.length + 12);

/** Waits (up to 10 s) until `ok` holds: the page renders what it fetched after the fact. */
async function until(ok: () => Promise<boolean>): Promise<void> {
  for (const end = Date.now() + 10_000; !(await ok()); ) {
    if (Date.now() > end) throw new Error('the page did not show it within 10 s');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Every control of the page has an accessible name. */
async function checkPage(page: Page): Promise<void> {
  expect(await unlabelledControls(page)).toEqual([]);
}

(skip ? describe.skip : describe)('the web UI in a real browser', () => {
  let t: TestApp;
  let containers: ContainersEnv;
  let browser: Browser;
  let page: Page;
  let first: Stored;
  let second: Layout;
  const shot = screenshots('ui');
  const pageErrors: string[] = [];

  /** Pushes with skopeo; returns the manifest digest and layers the registry stored (skopeo may convert). */
  const skopeoPush = async (layout: Layout, ref: string): Promise<Stored> => {
    await containers.run(
      'skopeo',
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${layout.dir}:v1`,
      `docker://${t.url.replace('http://', '')}/${ref}`,
    );
    const [name, tag] = ref.split(':') as [string, string];
    const res = await fetch(`${t.url}/v2/${name}/manifests/${tag}`, {
      headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
    });
    const manifest = (await res.json()) as { layers: { digest: string }[] };
    return {
      digest: res.headers.get('docker-content-digest')!,
      layers: manifest.layers.map((l) => l.digest),
    };
  };

  beforeAll(async () => {
    t = await startTestApp();
    containers = await createContainersEnv();
    const a = join(containers.root, 'a');
    const b = join(containers.root, 'b');
    await mkdir(a);
    await mkdir(b);
    const layout = await buildLayout(a, 2);
    second = await buildLayout(b, 3);
    first = await skopeoPush(layout, 'shop/frontend:prod');
    await skopeoPush(layout, 'shop/backend:v1');
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });
  }, 180_000);
  afterAll(async () => {
    await browser?.close();
    await containers?.close();
    expect(pageErrors).toEqual([]);
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  it('finds a repository by searching, with the keyboard', async () => {
    await page.goto(`${t.url}/ui/`);
    await page.getByRole('link', { name: 'shop/backend' }).waitFor();
    await shot(page, 'repositories');
    await checkPage(page);
    // Tab until the search field has focus: it is reachable without a mouse.
    for (let i = 0; i < 20; i++) {
      await page.keyboard.press('Tab');
      if ((await focusedName(page)) === 'Search repositories') break;
    }
    expect(await focusedName(page)).toBe('Search repositories');
    await page.keyboard.type('front');
    await page.keyboard.press('Enter');
    await page.getByRole('link', { name: 'shop/backend' }).waitFor({ state: 'detached' });
    const link = page.getByRole('link', { name: 'shop/frontend' });
    await link.waitFor();
    await shot(page, 'search');
    await link.focus();
    await page.keyboard.press('Enter');
    await page.getByRole('table', { name: 'Tags' }).waitFor();
    expect(page.url()).toContain('#/r/');
    await shot(page, 'tags');
    await checkPage(page);
    await page.getByRole('table', { name: 'Tags' }).getByText('prod', { exact: true }).waitFor();
  });

  it('opens a tag and shows its layers, config and pull lines', async () => {
    await page.getByRole('table', { name: 'Tags' }).getByRole('link', { name: 'prod', exact: true }).click();
    const layers = page.getByRole('table', { name: 'Layers' });
    await layers.waitFor();
    for (const digest of first.layers) await layers.getByText(short(digest)).first().waitFor();
    expect(await layers.locator('tbody tr').count()).toBe(2);
    await page
      .getByText(`${t.url.replace('http://', '')}/shop/frontend`)
      .first()
      .waitFor();
    await page.getByText('/bin/true').first().waitFor();
    await shot(page, 'image');
    await checkPage(page);
  });

  it('shows the timeline change when the tag moves, and the layers between two points', async () => {
    await page.goto(`${t.url}/ui/#/r/${encodeURIComponent('shop/frontend')}/t/prod`);
    const timeline = page.getByRole('table', { name: 'Timeline' });
    await timeline.waitFor();
    expect(await timeline.locator('tbody tr').count()).toBe(1);
    await shot(page, 'timeline-before');

    const moved = await skopeoPush(second, 'shop/frontend:prod');
    await page.reload();
    await timeline.waitFor();
    await until(async () => (await timeline.locator('tbody tr').count()) === 2);
    await timeline.getByText(short(moved.digest)).first().waitFor();
    await timeline.getByText(short(first.digest)).first().waitFor();
    await shot(page, 'timeline-after');
    await checkPage(page);

    await page.getByRole('button', { name: 'Compare layers' }).click();
    await page.getByRole('heading', { name: 'Added' }).waitFor();
    await page.getByRole('heading', { name: 'Removed' }).waitFor();
    for (const digest of moved.layers) await page.getByText(short(digest)).first().waitFor();
    await shot(page, 'diff');
  });

  it('filters the audit log by repository and action', async () => {
    await page.getByRole('link', { name: 'Audit log' }).first().click();
    await page.getByRole('table', { name: 'Audit log' }).waitFor();
    await page.getByLabel('Repository').fill('shop/frontend');
    await page.getByLabel('Action').fill('tag.moved');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    const table = page.getByRole('table', { name: 'Audit log' });
    await until(async () => (await table.locator('tbody tr').count()) === 2);
    const rows = await table.locator('tbody tr').allInnerTexts();
    for (const row of rows) {
      expect(row).toContain('tag.moved');
      expect(row).toContain('shop/frontend');
    }
    expect(page.url()).toContain('action=tag.moved');
    await shot(page, 'audit');
    await checkPage(page);
  });
});

(skip ? describe.skip : describe)('the web UI with STRATA_AUTH=token', () => {
  let t: TestApp;
  let browser: Browser;
  const shot = screenshots('ui-login');

  beforeAll(async () => {
    t = await startTestApp({ env: { STRATA_AUTH: 'token', STRATA_ADMIN_PASSWORD: 'admin-secret' } });
    const meta = systemMeta('test');
    await t.runtime.identity!.accounts.addAccount('dana', 'user', 'dana-pw', meta);
    await t.runtime.identity!.accounts.setGrant({ kind: 'user', name: 'dana' }, 'seen/**', ['pull'], meta);
    await t.runtime.identity!.directory.reload();
    browser = await launchChromium();
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  it('asks for a login, says when it is wrong, then shows what the account may see', async () => {
    const page = await browser.newPage();
    await page.goto(`${t.url}/ui/`);
    await page.getByLabel('Username').waitFor();
    await checkPage(page);
    await shot(page, 'login');
    await page.getByLabel('Username').fill('dana');
    await page.getByLabel('Password').fill('wrong');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').waitFor();
    await shot(page, 'login-refused');
    await page.getByLabel('Password').fill('dana-pw');
    await page.getByLabel('Password').press('Enter');
    await page.getByRole('button', { name: 'Log out' }).waitFor();
    await page.getByText('No repositories').waitFor();
    await shot(page, 'logged-in');
    // The password is not kept anywhere the page's scripts can read later.
    const stored = await storedByPage(page);
    expect(stored).not.toContain('dana-pw');
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByLabel('Username').waitFor();
    await page.close();
  });
});
