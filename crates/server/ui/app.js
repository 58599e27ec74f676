// The gpucloud dashboard: a page per hash route, each built from the public API with the key the
// user logged in with, redrawn every two seconds. Data is only ever put into the page as text
// (never as HTML), so nothing a tenant names can run in another's browser.
"use strict";

const POLL_MS = 2000;
const KEY_STORE = "gpucloud.key";
let me = null;          // whoami
let timer = null;       // the current page's refresh
let generation = 0;     // bumps on each navigation: late answers for an old page are dropped

// ---------- helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function randomKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function api(path, { method = "GET", body, key, raw } = {}) {
  const headers = { Authorization: `Bearer ${key || localStorage.getItem(KEY_STORE)}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method === "POST") headers["Idempotency-Key"] = randomKey();
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (raw && r.ok) return r.text();
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (r.status === 401 && !key) { logout("Your key was refused: log in again."); throw new ApiError(401, data); }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// Every page of a list route, following each page's `next` link.
async function apiAll(path, field) {
  const first = await api(path);
  let next = first.next;
  while (next) {
    const page = await api(next);
    first[field] = first[field].concat(page[field]);
    next = page.next;
  }
  first.next = null;
  return first;
}

function money(s) {
  const v = Number(s || 0);
  const digits = Math.abs(v) >= 100 ? 2 : Math.abs(v) >= 1 ? 2 : 4;
  return (v < 0 ? "-$" : "$") + Math.abs(v).toFixed(digits);
}

function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

const badge = (state) => h("span", { class: `badge ${state}` }, state);
const stat = (k, v, id) => h("div", { class: "stat" }, h("div", { class: "k" }, k), h("div", { class: "v", id }, v));
const day = (ms) => new Date(ms).toISOString().slice(0, 10);

function table(headers, rows, empty = "Nothing here yet.") {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

function chartPanel(title, id) {
  return h("div", { class: "panel" }, h("div", { class: "chart-title" }, title),
    h("canvas", { class: "chart", id: `chart-${id}` }), h("div", { class: "legend", id: `legend-${id}` }));
}

function plot(id, series, opts) {
  const c = document.getElementById(`chart-${id}`);
  if (!c) return;
  window.gpuChart.drawChart(c, series, opts);
  const l = document.getElementById(`legend-${id}`);
  if (l) window.gpuChart.legend(l, series);
}

function setMain(...children) {
  document.getElementById("main").replaceChildren(...children);
}

function replace(id, el) {
  const old = document.getElementById(id);
  if (old) { el.id = id; old.replaceWith(el); }
}

// ---------- session ----------

function logout(message) {
  localStorage.removeItem(KEY_STORE);
  // The web-port proxy's cookie goes too.
  fetch("/v1/session", { method: "DELETE" }).catch(() => {});
  me = null;
  location.hash = "#/login";
  if (message) sessionStorage.setItem("gpucloud.flash", message);
  route();
}

function loginPage() {
  document.getElementById("top").hidden = true;
  const flash = sessionStorage.getItem("gpucloud.flash");
  sessionStorage.removeItem("gpucloud.flash");
  const err = h("p", { class: "error", id: "login-error" }, flash || "");
  const input = h("input", { id: "api-key", type: "password", placeholder: "gpc_…", autocomplete: "off", required: true });
  const form = h("form", {
    class: "panel", id: "login-form",
    onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      err.textContent = "";
      try {
        me = await api("/v1/whoami", { key });
        localStorage.setItem(KEY_STORE, key);
        // Lets this browser open instances' web ports (/i/ID/PORT/) through the proxy.
        await api("/v1/session", { method: "POST", key }).catch(() => {});
        location.hash = me.tenant.role === "operator" ? "#/fleet" : "#/instances";
      } catch (x) {
        err.textContent = x.status === 401 ? "This API key was refused." : `Could not log in: ${x.message}`;
      }
    },
  }, h("h1", {}, "gpucloud"), h("p", { class: "muted" }, "Log in with your API key (gpucloud dev prints one)."),
  input, h("p", {}, h("button", { class: "primary", type: "submit", id: "login-button" }, "Log in")), err);
  setMain(h("div", { class: "login" }, form));
}

function nav(current) {
  const links = [["instances", "Instances"], ["clusters", "Clusters"], ["volumes", "Volumes"], ["new", "New instance"], ["billing", "Billing"], ["spot", "Spot prices"]];
  if (me.tenant.role === "operator") links.push(["fleet", "Fleet"], ["queue", "Queue"]);
  document.getElementById("nav").replaceChildren(...links.map(([r, label]) =>
    h("a", { href: `#/${r}`, class: r === current ? "active" : undefined, id: `nav-${r}` }, label)));
  document.getElementById("who").textContent = `${me.tenant.name} (${me.tenant.role})`;
  document.getElementById("top").hidden = false;
}

