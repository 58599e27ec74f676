// A small time-series chart on a canvas: lines, steps or bars over a time axis, a few hundred
// points per series, redrawn whole on each update. No dependency: the dashboard ships as three
// files embedded in the server.
"use strict";

const PALETTE = ["#2f6fec", "#e0692b", "#1f9d55", "#9b4dca", "#d64545", "#0e9aa7", "#b58900", "#6b7484"];

function niceStep(range, ticks) {
  const raw = range / Math.max(1, ticks);
  const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  const n = raw / mag;
  return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
}

function fmtTime(ms, span) {
  const d = new Date(ms);
  const p = (x) => String(x).padStart(2, "0");
  if (span > 2 * 86400e3) return `${d.getUTCMonth() + 1}/${d.getUTCDate()}`;
  return `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}` + (span < 300e3 ? `:${p(d.getUTCSeconds())}` : "");
}

// series: [{name, points: [[ms, value], ...], color?}]
// opts: {kind: "line" | "step" | "bar", xMin, xMax, yMin, yMax, prefix, unit, format(v), empty}
function drawChart(canvas, series, opts = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = canvas.clientHeight || 220;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  let fmt = opts.format;
  const all = series.flatMap((s) => s.points);
  const pad = { l: 52, r: 12, t: 10, b: 24 };
  ctx.font = "11px system-ui, sans-serif";
  if (all.length === 0) {
    ctx.fillStyle = "#6b7484";
    ctx.fillText(opts.empty || "no data yet", pad.l, h / 2);
    return;
  }
  let x0 = opts.xMin ?? Math.min(...all.map((p) => p[0])), x1 = opts.xMax ?? Math.max(...all.map((p) => p[0]));
  if (opts.kind === "bar" && opts.xMax === undefined) x1 += opts.barWidth || 0;
  if (x1 === x0) { x0 -= 30e3; x1 += 30e3; }
  let y0 = opts.yMin ?? Math.min(0, ...all.map((p) => p[1]));
  let y1 = opts.yMax ?? Math.max(...all.map((p) => p[1]));
  if (opts.yMax === undefined) y1 = y1 + (y1 - y0) * 0.08;
  if (y1 === y0) y1 = y0 + 1;
  const X = (t) => pad.l + ((t - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const Y = (v) => h - pad.b - ((v - y0) / (y1 - y0)) * (h - pad.t - pad.b);

  // Grid and labels.
  ctx.strokeStyle = "#e8ebf0";
  ctx.fillStyle = "#6b7484";
  ctx.lineWidth = 1;
  const ys = niceStep(y1 - y0, 4);
  // As many decimals as the tick step needs, no more.
  const decimals = Math.max(0, Math.min(4, -Math.floor(Math.log10(ys) + 1e-9)));
  fmt = fmt || ((v) => (opts.prefix || "") + v.toFixed(decimals));
  for (let v = Math.ceil(y0 / ys) * ys; v <= y1 + 1e-9; v += ys) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(v) + 0.5); ctx.lineTo(w - pad.r, Y(v) + 0.5); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(fmt(v) + (opts.unit || ""), pad.l - 6, Y(v) + 4);
  }
  const ticks = Math.max(2, Math.floor((w - pad.l - pad.r) / 90));
  for (let i = 0; i <= ticks; i++) {
    const t = x0 + ((x1 - x0) * i) / ticks;
    ctx.textAlign = i === 0 ? "left" : i === ticks ? "right" : "center";
    ctx.fillText(fmtTime(t, x1 - x0), X(t), h - 6);
  }

  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    if (opts.kind === "bar") {
      ctx.fillStyle = color;
      const bw = Math.max(2, X(x0 + (opts.barWidth || 0)) - X(x0) - 2);
      for (const [t, v] of pts) ctx.fillRect(X(t) + 1, Y(Math.max(v, 0)), bw, Math.abs(Y(v) - Y(0)));
      return;
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = s.width || 1.8;
    ctx.setLineDash(s.dash || []);
    ctx.beginPath();
    pts.forEach(([t, v], j) => {
      if (j === 0) ctx.moveTo(X(t), Y(v));
      else if (opts.kind === "step") { ctx.lineTo(X(t), Y(pts[j - 1][1])); ctx.lineTo(X(t), Y(v)); }
      else ctx.lineTo(X(t), Y(v));
    });
    if (opts.kind === "step" && pts.length) ctx.lineTo(X(x1), Y(pts[pts.length - 1][1]));
    ctx.stroke();
    ctx.setLineDash([]);
    // Sparse series (the first samples of a new instance) show their points too.
    if (pts.length <= 20 && opts.kind !== "step") {
      ctx.fillStyle = color;
      for (const [t, v] of pts) { ctx.beginPath(); ctx.arc(X(t), Y(v), 2.5, 0, 2 * Math.PI); ctx.fill(); }
    }
  });
}

// A legend under a chart.
function legend(el, series) {
  el.replaceChildren(...series.map((s, i) => {
    const span = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = s.color || PALETTE[i % PALETTE.length];
    span.append(sw, s.name);
    return span;
  }));
}

window.gpuChart = { drawChart, legend, PALETTE };
