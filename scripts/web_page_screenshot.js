// Drive the `vitkit serve` web page in headless Chromium and save a screenshot (not run in CI).
//
// What docs/images/web-page.png was made with (Debian chromium, playwright-core from npm):
//   apt-get install -y chromium && npm install playwright-core     (in a scratch directory)
//   vitkit serve --model DIR --host 127.0.0.1 --port 8765 &
//   NODE_PATH=<scratch>/node_modules node scripts/web_page_screenshot.js \
//       http://127.0.0.1:8765/ photo.jpg out.png [explain=1]
// It uploads the photo through the page's file input (with the "explain" toggle on unless the
// fourth argument is 0), waits for the label bars (and the attention overlay), then writes a
// full-page screenshot. Page errors, failed requests and every response are printed.
"use strict";
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

(async () => {
  const [url, image, out, explain = "1"] = process.argv.slice(2);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "vitkit-chromium-"));  // new, empty
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 760, height: 600 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => console.log(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console.log(`pageerror: ${e}`));
  page.on("requestfailed", (r) => console.log(`requestfailed: ${r.url()} ${r.failure().errorText}`));
  page.on("response", (r) => console.log(`${r.status()} ${r.request().method()} ${r.url()}`));
  try {
    await page.goto(url);
    await page.waitForFunction(() => !$("model").textContent.includes("loading"));
    if (explain !== "0") await page.check("#explain");
    await page.setInputFiles("#file", image);
    await page.waitForSelector("#result .row, #result .error", { timeout: 30000 });
    if (explain !== "0") {
      await page.waitForSelector("#overlay-box:not([hidden])", { timeout: 30000 });
      await page.waitForFunction(() => $("overlay").complete && $("overlay").naturalWidth > 0);
    }
    await page.screenshot({ path: out, fullPage: true });
    console.log(`result: ${await page.textContent("#result")}`);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
})().catch((error) => { console.error(error); process.exit(1); });