// ---------- tenant pages ----------

async function costs() {
  // Everything billed per instance since the beginning: the live cost of each.
  const u = await apiAll("/v1/billing/usage?by=instance&from=1970-01-01", "lines");
  return Object.fromEntries(u.lines.map((l) => [l.key, l.amount]));
}

async function instancesPage(gen) {
  setMain(h("h1", {}, "Instances"), h("div", { id: "instances" }, h("p", { class: "muted" }, "Loading…")));
  return async () => {
    const [list, cost, bal] = await Promise.all([apiAll("/v1/instances", "instances"), costs(), api("/v1/billing/balance")]);
    if (gen !== generation) return;
    const rows = list.instances.slice().reverse().map((i) => h("tr", { "data-id": i.id },
      h("td", {}, h("a", { href: `#/instance/${i.id}` }, i.name)), h("td", { class: "muted" }, i.id),
      h("td", {}, `${i.count} × ${i.gpu}${i.gpu_milli < 1000 ? ` (${i.gpu_milli / 10}%)` : ""}`), h("td", {}, i.tier),
      h("td", {}, badge(i.state)), h("td", {}, i.node ? `${i.region || ""} ${i.node}` : i.pending_reason || "—"),
      h("td", { class: "num cost" }, money(cost[i.id]))));
    replace("instances", h("div", {},
      h("div", { class: "stats" }, stat("Balance", money(bal.balance)), stat("This month", money(bal.month_usage)),
        stat("Burn rate", `${money(bal.burn_per_hour)}/h`)),
      table(["Name", "Id", "GPUs", "Tier", "State", "Where / why waiting", "Cost"], rows,
        "No instances yet: create one under New instance.")));
  };
}

