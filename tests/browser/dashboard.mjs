// The dashboard in headless Chromium against a live `gpucloud dev`, the way a user meets it:
// a wrong key is refused; a tenant logs in, creates an instance from the form with its live quote,
// sees it running with its cost ticking, its GPU telemetry and its loss curve; another tenant sees
// none of it; the operator sees the fleet heatmap and the queue.
//
//   node dashboard.mjs                          (run by .ci/run)
//   node dashboard.mjs --screenshots DIR        (also writes the main pages as PNG files)
//
// Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM=path) and a built gpucloud binary
// (GPUCLOUD_BIN, default target/debug/gpucloud).
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");
const bin = process.env.GPUCLOUD_BIN || join(root, "target/debug/gpucloud");
const shotsAt = process.argv.indexOf("--screenshots");
const shots = shotsAt > 0 ? resolve(process.argv[shotsAt + 1]) : null;
const step = (m) => console.log(`- ${m}`);

function freePort() {
  return new Promise((ok) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
  });
}

async function waitFor(what, f, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f().catch(() => null);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const tmp = mkdtempSync(join(tmpdir(), "gpucloud-browser-"));
const port = await freePort();
const url = `http://127.0.0.1:${port}`;
const dev = spawn(bin, ["dev", "--runtime", "process", "--listen", `127.0.0.1:${port}`, "--data-dir", join(tmp, "data")], {
  env: { ...process.env, GPUCLOUD_CONFIG_DIR: join(tmp, "config") },
  stdio: ["ignore", "pipe", "pipe"],
});
let out = "";
dev.stdout.on("data", (d) => (out += d));
dev.stderr.on("data", () => {});
let browser;
let failed = false;
try {
  await waitFor("gpucloud dev to start", async () => out.includes("Try:"), 60000);
  if (!out.includes(`dashboard:    ${url}/ui/`)) throw new Error(`gpucloud dev does not print the dashboard URL:\n${out}`);
  const creds = JSON.parse(readFileSync(join(tmp, "data", "credentials.json"), "utf8"));
  const call = async (key, method, path, body) => {
    const r = await fetch(url + path, {
      method, headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: body && JSON.stringify(body),
    });
    const data = await r.json().catch(() => null);
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(data)}`);
    return data;
  };
  // Per-second billing from the first second, so the cost visibly ticks within the test.
  await call(creds.operator_key, "POST", "/v1/billing/rules", { granularity_seconds: 1, minimum_seconds: 0 });
  const rival = (await call(creds.operator_key, "POST", "/v1/tenants", { name: "rival" })).api_key;

  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  const viewport = { width: 1280, height: 860 };
  const shot = async (page, name) => {
    if (!shots) return;
    mkdirSync(shots, { recursive: true });
    await page.waitForTimeout(300);
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  };
  const login = async (key) => {
    const page = await (await browser.newContext({ viewport })).newPage();
    page.on("pageerror", (e) => { failed = true; console.error(`page error: ${e.message}`); });
    await page.goto(`${url}/`);
    await page.fill("#api-key", key);
    await page.click("#login-button");
    return page;
  };

  step("a wrong key is refused");
  const bad = await login("gpc_not-a-real-key");
  await bad.waitForSelector("#login-error:has-text('refused')");
  await shot(bad, "login-refused");
  await bad.context().close();

  step("a tenant logs in and creates an instance from the form, with the live quote");
  const page = await login(creds.tenant_key);
  await page.waitForURL(/#\/instances$/);
  await page.click("#nav-new");
  await page.waitForSelector("#create-form");
  await page.fill("#f-name", "browser-train");
  await page.selectOption("#f-gpu", "A100-40GB");
  await page.selectOption("#f-region", "eu-1");
  await page.fill("#f-count", "2");
  // A spinning process beside the loss loop: fake GPUs read a workload's CPU use as their load.
  const loss = "(while :; do :; done) & for i in $(seq 1 600); do curl -s -X POST -H 'Content-Type: application/json' " +
    "\"$GPUCLOUD_METADATA_URL/metrics\" -d \"{\\\"step\\\": $i, \\\"values\\\": {\\\"loss\\\": $(awk \"BEGIN{print 2.5*0.9^$i+0.1}\")}}\" >/dev/null; sleep 0.5; done";
  await page.fill("#f-command", loss);
  await page.fill("#f-env", "MODE=browser");
  await page.waitForSelector("#quote:has-text('2 × A100-40GB') td:has-text('eu-1')");
  const quoted = await page.textContent("#quote");
  if (!/\$3\.20\/h/.test(quoted)) throw new Error(`the quote for 2 x A100-40GB should be $3.20/h: ${quoted}`);
  await shot(page, "new-instance");
  await page.click("#create-button");
  await page.waitForURL(/#\/instance\/i-/);
  const id = page.url().split("/").pop();

  step(`${id} runs, its cost ticks, its telemetry and loss curve draw`);
  await page.waitForSelector("#inst .badge.running", { timeout: 20000 });
  await page.waitForSelector("#inst code.env:has-text('MODE=browser')");
  const cost1 = await waitFor("a first charge", async () => {
    const c = await page.textContent("#inst-cost");
    return c !== "$0.0000" && c;
  });
  const cost2 = await waitFor("the cost to tick", async () => {
    const c = await page.textContent("#inst-cost");
    return c !== cost1 && c;
  });
  if (Number(cost2.slice(1)) <= Number(cost1.slice(1))) throw new Error(`cost went from ${cost1} to ${cost2}`);
  await page.waitForSelector("#legend-util span", { timeout: 30000 });
  await page.waitForSelector("#legend-m-loss span", { timeout: 30000 });
  // Samples are stored every 10 s: wait for a line (two points), counted in the chart's pixels.
  await waitFor("a utilization line", () => page.evaluate(() => {
    const c = document.getElementById("chart-util");
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let blue = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i + 2] > 180 && px[i] < 120) blue++;
    return blue > 150;
  }), 40000);
  await page.waitForTimeout(2500);
  await shot(page, "instance");
  await page.click("#nav-instances");
  await page.waitForSelector(`tr[data-id='${id}'] .badge.running`);
  await shot(page, "instances");
  await page.click("#nav-billing");
  await page.waitForSelector("#balance");
  await shot(page, "billing");
  await page.click("#nav-spot");
  await page.waitForSelector("#legend-spot span");
  await shot(page, "spot");

  step("more work: a cluster, a spot instance, a request no node can hold");
  const t = creds.tenant_key;
  await call(t, "POST", "/v1/clusters", { name: "ddp", gpu: "A10", region: "us-1", gpus_per_node: 2, nodes: 2, command: "sleep 3600" });
  await call(t, "POST", "/v1/instances", { name: "sweep", gpu: "H100-80GB", count: 4, region: "eu-1", tier: "spot", command: "sleep 3600" });
  const huge = await call(t, "POST", "/v1/instances", { name: "too-big", gpu: "A100-40GB", count: 16, command: "sleep 3600" });
  await page.click("#nav-clusters");
  await page.waitForSelector("#clusters .badge.running");
  await shot(page, "clusters");

  step("volumes: listed with size, state and what they cost, and one not in use is deleted from the page");
  await call(t, "POST", "/v1/volumes", { name: "scratch", size: "2GiB", region: "eu-1" });
  await page.click("#nav-volumes");
  await page.waitForSelector("#volumes tr[data-volume='scratch'] .badge.available");
  const volRow = await page.textContent("#volumes tr[data-volume='scratch']");
  if (!volRow.includes("2 GiB") || !volRow.includes("eu-1")) throw new Error(`volume row: ${volRow}`);
  await shot(page, "volumes");
  page.once("dialog", (d) => d.accept());
  await page.click("#volumes tr[data-volume='scratch'] button");
  await waitFor("the volume to go", async () => (await page.locator("#volumes tr[data-volume='scratch']").count()) === 0);
  if ((await call(t, "GET", "/v1/volumes")).volumes.some((v) => v.name === "scratch")) throw new Error("the volume was not deleted");

  step("a web port opens from the instance page through the proxy, its websocket too");
  // The workload: a page and a websocket echo (one small text frame at a time), on its port.
  const webJs = join(tmp, "web.js");
  writeFileSync(webJs, `
const http = require("node:http"), crypto = require("node:crypto");
const s = http.createServer((req, res) => { res.setHeader("Content-Type", "text/html"); res.end("<h1>hello from the workload</h1>"); });
s.on("upgrade", (req, sock) => {
  const accept = crypto.createHash("sha1").update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
  sock.write("HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + accept + "\\r\\n\\r\\n");
  sock.on("data", (b) => {
    if ((b[0] & 0x0f) !== 1) return;
    const len = b[1] & 0x7f, mask = b.subarray(2, 6);
    const text = Buffer.from(b.subarray(6, 6 + len).map((x, i) => x ^ mask[i % 4])).toString();
    const out = Buffer.from("echo:" + text);
    sock.write(Buffer.concat([Buffer.from([0x81, out.length]), out]));
  });
});
s.listen(Number(process.argv[2]), "127.0.0.1");
`);
  const webPort = await freePort();
  const web = await call(t, "POST", "/v1/instances", { name: "web", gpu: "T4", count: 1, region: "eu-1",
    command: `exec node ${webJs} ${webPort}`, ports: [`${webPort}/http`] });
  await page.goto(`${url}/ui/#/instance/${web.id}`);
  await page.waitForSelector("#inst .badge.running", { timeout: 20000 });
  const link = await page.waitForSelector("#inst-ports a.port");
  const href = await link.getAttribute("href");
  if (href !== `${url}/i/${web.id}/${webPort}/`) throw new Error(`the port links to ${href}`);
  await shot(page, "instance-ports");
  const portPage = await page.context().newPage();
  await waitFor("the proxied page", async () => {
    const r = await portPage.goto(href);
    return r.status() === 200 && (await portPage.content()).includes("hello from the workload");
  });
  const echoed = await portPage.evaluate(() => new Promise((ok, fail) => {
    const ws = new WebSocket(location.href.replace(/^http/, "ws") + "kernels/1/channels");
    ws.onopen = () => ws.send("ping");
    ws.onmessage = (e) => ok(e.data);
    ws.onerror = () => fail(new Error("websocket error"));
    setTimeout(() => fail(new Error("websocket timeout")), 10000);
  }));
  if (echoed !== "echo:ping") throw new Error(`the websocket answered ${echoed}`);
  const anon = await fetch(href);
  const rivalTry = await fetch(href, { headers: { Authorization: `Bearer ${rival}` } });
  if (anon.status !== 401 || rivalTry.status !== 404) throw new Error(`no key: ${anon.status}, another tenant: ${rivalTry.status}`);
  await portPage.close();

  step("another tenant sees none of it");
  const other = await login(rival);
  await other.waitForURL(/#\/instances$/);
  await other.waitForSelector("#instances:has-text('No instances yet')");
  if ((await other.content()).includes(id)) throw new Error("another tenant's page shows the instance");
  await other.goto(`${url}/ui/#/instance/${id}`);
  await other.waitForSelector("main:has-text('not found'), #flash:has-text('not found')");
  if ((await other.locator("#nav-fleet").count()) !== 0) throw new Error("a tenant is offered the fleet page");
  await other.goto(`${url}/ui/#/fleet`);
  await other.waitForFunction(() => location.hash === "#/instances");
  const metrics = await (await fetch(`${url}/metrics`, { headers: { Authorization: `Bearer ${rival}` } })).text();
  if (metrics.includes(id) || metrics.includes("gpucloud_revenue_rate_per_hour")) throw new Error("another tenant's /metrics shows the instance or the fleet");
  await other.context().close();

  step("the operator sees the fleet heatmap and the queue");
  const op = await login(creds.operator_key);
  await op.waitForURL(/#\/fleet$/);
  await op.waitForSelector(".cell");
  const cells = await op.locator(".cell").count();
  const held = await op.locator(".cell:has-text('held')").count();
  if (cells < 30 || held < 2) throw new Error(`heatmap: ${cells} cells, ${held} held`);
  await op.selectOption("#heat-metric", "utilization");
  await op.waitForSelector(".cell:has-text('9'), .cell:has-text('8')");
  await op.waitForTimeout(2500);
  await shot(op, "fleet");
  await op.click("#nav-queue");
  await op.waitForSelector(`#queue td:has-text('${huge.id}')`);
  const why = await op.textContent("#queue");
  if (!/16/.test(why) || why.includes("next scheduling pass")) throw new Error(`the queue does not say why ${huge.id} waits: ${why}`);
  await shot(op, "queue");
  console.log(`dashboard: all checks passed${shots ? `; screenshots in ${shots}` : ""}`);
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.stack || e}`);
} finally {
  if (browser) await browser.close();
  // dev stops its workloads on SIGTERM: wait for that, or they outlive the test.
  if (dev.exitCode === null) {
    await new Promise((ok) => {
      const force = setTimeout(() => { dev.kill("SIGKILL"); ok(); }, 20000);
      dev.on("exit", () => { clearTimeout(force); ok(); });
      dev.kill("SIGTERM");
    });
  }
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
