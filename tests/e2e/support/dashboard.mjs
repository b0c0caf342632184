// Drives knock's dashboard in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core: no browser is downloaded) for tests/e2e/dashboard.rs. Takes one JSON
// argument:
//   {"url": "http://127.0.0.1:PORT/", "screenshot": "target/dashboard.png",
//    "providers": {"NAME": ["paced", "paused"], ...}   the rows expected, with the pacing
//                                                      states each may show
//    "suspended": ["domain:hold.test"],                suspensions expected at the start
//    "classes": ["greylist", "throttle", "hard"],      deferral/bounce classes expected
//    "search": "g@grey",                               a recipient to search for
//    "suspend": {"provider": "NAME", "pending": N},    suspended from the page
//    "retry": "NAME",                                  a retry dry run, then cancelled
//    "domain": {"name": "tx.test", "expect": {"dkim": "ok", ...}}}
//                                                      a sending domain listed and checked
// Prints what it saw as one JSON line and exits 0, or prints the failure and exits 1.
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const T = 15000;
const seen = {};

function check(cond, what) {
  if (!cond) throw new Error(`dashboard: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => {
    // The stats history is optional: 404 on an engine that keeps none.
    if (r.status() >= 400 && !(r.status() === 404 && new URL(r.url()).pathname === "/api/v1/stats")) {
      problems.push(`${r.status()} for ${r.url()}`);
    }
  });
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("404")) problems.push(`console: ${m.text()}`);
  });

  await page.goto(args.url);
  // Two polls, the first with the diagnosis.
  await page.waitForFunction(() => Number(document.body.dataset.polls || 0) >= 2);

  // Providers and their states.
  seen.providers = {};
  for (const [name, states] of Object.entries(args.providers)) {
    const row = page.locator(`#providers tr[data-provider="${name}"]`);
    await row.waitFor();
    const st = await row.getAttribute("data-state");
    seen.providers[name] = { state: st, text: (await row.innerText()).replace(/\s+/g, " ") };
    check(states.includes(st), `provider ${name} shows ${st}, expected one of ${states}`);
  }
  for (const target of args.suspended) {
    await page.locator(`#suspensions tr[data-target="${target}"]`).waitFor();
  }
  const classes = await page.locator("#classes tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.class));
  seen.classes = classes;
  for (const c of args.classes) check(classes.includes(c), `class ${c} among ${classes}`);

  // Top replies grouped, and no recipient address in them or in the chart legends.
  const replies = await page.locator("#replies td.reply").allInnerTexts();
  seen.replies = replies;
  check(replies.length > 0, "top replies listed");
  check(replies.every((r) => !r.includes("@")), `no address in the top replies: ${replies}`);
  const legends = await page.locator(".u-legend .u-series .u-label").allInnerTexts();
  seen.legends = legends;
  check(legends.some((l) => l.length > 0), "the charts have series");
  check(legends.every((l) => !l.includes("@")), `no address in the chart labels: ${legends}`);
  const grouped = await page.evaluate(() => {
    const n = window.knockDashboard.normalizeReply;
    return [
      n("450 4.2.0 <ann@grey.test>: Greylisted, try again in 600 seconds") === n("450 4.2.0 <bob+x@grey.test>: Greylisted, try again in 600 seconds"),
      n("250 2.0.0 Ok: queued as 01a20765-b5e3-77c1-9a3b-f54f15e7b095") === n("250 2.0.0 Ok: queued as 01a20766-0c11-7d02-8e4f-1a2b3c4d5e6f"),
      n("421 4.7.28 [192.0.2.10 12] rate limited, id 3f9a0c12be77") === n("421 4.7.28 [198.51.100.7 12] rate limited, id 77aa01bd93e2"),
      n("421 4.7.28 rate limited") !== n("421 4.7.0 rate limited"),
      n("450 4.2.0 <<address>>: Greylisted") === n("450 4.2.0 <carl@grey.test>: Greylisted"),
    ];
  });
  check(grouped.every(Boolean), `replies normalised alike: ${grouped}`);

  // Message search and the drill-down with its attempts.
  await page.fill('#search input[name="recipient"]', args.search);
  await page.click('#search button[type="submit"]');
  const hit = page.locator("#messages tbody tr").filter({ hasText: args.search });
  await hit.first().waitFor();
  await hit.first().locator("button.link").click();
  await page.locator("#detail:not([hidden]) table.attempts tbody tr").first().waitFor();
  seen.detail = {
    id: await page.locator("#detail-id").innerText(),
    recipients: await page.locator("#detail .recipient h3").allInnerTexts(),
    classes: await page.locator("#detail table.attempts .badge").allInnerTexts(),
  };

  // Retry: the dry run's count is in the confirm step; cancelled, nothing done.
  const retryRow = page.locator(`#providers tr[data-provider="${args.retry}"]`);
  await retryRow.locator('button[data-action="retry"]').click();
  await page.locator("#confirm[open]").waitFor();
  seen.retry = {
    count: Number(await page.locator("#confirm-body [data-count]").getAttribute("data-count")),
    text: await page.locator("#confirm-body").innerText(),
  };
  await page.click("#confirm-cancel");
  await page.locator("#confirm[open]").waitFor({ state: "detached" });

  // Suspend from the page: the confirm step shows the pending count, then it takes effect.
  const { provider, pending } = args.suspend;
  const row = page.locator(`#providers tr[data-provider="${provider}"]`);
  await row.locator('button[data-action="suspend"]').click();
  await page.locator("#confirm[open]").waitFor();
  const count = Number(await page.locator("#confirm-body [data-count]").getAttribute("data-count"));
  seen.suspend = { count, text: await page.locator("#confirm-body").innerText() };
  check(count === pending, `the confirm step shows ${count} pending, expected ${pending}`);
  await page.fill("#confirm-reason", "suspended from the dashboard test");
  await page.click("#confirm-ok");
  await page.locator(`#suspensions tr[data-target="provider:${provider}"]`).waitFor();
  await page.locator(`#providers tr[data-provider="${provider}"][data-suspended="true"]`).waitFor();
  await page.locator(`#providers tr[data-provider="${provider}"] button[data-action="resume"]`).waitFor();

  // The sending domain is listed; its DNS is checked when asked.
  {
    const { name, expect } = args.domain;
    const item = page.locator(`#domains li[data-domain="${name}"]`);
    await item.waitFor();
    await item.locator('button[data-action="check"]').click();
    await page.locator(`#domain-checks[data-domain="${name}"]`).waitFor();
    const rows = await page
      .locator("#domain-checks tbody tr")
      .evaluateAll((trs) => trs.map((r) => ({ check: r.dataset.check, status: r.dataset.status, text: r.innerText })));
    seen.domain = rows;
    for (const [kind, status] of Object.entries(expect)) {
      check(rows.some((r) => r.check === kind && r.status === status), `${kind} ${status} among ${JSON.stringify(rows)}`);
    }
    check(rows.filter((r) => r.status === "error").every((r) => !r.text.trim().endsWith("–")), "every error says what to fix");
  }

  // Polling stops while the tab is hidden and starts again when it shows.
  const hide = (hidden) =>
    page.evaluate((h) => {
      Object.defineProperty(document, "hidden", { value: h, configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);
  await hide(true);
  check((await page.locator("#status").getAttribute("data-state")) === "paused", "paused while hidden");
  const hiddenAt = await page.evaluate(() => Number(document.body.dataset.polls));
  await page.waitForTimeout(4500);
  const hiddenPolls = (await page.evaluate(() => Number(document.body.dataset.polls))) - hiddenAt;
  check(hiddenPolls <= 1, `${hiddenPolls} polls while hidden`);
  await hide(false);
  await page.waitForFunction((p) => Number(document.body.dataset.polls) > p, hiddenAt + hiddenPolls);

  // A couple more polls so the charts have lines, then the picture.
  const polls = await page.evaluate(() => Number(document.body.dataset.polls));
  await page.waitForFunction((p) => Number(document.body.dataset.polls) >= p + 2, polls);
  await page.locator("#toast").evaluate((t) => (t.hidden = true));
  await page.screenshot({ path: args.screenshot, fullPage: true });

  // An engine with GET /api/v1/stats (docs/http-api.md) seeds the deferral chart with its
  // history: played here by a stand-in answer in that shape.
  const seeded = await context.newPage();
  const minute = Math.floor(Date.now() / 60000) * 60000;
  const points = [3, 2, 1].map((ago, i) => ({
    t: new Date(minute - ago * 60000).toISOString(),
    attempts: 10, delivered: 10 - i * 2, deferred: i * 2, bounced: 0, expired: 0, internal_deferred: 0,
    deferred_by_class: i ? { greylist: i * 2 } : {},
  }));
  await seeded.route("**/api/v1/stats?*", (route) =>
    route.fulfill({ json: { step_seconds: 60, by: "provider", series: [{ provider: args.retry, points }] } }),
  );
  await seeded.goto(args.url);
  await seeded.waitForFunction(() => Number(document.body.dataset.polls || 0) >= 1);
  seen.seeded = await seeded.locator("#deferral-source").innerText();
  check(seen.seeded.includes("/api/v1/stats") && !seen.seeded.includes("no attempts"), `the history is used: ${seen.seeded}`);
  await seeded.close();

  check(problems.length === 0, `problems while driving the page:\n${problems.join("\n")}`);
  console.log(JSON.stringify(seen));
} catch (e) {
  console.error(e.stack || String(e));
  console.error(`seen so far: ${JSON.stringify(seen)}`);
  if (problems.length) console.error(`problems: ${problems.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