async function instancePage(gen, id) {
  setMain(h("p", {}, h("a", { href: "#/instances" }, "← Instances")), h("div", { id: "inst" }, "Loading…"),
    h("div", { class: "grid" }, chartPanel("GPU utilization (%)", "util"), chartPanel("GPU temperature (°C)", "temp"),
      chartPanel("GPU memory used (MiB)", "mem"), chartPanel("Power (W)", "power")),
    h("h2", {}, "Workload metrics (pushed with the SDK's log_metrics)"), h("div", { class: "grid", id: "business" }));
  const act = (what) => async () => {
    try { await api(`/v1/instances/${id}/${what}`, { method: "POST" }); } catch (x) { alert(x.message); }
  };
  return async () => {
    const [i, cost, t, m] = await Promise.all([api(`/v1/instances/${id}`), costs(),
      api(`/v1/instances/${id}/telemetry?since=900&step=5`), api(`/v1/instances/${id}/metrics?limit=2000`)]);
    if (gen !== generation) return;
    const live = ["running", "pending", "provisioning"].includes(i.state);
    replace("inst", h("div", {},
      h("h1", {}, i.name, " ", badge(i.state)),
      h("div", { class: "stats" }, stat("Cost so far", money(cost[i.id]), "inst-cost"),
        stat("GPUs", `${i.count} × ${i.gpu}`), stat("Tier", i.tier), stat("Node", i.node || "—")),
      h("div", { class: "panel" },
        h("p", {}, "Command: ", h("code", {}, i.command)),
        i.pending_reason ? h("p", {}, "Waiting: ", i.pending_reason) : null,
        i.reason ? h("p", {}, "Reason: ", i.reason) : null,
        i.preemption ? h("p", { class: "error" }, `Preemption notice: ${i.preemption.reason}`) : null,
        i.checkpoint ? h("p", {}, "Last checkpoint: ", h("code", {}, i.checkpoint)) : null,
        i.endpoint ? h("p", {}, "Serves at ", h("code", {}, i.endpoint), " (its GPUCLOUD_PORT)") : null,
        i.ssh ? h("p", { id: "inst-ssh" }, "SSH: ", h("code", {}, i.ssh), " ",
          h("button", { class: "secondary", id: "copy-ssh", onclick: (e) => {
            // Clipboard access needs a secure context; elsewhere the command is selected to copy.
            const done = () => { e.target.textContent = "Copied"; };
            if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(i.ssh).then(done, () => {});
            else { const r = document.createRange(); r.selectNodeContents(e.target.previousSibling.previousSibling);
              getSelection().removeAllRanges(); getSelection().addRange(r); }
          } }, "Copy SSH command"),
          h("span", { class: "muted" }, " (add your key first: gpucloud ssh-key add ~/.ssh/id_ed25519.pub)")) : null,
        i.image ? h("p", {}, "Image: ", h("code", {}, i.image)) : null,
        i.volume ? h("p", { id: "inst-volume" }, "Volume: ", h("code", {}, i.volume)) : null,
        i.progress ? h("p", {}, "Preparing: ", i.progress, h("span", { class: "muted" }, " (not billed)")) : null,
        Object.keys(i.env || {}).length ? h("p", {}, "Environment: ",
          ...Object.entries(i.env).map(([k, v]) => h("code", { class: "env" }, `${k}=${v} `))) : null,
        (i.ports || []).length ? h("p", { id: "inst-ports" }, "Ports: ", ...i.ports.map((p) => p.url
          ? (p.protocol === "http"
            ? h("a", { href: p.url, target: "_blank", rel: "noopener", class: "port" }, `${p.port}/http`)
            : h("code", { class: "port" }, `${p.port}/tcp → ${p.url}`))
          : h("span", { class: "muted port" }, `${p.port}/${p.protocol} (once running)`))) : null,
        h("p", { class: "muted" }, `Created ${ago(i.created_at)} ago · id ${i.id}`),
        live ? h("div", { class: "actions" }, h("button", { class: "secondary", onclick: act("stop") }, "Stop"),
          h("button", { class: "secondary", onclick: act("terminate") }, "Terminate")) : null)));
    const byGpu = {};
    for (const p of t.points) (byGpu[`${p.node} GPU ${p.gpu}`] ||= []).push(p);
    const series = (f) => Object.entries(byGpu).map(([name, pts]) => ({ name, points: pts.map((p) => [Date.parse(p.at), f(p)]) }));
    const empty = "no samples yet (an agent reports every few seconds)";
    // The last 15 minutes, or since the instance was created if that is later.
    const span = { xMin: Math.max(Date.now() - 900e3, Date.parse(i.created_at)), xMax: Date.now(), empty };
    plot("util", series((p) => p.utilization_pct), { yMin: 0, yMax: 100, ...span });
    plot("temp", series((p) => p.max_temperature_c), span);
    plot("mem", series((p) => p.memory_used_mib), span);
    plot("power", series((p) => p.power_w), span);
    const names = {};
    for (const p of m.points) (names[p.name] ||= []).push([Date.parse(p.at), p.value]);
    const box = document.getElementById("business");
    if (Object.keys(names).length === 0) {
      box.replaceChildren(h("p", { class: "muted" }, "Nothing pushed yet: gpucloud.log_metrics(step=..., loss=...) from the workload."));
    } else {
      box.querySelectorAll(":scope > p").forEach((p) => p.remove());
      for (const [name, points] of Object.entries(names)) {
        if (!document.getElementById(`chart-m-${name}`)) box.append(chartPanel(name, `m-${name}`));
        plot(`m-${name}`, [{ name, points }], {});
      }
    }
  };
}

