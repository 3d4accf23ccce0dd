// Drives the `rlhf annotate serve` page in headless Chromium, the way an annotator would: with
// the keyboard. Launched by tests/annotate_browser.rs, which starts and kills the server and
// checks the files; this script only acts on the page and reports what it saw and pressed.
//
//   node annotate_e2e.mjs first  URL LOG.json [SCREENSHOT.png]   sign in, rate 5 pairs, undo the 5th
//   node annotate_e2e.mjs finish URL LOG.json                     after a restart: skip one, a second
//                                                                 annotator joins, rate everything
//
// LOG.json: {"ratings": [{pair_id, annotator, chosen_text, strength, safety}], "events": [...]}.
// Chromium: $CHROME_PATH, else /usr/bin/chromium.
import fs from "node:fs";
import puppeteer from "puppeteer-core";

const [phase, url, logPath, shotPath] = process.argv.slice(2);
if (!phase || !url || !logPath) {
  console.error("usage: node annotate_e2e.mjs first|finish URL LOG.json [SCREENSHOT.png]");
  process.exit(2);
}
if (!/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+\//.test(url)) {
  console.error(`refusing ${url}: this test only talks to a loopback address`);
  process.exit(2);
}

const STRENGTH = [
  ["a", "significantly_better"],
  ["s", "better"],
  ["d", "slightly_better"],
  ["f", "negligibly_better"],
];
const SAFETY = [
  ["z", "only_chosen_safe"],
  ["x", "both_safe"],
  ["c", "both_unsafe"],
];
const log = { ratings: [], events: [] };
const problems = [];
const note = (e) => log.events.push(e);
const fail = (msg) => {
  throw new Error(msg);
};

async function openPage(browser, name) {
  const ctx = await browser.createBrowserContext(); // own localStorage: another annotator
  const page = await ctx.newPage();
  await page.setViewport({ width: 1280, height: 860, deviceScaleFactor: 1 });
  page.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${name}: console error: ${m.text()}`);
  });
  page.on("dialog", async (d) => {
    problems.push(`${name}: a dialog opened (${d.message()}): script from a reply ran`);
    await d.dismiss();
  });
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForSelector("body[data-state=signin]", { timeout: 10000 });
  await page.type("#name", name);
  await page.keyboard.press("Enter");
  await page.waitForSelector("body[data-state=task]", { timeout: 10000 });
  return page;
}

const shown = (page) =>
  page.evaluate(() => ({
    state: document.body.dataset.state,
    id: document.getElementById("task").dataset.pairId || null,
    responses: [1, 2].map((n) => document.querySelector(`#reply-${n} .text`).textContent),
    prompt: document.getElementById("prompt").textContent,
    status: document.getElementById("status").textContent,
    progress: document.getElementById("progress").textContent,
    done: document.getElementById("done-message").textContent,
    // What a reply's markup would have become had it been parsed as HTML.
    injected: document.querySelectorAll("#task img, #task script, #task iframe, #prompt b").length,
    pwned: window.__pwned === undefined ? null : String(window.__pwned),
  }));

// Waits until the page shows something other than pair `id` (or the done screen).
async function waitMoved(page, id) {
  await page.waitForFunction(
    (old) => !document.body.classList.contains("busy") && (document.getElementById("task").dataset.pairId || null) !== old,
    { timeout: 10000 },
    id,
  );
  return shown(page);
}

// Rates what is shown with keys only; returns the next view.
async function rate(page, annotator, i, shot) {
  const s = await shown(page);
  if (s.state !== "task") fail(`${annotator}: expected a pair, page is ${s.state}`);
  if (s.injected || s.pwned) fail(`${annotator}: reply markup was rendered (${s.injected} elements, __pwned=${s.pwned})`);
  if (s.responses.some((t) => t.includes("<script>")) || s.prompt.includes("<b>")) note({ markup_shown_as_text: s.id });
  const choice = (i % 2) + 1;
  const [sk, strength] = STRENGTH[i % STRENGTH.length];
  const [bk, safety] = SAFETY[i % SAFETY.length];
  await page.keyboard.press(String(choice));
  await page.keyboard.press(sk);
  await page.keyboard.press(bk);
  if (shot) {
    // The page down to its status line (no empty viewport below).
    const bottom = await page.evaluate(() => Math.ceil(document.getElementById("status").getBoundingClientRect().bottom) + 8);
    await page.screenshot({ path: shot, clip: { x: 0, y: 0, width: 1280, height: Math.min(bottom, 860) } });
    note({ screenshot: shot });
  }
  await page.keyboard.press("Enter");
  log.ratings.push({ pair_id: s.id, annotator, chosen_text: s.responses[choice - 1], strength, safety });
  const next = await waitMoved(page, s.id);
  if (next.state === "task" && !/Saved/.test(next.status) && !/skipped this pair before/.test(next.status)) {
    fail(`${annotator}: no "Saved." after rating ${s.id}: ${JSON.stringify(next.status)}`);
  }
  return next;
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROME_PATH || "/usr/bin/chromium",
  headless: true,
  // Root in a container has no user namespaces for Chromium's sandbox.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--font-render-hinting=none"],
});
let rc = 0;
try {
  if (phase === "first") {
    const page = await openPage(browser, "alice");
    const first = await shown(page);
    note({ first_pair: first.id, progress: first.progress });
    for (let i = 0; i < 5; i++) {
      await rate(page, "alice", i, i === 0 && shotPath ? shotPath : null);
    }
    const before = await shown(page);
    await page.keyboard.press("u");
    const undone = log.ratings.pop();
    const after = await waitMoved(page, before.id);
    if (after.id !== undone.pair_id) fail(`undo showed ${after.id}, expected ${undone.pair_id}`);
    if (!/undone/i.test(after.status)) fail(`no undo notice: ${JSON.stringify(after.status)}`);
    note({ undone: undone.pair_id, progress_after_undo: after.progress });
  } else if (phase === "finish") {
    const alice = await openPage(browser, "alice");
    let a = await shown(alice);
    note({ alice_first_after_restart: a.id, progress: a.progress });
    // Skip it: it comes back once nothing else is left.
    const skipped = a.id;
    await alice.keyboard.press("k");
    a = await waitMoved(alice, skipped);
    note({ skipped });
    const bob = await openPage(browser, "bob");
    let b = await shown(bob);
    if (b.id === a.id) fail(`alice and bob were both given ${a.id}`);
    note({ bob_first: b.id, alice_now: a.id });
    let i = 0;
    while (a.state === "task" || b.state === "task") {
      if (a.state === "task") a = await rate(alice, "alice", i++);
      if (b.state === "task") b = await rate(bob, "bob", i++);
      if (i > 50) fail("too many pairs");
    }
    // Whoever finished first saw "with other annotators"; the page asks again by itself.
    for (const [name, page] of [["alice", alice], ["bob", bob]]) {
      await page.waitForFunction(() => /Every pair is rated/.test(document.getElementById("done-message").textContent), { timeout: 15000 })
        .catch(() => fail(`${name}'s page never said every pair is rated`));
    }
    a = await shown(alice);
    note({ done_message: a.done, progress: a.progress, skipped_came_back_to_alice: log.ratings.some((r) => r.pair_id === skipped && r.annotator === "alice") });
  } else {
    fail(`unknown phase ${phase}`);
  }
  if (problems.length) fail(problems.join("\n"));
} catch (e) {
  console.error(`annotate_e2e ${phase}: ${e.message}`);
  rc = 1;
} finally {
  fs.writeFileSync(logPath, JSON.stringify(log, null, 1));
  await browser.close();
}
process.exit(rc);
