// Line charts drawn as inline SVG with DOM APIs (createElementNS): no library,
// no inline styles (colours come from classes in app.css). A chart is drawn at
// its container's width and redrawn when that changes; pointer or arrow keys
// move a cursor whose values are read out under the chart.

import {fmtClock, fmtNum, h, s} from "./dom.js";

const HEIGHT = 180;
const PAD = {top: 10, right: 12, bottom: 24, left: 46};

/** The smallest "nice" number (1, 2, 2.5, 5 × 10^k) at least C{x}. */
function niceCeil(x) {
  if (!(x > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(x));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= x - 1e-12) return step * power;
  }
  return 10 * power;
}

/**
 * A chart: C{spec} is {key, title, series: [{key, label}], max?, format?};
 * C{data} is the dashboard's {series: {time: [...], KEY: [...]}}. Returns a
 * figure with an update(data) method for live refreshes.
 */
export function lineChart(spec, data) {
  const format = spec.format || ((v) => fmtNum(v));
  const svgHolder = h("div", {class: "chart-plot"});
  const readout = h("p", {class: "chart-readout"});
  const legend = h("ul", {class: "legend"});
  const figure = h("figure", {class: "chart card", dataset: {chart: spec.key}},
    h("figcaption", {}, h("h3", {}, spec.title), legend), svgHolder, readout);
  let current = data;
  let cursor = null; // the index the readout shows (null: the latest)
  let width = 0;
  let geometry = null;
  let cursorLayer = null;

  function values(key) {
    const raw = (current && current.series && current.series[key]) || [];
    return raw.map((v) => (v === null || v === undefined || Number.isNaN(Number(v)) ? null : Number(v)));
  }

  function draw() {
    const times = (current && current.series && current.series.time) || [];
    const lines = spec.series.map((one, i) => ({...one, index: i, values: values(one.key)}));
    let top = spec.max;
    if (top === undefined) {
      const highest = Math.max(0, ...lines.flatMap((l) => l.values.filter((v) => v !== null)));
      top = niceCeil(highest / 4) * 4 || 1;
    }
    width = Math.max(240, Math.floor(svgHolder.clientWidth || figure.clientWidth || 600));
    const plotW = width - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    const n = times.length;
    const x = (i) => PAD.left + (n > 1 ? (i / (n - 1)) * plotW : plotW / 2);
    const y = (v) => PAD.top + plotH - (Math.min(v, top) / top) * plotH;

    const svg = s("svg", {
      class: "chart-svg", width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: "img",
      "aria-label": `${spec.title}: ${describe(lines, format)}`, tabindex: 0, focusable: "true",
    });
    // Grid and y labels.
    const grid = s("g", {class: "grid"});
    for (let t = 0; t <= 4; t += 1) {
      const v = (top * t) / 4;
      const yy = y(v);
      grid.append(s("line", {x1: PAD.left, x2: width - PAD.right, y1: yy, y2: yy}),
        s("text", {x: PAD.left - 6, y: yy + 4, class: "ylabel"}, format(v)));
    }
    // x labels: about one per 110 pixels.
    if (n > 1) {
      const count = Math.max(2, Math.min(6, Math.floor(plotW / 110)));
      for (let t = 0; t < count; t += 1) {
        const i = Math.round((t / (count - 1)) * (n - 1));
        const anchor = t === 0 ? "start" : t === count - 1 ? "end" : "middle";
        grid.append(s("text", {x: x(i), y: HEIGHT - 6, class: `xlabel ${anchor}`}, fmtClock(times[i])));
      }
    }
    svg.append(grid);

    // One path per series, broken where there is no value; dots on non-zero values when there is room.
    const dots = n > 0 && plotW / Math.max(1, n - 1) >= 6;
    for (const line of lines) {
      let d = "";
      let pen = false;
      let points = 0;
      let nonzero = 0;
      const marks = s("g", {class: `dots c${line.index}`});
      line.values.forEach((v, i) => {
        if (v === null) {
          pen = false;
          return;
        }
        points += 1;
        if (v !== 0) nonzero += 1;
        // A dot on each non-zero value when there is room, and always on a lone value (no line to show it).
        const alone = (i === 0 || line.values[i - 1] === null) && (i === n - 1 || line.values[i + 1] === null);
        if ((dots && v !== 0) || alone) marks.append(s("circle", {cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5}));
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      });
      svg.append(s("path", {
        d: d || "M0,0", class: `line c${line.index}`, "data-series": line.key, "data-points": points,
        "data-nonzero": nonzero,
      }), marks);
    }

    cursorLayer = s("g", {class: "cursor-layer"});
    svg.append(cursorLayer);
    const overlay = s("rect", {class: "overlay", x: PAD.left, y: PAD.top, width: plotW, height: plotH});
    overlay.addEventListener("pointermove", (event) => {
      const box = svg.getBoundingClientRect();
      const px = ((event.clientX - box.left) / box.width) * width;
      moveTo(Math.round(((px - PAD.left) / plotW) * (n - 1)));
    });
    overlay.addEventListener("pointerleave", () => moveTo(null));
    svg.append(overlay);
    svg.addEventListener("keydown", (event) => {
      const now = cursor === null ? n - 1 : cursor;
      const step = {ArrowLeft: -1, ArrowRight: 1, PageUp: -10, PageDown: 10}[event.key];
      if (step) moveTo(Math.max(0, Math.min(n - 1, now + step)));
      else if (event.key === "Home") moveTo(0);
      else if (event.key === "End" || event.key === "Escape") moveTo(null);
      else return;
      event.preventDefault();
    });
    geometry = {times, lines, x, y, n, plotH};
    drawCursor();
    svgHolder.replaceChildren(svg);

    legend.replaceChildren(...lines.map((line) => h("li", {class: `c${line.index}`},
      h("span", {class: "swatch", "aria-hidden": "true"}), line.label)));
  }

  function drawCursor() {
    if (!geometry || !cursorLayer) return;
    const {times, lines, x, y, n, plotH} = geometry;
    const at = cursor === null ? n - 1 : Math.min(cursor, n - 1);
    cursorLayer.replaceChildren();
    if (n > 0 && at >= 0) {
      const cx = x(at);
      cursorLayer.append(s("line", {class: "cursor", x1: cx, x2: cx, y1: PAD.top, y2: PAD.top + plotH}));
      for (const line of lines) {
        const v = line.values[at];
        if (v !== null && v !== undefined) cursorLayer.append(s("circle", {class: `cursor-dot c${line.index}`, cx, cy: y(v), r: 4}));
      }
    }
    readout.textContent = n && at >= 0
      ? `${fmtClock(times[at], true)}: ${lines.map((l) => `${l.label} ${format(l.values[at])}`).join(", ")}`
      : "No data yet.";
  }

  function moveTo(index) {
    const n = geometry ? geometry.n : 0;
    const next = index === null || Number.isNaN(index) ? null : Math.max(0, Math.min(n - 1, index));
    if (next === cursor) return;
    cursor = next;
    drawCursor();
  }

  figure.update = (next) => {
    current = next;
    const focused = document.activeElement && svgHolder.contains(document.activeElement);
    draw();
    if (focused) svgHolder.querySelector("svg").focus();
  };
  figure.redraw = () => {
    const w = Math.floor(svgHolder.clientWidth);
    if (w && w !== width) draw();
  };
  // Drawn once in the page, its width known (watchCharts).
  figure.draw = draw;
  return figure;
}

function describe(lines, format) {
  return lines.map((l) => {
    const vs = l.values.filter((v) => v !== null);
    if (!vs.length) return `${l.label}: no data`;
    return `${l.label}: latest ${format(vs[vs.length - 1])}, highest ${format(Math.max(...vs))}`;
  }).join("; ");
}

/** Draw C{charts} once they are in the document, and again when their width changes. */
export function watchCharts(charts, onCleanup) {
  for (const chart of charts) chart.draw();
  if (typeof ResizeObserver === "undefined") return;
  const observer = new ResizeObserver(() => {
    for (const chart of charts) chart.redraw();
  });
  for (const chart of charts) observer.observe(chart);
  onCleanup(() => observer.disconnect());
}