async function clustersPage(gen) {
  setMain(h("h1", {}, "Clusters"), h("div", { id: "clusters" }, "Loading…"));
  return async () => {
    const [l, cost] = await Promise.all([api("/v1/clusters"), costs()]);
    if (gen !== generation) return;
    const rows = l.clusters.map((c) => {
      const spent = c.members.reduce((s, m) => s + Number(cost[m.instance] || 0), 0);
      const running = c.members.filter((m) => m.state === "running").length;
      return h("tr", {}, h("td", {}, c.name), h("td", {}, `${c.gpus_per_node} × ${c.gpu}`),
        h("td", {}, `${running}/${c.nodes} running (${c.min_nodes}–${c.max_nodes})`), h("td", {}, badge(c.state)),
        h("td", {}, c.members.map((m) => h("div", {}, `#${m.rank} `, h("a", { href: `#/instance/${m.instance}` }, m.instance), " ", badge(m.state),
          m.endpoint ? h("span", { class: "muted" }, ` ${m.endpoint}`) : null))),
        h("td", { class: "muted" }, c.reason || c.schedule || c.autoscale || ""), h("td", { class: "num" }, money(spent)));
    });
    replace("clusters", table(["Name", "Per node", "Size", "State", "Members", "Notes", "Cost"], rows,
      "No clusters: gpucloud cluster create NAME --gpu ... --gpus-per-node ... --nodes ..."));
  };
}

async function volumesPage(gen) {
  setMain(h("h1", {}, "Volumes"), h("div", { id: "volumes" }, "Loading…"));
  const remove = (name) => async () => {
    if (!confirm(`Delete volume ${name} and everything on it?`)) return;
    try { await api(`/v1/volumes/${encodeURIComponent(name)}`, { method: "DELETE" }); } catch (x) { alert(x.message); }
    if (timer) timer();
  };
  return async () => {
    const l = await api("/v1/volumes");
    if (gen !== generation) return;
    const rows = l.volumes.map((v) => h("tr", { "data-volume": v.name },
      h("td", {}, v.name), h("td", { class: "num" }, `${v.size_gib} GiB`), h("td", {}, v.region),
      h("td", {}, badge(v.state)),
      h("td", {}, v.attached_to ? h("a", { href: `#/instance/${v.attached_to}` }, v.attached_to)
        : h("span", { class: "muted" }, v.placed ? "kept on its node" : "not placed yet")),
      h("td", { class: "num" }, `${money(v.price_per_hour)}/h`), h("td", { class: "num cost" }, money(v.charged)),
      h("td", {}, v.state === "available"
        ? h("button", { class: "secondary", onclick: remove(v.name) }, "Delete") : null)));
    replace("volumes", table(["Name", "Size", "Region", "State", "Mounted by", "Price", "Billed", ""], rows,
      "No volumes: gpucloud volume create data --size 100GiB --region eu-1, then instance create --volume data:/workspace"));
  };
}

async function billingPage(gen) {
  setMain(h("h1", {}, "Billing"), h("div", { id: "bal" }), chartPanel("Usage by day (last 30 days)", "days"),
    h("div", { class: "grid" }, h("div", {}, h("h2", {}, "Invoices"), h("div", { id: "invoices" })),
      h("div", {}, h("h2", {}, "Alerts"), h("div", { id: "alerts" }))));
  return async () => {
    const from = day(Date.now() - 29 * 86400e3);
    const [b, u, inv, al] = await Promise.all([api("/v1/billing/balance"), apiAll(`/v1/billing/usage?by=day&from=${from}`, "lines"),
      apiAll("/v1/billing/invoices", "invoices"), apiAll("/v1/alerts", "alerts")]);
    if (gen !== generation) return;
    replace("bal", h("div", { class: "stats" }, stat("Balance", money(b.balance), "balance"),
      stat("This month", money(b.month_usage)), stat("Burn rate", `${money(b.burn_per_hour)}/h`)));
    plot("days", [{ name: `usage (${b.currency})`, points: u.lines.map((l) => [Date.parse(l.key), Number(l.amount)]) }],
      { kind: "bar", barWidth: 86400e3, prefix: "$", xMin: Date.parse(from), xMax: Date.parse(day(Date.now())) + 86400e3 });
    const draft = h("tr", {}, h("td", {}, `${day(Date.now()).slice(0, 7)} (draft)`), h("td", { class: "num" }, money(b.month_usage)),
      h("td", { class: "muted" }, "closes when the month ends"));
    replace("invoices", table(["Month", "Total", "Closed"], [draft, ...inv.invoices.slice().reverse().map((i) =>
      h("tr", {}, h("td", {}, i.month), h("td", { class: "num" }, money(i.usage_total)), h("td", {}, i.closed_at.slice(0, 10))))]));
    replace("alerts", table(["When", "Kind", "Message"], al.alerts.slice().reverse().slice(0, 50).map((a) =>
      h("tr", {}, h("td", {}, `${ago(a.created_at)} ago`), h("td", {}, a.kind), h("td", {}, a.message))), "No alerts."));
  };
}

async function regionsAndModels() {
  const cap = await api("/v1/capacity");
  const pairs = cap.regions.flatMap((r) => r.models.map((m) => [m.model, r.region]));
  return { cap, pairs, regions: cap.regions.map((r) => r.region), models: [...new Set(pairs.map((p) => p[0]))] };
}

async function spotPage(gen) {
  const { pairs } = await regionsAndModels();
  const sel = h("select", { id: "spot-pool" }, pairs.map(([m, r]) => h("option", { value: `${m}|${r}` }, `${m} in ${r}`)));
  setMain(h("h1", {}, "Spot prices"), h("p", {}, sel), h("div", { id: "spot-now" }), chartPanel("Price per GPU-hour, last 24 h", "spot"));
  sel.addEventListener("change", () => timer && timer());
  return async () => {
    const [gpu, region] = sel.value.split("|");
    const s = await api(`/v1/spot/prices?gpu=${encodeURIComponent(gpu)}&region=${encodeURIComponent(region)}`);
    if (gen !== generation) return;
    const now = Date.now(), since = now - 86400e3;
    const pts = s.points.map((p) => [Math.max(Date.parse(p.at), since), Number(p.price_per_gpu_hour)]);
    if (s.current_per_gpu_hour) pts.push([now, Number(s.current_per_gpu_hour)]);
    replace("spot-now", h("div", { class: "stats" }, stat("Spot now", money(s.current_per_gpu_hour)),
      stat("On-demand", money(s.on_demand_per_gpu_hour)), stat("Floor", money(s.floor_per_gpu_hour))));
    const flat = (v) => [[since, Number(v)], [now, Number(v)]];
    plot("spot", [{ name: "spot", points: pts }, { name: "on-demand", points: flat(s.on_demand_per_gpu_hour), dash: [5, 4], color: "#6b7484" },
      { name: "floor", points: flat(s.floor_per_gpu_hour), dash: [2, 3], color: "#9aa3b1" }], { kind: "step", yMin: 0, prefix: "$", xMin: since, xMax: now });
  };
}

async function newInstancePage() {
  const { cap, regions, models } = await regionsAndModels();
  const f = {
    name: h("input", { id: "f-name", placeholder: "train-1" }),
    gpu: h("select", { id: "f-gpu" }, models.map((m) => h("option", { value: m }, m))),
    count: h("input", { id: "f-count", type: "number", min: 1, max: 16, value: 1 }),
    region: h("select", { id: "f-region" }, h("option", { value: "" }, "any region"), regions.map((r) => h("option", { value: r }, r))),
    tier: h("select", { id: "f-tier" }, ["on-demand", "spot"].map((t) => h("option", { value: t }, t))),
    command: h("input", { id: "f-command", value: "nvidia-smi -L; sleep 3600" }),
  };
  // What the workload runs with; they do not change the quote.
  const w = {
    image: h("input", { id: "f-image", placeholder: "the node's own (or e.g. nvcr.io/nvidia/pytorch:24.05-py3)" }),
    env: h("input", { id: "f-env", placeholder: "KEY=VALUE KEY2=secret:NAME" }),
    ports: h("input", { id: "f-ports", placeholder: "8888/http 22/tcp" }),
    volume: h("input", { id: "f-volume", placeholder: "data:/workspace" }),
  };
  const quote = h("div", { class: "quote", id: "quote" });
  const err = h("p", { class: "error", id: "create-error" });
  const submit = h("button", { class: "primary", type: "submit", id: "create-button" }, "Create instance");
  let asked = 0; // answers to older inputs arrive late sometimes: only the latest is shown
  const refreshQuote = async () => {
    const mine = ++asked;
    const body = { gpu: f.gpu.value, count: Number(f.count.value) || 1 };
    if (f.region.value) body.region = f.region.value;
    try {
      const q = await api("/v1/instances/quote", { method: "POST", body });
      const rows = [];
      for (const l of q.quotes) {
        const s = await api(`/v1/spot/prices?gpu=${encodeURIComponent(body.gpu)}&region=${encodeURIComponent(l.region)}`).catch(() => null);
        const spot = s && s.current_per_gpu_hour ? Number(s.current_per_gpu_hour) * body.count : null;
        const free = (cap.regions.find((r) => r.region === l.region)?.models.find((m) => m.model === body.gpu) || {}).free;
        rows.push(h("tr", {}, h("td", {}, l.region), h("td", { class: "num" }, `${money(l.price_per_hour)}/h`),
          h("td", { class: "num" }, spot === null ? "—" : `${money(spot)}/h`), h("td", { class: "num" }, free ?? "—")));
      }
      if (mine !== asked) return;
      quote.replaceChildren(h("div", { class: "chart-title" }, `Live quote: ${body.count} × ${body.gpu}`),
        table(["Region", "On-demand", "Spot now", "GPUs free"], rows, "No region has this GPU."),
        h("p", { class: "muted" }, "Billed per second while running; spot is cheaper and preempted with notice."));
      err.textContent = "";
    } catch (x) { if (mine === asked) quote.replaceChildren(h("p", { class: "error" }, x.message)); }
  };
  for (const el of Object.values(f)) el.addEventListener("input", refreshQuote);
  const form = h("form", {
    class: "panel stack", id: "create-form",
    onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      const body = { gpu: f.gpu.value, count: Number(f.count.value), command: f.command.value, tier: f.tier.value };
      if (f.name.value) body.name = f.name.value;
      if (f.region.value) body.region = f.region.value;
      const words = (el) => el.value.split(/\s+/).filter(Boolean);
      if (w.image.value.trim()) body.image = w.image.value.trim();
      if (w.volume.value.trim()) body.volume = w.volume.value.trim();
      if (words(w.ports).length) body.ports = words(w.ports);
      // The server names what is wrong with a pair; a word without '=' is sent as a name with no value.
      if (words(w.env).length) body.env = Object.fromEntries(words(w.env).map((p) => [p.split("=")[0], p.split("=").slice(1).join("=")]));
      try {
        const i = await api("/v1/instances", { method: "POST", body });
        location.hash = `#/instance/${i.id}`;
      } catch (x) {
        err.textContent = x.message;
        submit.disabled = false;
      }
    },
  }, ...Object.entries({ Name: f.name, GPU: f.gpu, Count: f.count, Region: f.region, Tier: f.tier, Command: f.command,
    Image: w.image, Environment: w.env, Ports: w.ports, Volume: w.volume })
    .flatMap(([label, el]) => [h("label", { for: el.id }, label), el]), h("span"), h("div", {}, submit, err));
  setMain(h("h1", {}, "New instance"), h("div", { class: "grid" }, form, h("div", { class: "panel" }, quote)));
  refreshQuote();
  return null;
}

// ---------- operator pages ----------

const METRICS = {
  allocation: { label: "Allocation", cell: (g) => g.instance ? ["#2f6fec", "held"] : g.slices.length ? ["#7fa6f3", `${g.slices.length} sl`] : ["#c9ced6", ""] },
  utilization: { label: "Utilization", cell: (g) => g.reading ? [heat(g.reading.utilization_pct / 100), `${Math.round(g.reading.utilization_pct)}`] : ["#c9ced6", "?"] },
  temperature: { label: "Temperature", cell: (g) => g.reading ? [heat((g.reading.temperature_c - 30) / 60), `${Math.round(g.reading.temperature_c)}°`] : ["#c9ced6", "?"] },
  health: { label: "Health", cell: (g) => g.healthy ? ["#1f9d55", "ok"] : ["#d64545", "bad"] },
};

function heat(x) {
  // Cool blue to hot red through yellow, for a value from 0 to 1.
  const t = Math.min(1, Math.max(0, x));
  return `hsl(${Math.round(220 - 220 * t)}, 70%, ${Math.round(55 - 8 * t)}%)`;
}

async function fleetPage(gen) {
  const metric = h("select", { id: "heat-metric" }, Object.entries(METRICS).map(([k, v]) => h("option", { value: k }, v.label)));
  setMain(h("h1", {}, "Fleet"), h("div", { id: "fleet-stats" }),
    h("div", { class: "panel" }, h("div", { class: "chart-title" }, "GPUs by node ", metric), h("div", { class: "heatmap", id: "heatmap" })),
    h("div", { class: "grid" }, chartPanel("Utilization and allocation, last hour (%)", "fleet-util"), chartPanel("Revenue rate ($/h)", "fleet-rev")));
  metric.addEventListener("change", () => timer && timer());
  return async () => {
    const [n, q, f, m] = await Promise.all([api("/v1/nodes"), api("/v1/queue"), api("/v1/fleet/telemetry?since=3600&step=30"),
      api("/metrics", { raw: true })]);
    if (gen !== generation) return;
    const gpus = n.nodes.flatMap((x) => x.gpus);
    const alloc = n.nodes.reduce((s, x) => s + x.gpus_allocated, 0);
    const rate = (m.match(/^gpucloud_revenue_rate_per_hour ([0-9.eE+-]+)$/m) || [])[1];
    const withReading = gpus.filter((g) => g.reading);
    const util = withReading.length ? withReading.reduce((s, g) => s + g.reading.utilization_pct, 0) / withReading.length : 0;
    replace("fleet-stats", h("div", { class: "stats" }, stat("GPUs", `${alloc} / ${gpus.length} allocated`, "fleet-alloc"),
      stat("Utilization now", `${util.toFixed(0)}%`), stat("Pending", String(q.pending.length)),
      stat("Revenue rate", `${money(rate)}/h`, "fleet-rate"),
      stat("Unhealthy GPUs", String(gpus.filter((g) => !g.healthy).length))));
    const how = METRICS[metric.value];
    const rows = n.nodes.map((node) => h("div", { class: "heat-row" },
      h("div", {}, h("strong", {}, node.name), " ", badge(node.health), h("div", { class: "muted" }, [node.region, node.state, ...Object.entries(node.labels || {}).map(([k, v]) => `${k}=${v}`)].join(" · "))),
      h("div", { class: "heat-cells" }, node.gpus.map((g) => {
        const [color, text] = how.cell(g);
        const r = g.reading;
        const tip = [`GPU ${g.index} · ${g.model}`, g.instance ? `instance ${g.instance}` : g.slices.length ? `${g.slices.length} slices` : "free",
          r ? `${Math.round(r.utilization_pct)}% · ${Math.round(r.temperature_c)} °C · ${Math.round(r.power_w)} W · ${r.memory_used_mib} MiB` : "no reading yet",
          g.healthy ? "healthy" : "unhealthy"].join("\n");
        return h("div", { class: `cell${g.healthy ? "" : " unhealthy"}`, style: `background:${color}`, title: tip, "data-gpu": `${node.name}/${g.index}` }, text);
      }))));
    replace("heatmap", h("div", { class: "heatmap" }, rows));
    const at = (p) => Date.parse(p.at);
    plot("fleet-util", [
      { name: "utilization", points: f.points.map((p) => [at(p), p.utilization_pct]) },
      { name: "allocated", points: f.points.map((p) => [at(p), p.gpus ? (100 * p.allocated) / p.gpus : 0]) },
    ], { yMin: 0, yMax: 100, xMin: Date.now() - 3600e3, xMax: Date.now() });
    plot("fleet-rev", [{ name: "revenue", points: f.revenue.map((r) => [at(r), (Number(r.amount) * 3600) / f.step_s]) }],
      { kind: "bar", barWidth: f.step_s * 1000, yMin: 0, xMin: Date.now() - 3600e3, xMax: Date.now(), prefix: "$" });
  };
}

async function queuePage(gen) {
  setMain(h("h1", {}, "Pending queue"), h("div", { id: "queue" }, "Loading…"));
  return async () => {
    const q = await api("/v1/queue");
    if (gen !== generation) return;
    replace("queue", table(["Waiting", "Tenant", "Instance", "GPUs", "Region", "Tier", "Why pending"], q.pending.map((p) => {
      const i = p.instance;
      return h("tr", {}, h("td", {}, ago(i.updated_at)), h("td", { class: "muted" }, p.tenant), h("td", {}, `${i.name} (${i.id})`),
        h("td", {}, `${i.count} × ${i.gpu}`), h("td", {}, i.region || "any"), h("td", {}, i.tier), h("td", {}, i.pending_reason || "next scheduling pass"));
    }), "Nothing is waiting: every request found GPUs."));
  };
}

// ---------- routing ----------

const PAGES = {
  instances: instancesPage, instance: instancePage, clusters: clustersPage, volumes: volumesPage, billing: billingPage, spot: spotPage,
  new: newInstancePage, fleet: fleetPage, queue: queuePage,
};

const OPERATOR_PAGES = ["fleet", "queue"];

async function route() {
  clearInterval(timer && timer.handle);
  timer = null;
  const gen = ++generation;
  const [name, arg] = location.hash.replace(/^#\/?/, "").split("/");
  if (!localStorage.getItem(KEY_STORE) || name === "login") return loginPage();
  try {
    if (!me) me = await api("/v1/whoami");
  } catch { return; }
  const operator = me.tenant.role === "operator";
  const allowed = PAGES[name] && (operator || !OPERATOR_PAGES.includes(name));
  const page = allowed ? name : operator ? "fleet" : "instances";
  if (page !== name) { location.hash = `#/${page}`; return; }
  nav(name === "instance" ? "instances" : name);
  try {
    const refresh = await PAGES[page](gen, arg && decodeURIComponent(arg));
    if (!refresh || gen !== generation) return;
    const flash = document.getElementById("flash");
    const run = async () => {
      try {
        await refresh();
        flash.textContent = "";
      } catch (x) {
        if (gen === generation && x.status !== 401) flash.textContent = `Could not refresh: ${x.message}`;
      }
    };
    timer = run;
    timer.handle = setInterval(run, POLL_MS);
    await run();
  } catch (x) {
    if (x.status !== 401) setMain(h("p", { class: "error" }, x.message));
  }
}

window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", () => logout());
route();
