// DenseGRPO front-end extension: a sidebar panel with every training job, live from the `densegrpo.job`
// websocket events (initial state from GET /densegrpo/jobs), toasts when a job ends, and a fixed seed on
// new Train nodes. Plain ES module, no build step; uPlot (MIT) is vendored in ./vendor/uplot/.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import uPlot from "./vendor/uplot/uPlot.esm.js";

// The event name, job states and job file names are defined once in nodes/web_contract.py;
// tests/test_web_contract.py checks these lines against it.
const EVENT = "densegrpo.job";
const TRAIN_NODE = "DenseGRPO_TrainLoRA";
const TAB_ID = "densegrpo";
const TOAST_SETTING = "DenseGRPO.Panel.Toasts";
const JOB_STATES = ["queued", "running", "stopping", "finished", "stopped", "failed"];
const TERMINAL = new Set(["finished", "stopped", "failed"]);
const ACTIVE = new Set(["queued", "running", "stopping"]);
const JOB_FILES = ["reward_curve.png", "dense_rewards.png", "samples.png"];   // GET /densegrpo/jobs/{id}/files/{name}
const JOB_IMAGES = [["samples.png", "latest samples"], ["dense_rewards.png", "R_t and ΔR_t of the last saved iteration"]];

const state = {
  jobs: new Map(),        // id -> job summary (GET /densegrpo/jobs, or the `job` of the latest event)
  details: new Map(),     // id -> {metrics, evals, plots}: the selected job's curves, from ?full=1 + events
  selected: null,
  root: null,             // the panel's element while the tab is open
  listed: false,          // GET /densegrpo/jobs answered at least once
  plot: null, plotJob: null,
  frame: 0,
  loading: new Set(),     // ids whose ?full=1 answer is awaited
  toasted: new Set(),     // "<id>:<state>" already announced: one toast per job and end state
};

// ----------------------------------------------------------------------------------------- helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${String(m).padStart(2, "0")}m` : m ? `${m}m ${String(sec).padStart(2, "0")}s` : `${sec}s`;
}

function num(x, digits = 4) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
}

function toast(severity, summary, detail, life = 6000) {
  try {
    app.extensionManager.toast.add({ severity, summary, detail, life });
  } catch (e) {
    console.warn("[DenseGRPO]", summary, detail);
  }
}

function toastsOn() {
  try {
    return app.extensionManager.setting.get(TOAST_SETTING) !== false;
  } catch (e) {
    return true;
  }
}

async function getJSON(path, options) {
  const res = await api.fetchApi(path, options);
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error(body?.error?.message ?? body?.error ?? `HTTP ${res.status} from ${path}`);
  return body;
}

// ----------------------------------------------------------------------------------------- data
async function loadJobs() {
  const body = await getJSON("/densegrpo/jobs");
  const fresh = new Map(body.jobs.map((j) => [j.id, j]));
  for (const [id, job] of state.jobs) if (!fresh.has(id)) fresh.set(id, job);   // an event newer than the list
  state.jobs = fresh;
  state.listed = true;
  if (!state.selected || !state.jobs.has(state.selected)) state.selected = body.jobs[0]?.id ?? null;
  if (state.selected) await loadDetail(state.selected);
  render();
}

async function loadDetail(id) {
  const full = await getJSON(`/densegrpo/jobs/${id}?full=1`);
  state.jobs.set(id, { ...state.jobs.get(id), ...full, metrics: undefined, evals: undefined, latest: undefined });
  state.details.set(id, {
    metrics: (full.metrics ?? []).map(curvePoint),
    evals: (full.evals ?? []).map(curvePoint),
    plots: full.latest?.plots?.iteration ?? full.iteration,
  });
}

function ensureDetail(id) {
  if (!id || state.details.has(id) || state.loading.has(id)) return;
  state.loading.add(id);
  loadDetail(id).catch(() => {}).finally(() => { state.loading.delete(id); scheduleRender(); });
}

function curvePoint(m) {
  return { iteration: m.iteration, reward_mean: m.reward_mean, eval_rewards: m.eval_rewards ?? null };
}

// the held-out rewards the evaluations also scored (eval_rewards), in the order they first appear
function heldOutNames(detail) {
  const names = [];
  for (const p of detail.evals) for (const name of Object.keys(p.eval_rewards ?? {})) if (!names.includes(name)) names.push(name);
  return names;
}

function onEvent(e) {
  const ev = e.detail;
  if (!ev || typeof ev.job_id !== "string") return;
  const before = state.jobs.get(ev.job_id);
  if (ev.job) state.jobs.set(ev.job_id, { ...before, ...ev.job });
  const detail = state.details.get(ev.job_id);
  if (detail) {
    const newer = (list) => !list.length || ev.iteration > list[list.length - 1].iteration;
    if (ev.type === "iteration" && newer(detail.metrics)) detail.metrics.push(curvePoint(ev));
    else if (ev.type === "eval" && newer(detail.evals)) detail.evals.push(curvePoint(ev));
    else if (ev.type === "plots") detail.plots = ev.iteration;
  }
  if (!state.selected || !before) state.selected = ev.job_id;      // a new job comes into view
  const announce = `${ev.job_id}:${ev.state}`;
  if (ev.type === "state" && TERMINAL.has(ev.state) && !state.toasted.has(announce) && toastsOn()) {
    state.toasted.add(announce);
    const job = ev.job ?? {};
    const what = `${job.name ?? ev.job_id} (${ev.job_id}) at iteration ${job.iteration}/${job.total}`;
    if (ev.state === "failed") toast("error", "DenseGRPO training failed", `${what}: ${job.error ?? "unknown error"}`, 0);
    else if (ev.state === "finished") toast("success", "DenseGRPO training finished", `${what}; LoRA: ${job.loras?.at(-1) ?? "none"}`);
    else toast("info", "DenseGRPO training stopped", `${what}; LoRA: ${job.loras?.at(-1) ?? "none"}`);
  }
  scheduleRender();
}

// ----------------------------------------------------------------------------------------- actions
async function stopJob(id) {
  try {
    const job = await getJSON(`/densegrpo/jobs/${id}/stop`, { method: "POST" });
    state.jobs.set(id, { ...state.jobs.get(id), ...job });
    render();
  } catch (e) {
    toast("error", "DenseGRPO: stop failed", String(e.message ?? e));
  }
}

async function resumeJob(id) {
  try {
    const { prompt } = await getJSON(`/densegrpo/jobs/${id}/resume_prompt`);
    const res = await api.fetchApi("/prompt", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, client_id: api.clientId }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const errors = Object.values(body.node_errors ?? {}).flatMap((n) => n.errors ?? []).map((x) => x.details ?? x.message);
      throw new Error([body.error?.message, ...errors].filter(Boolean).join(": ") || `HTTP ${res.status}`);
    }
    toast("info", "DenseGRPO: resuming", `job ${id} is queued to resume with the same settings`, 4000);
  } catch (e) {
    toast("error", "DenseGRPO: cannot resume", String(e.message ?? e), 10000);
  }
}

function addLora(name) {
  const LiteGraph = window.LiteGraph;
  const node = LiteGraph?.createNode("LoraLoaderModelOnly");
  if (!node) {
    toast("error", "DenseGRPO", "this ComfyUI has no LoraLoaderModelOnly node");
    return;
  }
  const [x, y, w, h] = app.canvas?.visible_area ?? [0, 0, 800, 600];
  node.pos = [x + w / 2 - 160, y + h / 2 - 50];
  app.graph.add(node);
  const widget = node.widgets?.find((wd) => wd.name === "lora_name");
  if (widget) {
    const values = widget.options?.values;
    if (Array.isArray(values) && !values.includes(name)) values.push(name);   // written after the page loaded
    widget.value = name;
  }
  app.graph.setDirtyCanvas(true, true);
  toast("info", "DenseGRPO", `added LoraLoaderModelOnly with ${name}: connect its model input`, 4000);
}

// ----------------------------------------------------------------------------------------- rendering
function scheduleRender() {
  if (!state.root || state.frame) return;
  state.frame = requestAnimationFrame(() => { state.frame = 0; render(); });
}

function jobRow(job) {
  const last = job.last_metric ?? {};
  const selected = job.id === state.selected;
  return el("div", {
    class: `densegrpo-job${selected ? " selected" : ""}`, "data-job-id": job.id, "data-state": job.state,
    "data-iteration": job.iteration, title: `job ${job.id}`,
    onclick: async () => {
      state.selected = job.id;
      render();
      try { await loadDetail(job.id); } catch (e) { /* the list still shows it */ }
      render();
    },
  },
  el("div", { class: "densegrpo-row" },
    el("span", { class: "densegrpo-name" }, job.name),
    el("span", { class: `densegrpo-state state-${JOB_STATES.includes(job.state) ? job.state : "unknown"}` }, job.state)),
  el("div", { class: "densegrpo-meta" },
    `${job.meta?.model ?? "model"} · ${job.meta?.advantage_mode ?? ""}`),
  el("div", { class: "densegrpo-meta" },
    el("span", { class: "densegrpo-iter" }, `iteration ${job.iteration}/${job.total}`),
    ` · reward ${num(last.reward_mean)}`,
    ` · ${job.sec_per_iteration ? job.sec_per_iteration.toFixed(2) + " s/it" : "– s/it"}`,
    ACTIVE.has(job.state) ? ` · ETA ${duration(job.eta_s)}` : ""),
  job.error ? el("div", { class: "densegrpo-error" }, job.error) : null);
}

function signCounts(job) {
  const m = job.last_metric ?? {};
  if (!Array.isArray(m.dR_pos) || !Array.isArray(m.dR_neg)) return null;
  const T = m.dR_pos.length;
  const n = Math.max(1, ...m.dR_pos.map((p, i) => p + m.dR_neg[i]));
  const cols = m.dR_pos.map((p, i) => {
    const q = m.dR_neg[i];
    return el("div", { class: "densegrpo-bar", title: `step ${T - i}: ΔR>0 ×${p}, ΔR<0 ×${q}` },
      el("div", { class: "pos-box" }, el("div", { class: "pos", style: `height:${(100 * p) / n}%` })),
      el("div", { class: "neg-box" }, el("div", { class: "neg", style: `height:${(100 * q) / n}%` })),
      el("div", { class: "densegrpo-step" }, String(T - i)));
  });
  return el("div", { class: "densegrpo-section" },
    el("div", { class: "densegrpo-title" }, `ΔR signs per step (it. ${m.iteration})`,
      el("span", { class: "densegrpo-legend" }, el("i", { class: "sw pos" }), ">0 ", el("i", { class: "sw neg" }), "<0")),
    el("div", { class: "densegrpo-bars", "data-steps": T }, cols));
}

// the cost of the last iteration: NFE (network evaluations) and, with an SDE window, which steps were SDE
function costView(job) {
  const m = job.last_metric ?? {};
  if (typeof m.nfe !== "number") return null;
  const T = Array.isArray(m.dR_pos) ? m.dR_pos.length : (job.config?.steps ?? job.steps);
  const windowed = typeof m.sde_window_start === "number" && typeof m.sde_window_end === "number";
  const text = `NFE ${m.nfe} per iteration · ${num(m.nfe_per_trajectory)} per trajectory`
    + (windowed ? ` · SDE window: grid steps ${m.sde_window_start}–${m.sde_window_end - 1}` : " · every step SDE");
  const strip = windowed && Number.isInteger(T) && T > 0 ? el("div", { class: "densegrpo-window", "data-steps": T },
    Array.from({ length: T }, (_, k) => el("div", {
      class: k >= m.sde_window_start && k < m.sde_window_end ? "densegrpo-cell sde" : "densegrpo-cell",
      title: `grid step ${k} (t = ${T - k}): ${k >= m.sde_window_start && k < m.sde_window_end ? "SDE, trained" : "ODE"}` })))
    : null;
  return el("div", { class: "densegrpo-section densegrpo-cost" },
    el("div", { class: "densegrpo-title" }, `cost (it. ${m.iteration})`),
    el("div", { class: "densegrpo-meta" }, text), strip);
}

function chartData(detail) {
  const xs = [...new Set([...detail.metrics, ...detail.evals].map((p) => p.iteration))].sort((a, b) => a - b);
  const train = new Map(detail.metrics.map((p) => [p.iteration, p.reward_mean]));
  const evals = new Map(detail.evals.map((p) => [p.iteration, p.reward_mean]));
  const data = [xs, xs.map((x) => train.get(x) ?? null)];
  if (detail.evals.length) data.push(xs.map((x) => evals.get(x) ?? null));
  for (const name of heldOutNames(detail)) {
    const held = new Map(detail.evals.map((p) => [p.iteration, p.eval_rewards?.[name] ?? null]));
    data.push(xs.map((x) => held.get(x) ?? null));
  }
  return data;
}

const HELD_OUT_COLORS = ["#7bd88f", "#e06c9f", "#c792ea", "#f78c6c", "#89ddff"];

// the run's health warnings of the last iteration (densegrpo_core/training/health.py)
function warningsView(job) {
  const warnings = job.last_metric?.warnings;
  if (!Array.isArray(warnings) || !warnings.length) return null;
  return el("div", { class: "densegrpo-warnings", "data-iteration": job.last_metric.iteration },
    warnings.map((w) => el("div", { class: "densegrpo-warning", "data-code": w.code, title: w.code }, `⚠ ${w.message}`)));
}

function drawChart(container, job, detail) {
  const data = chartData(detail);
  const width = Math.max(200, (state.root?.clientWidth ?? 320) - 24);
  const fg = getComputedStyle(document.body).getPropertyValue("--fg-color").trim() || "#ddd";
  const grid = getComputedStyle(document.body).getPropertyValue("--border-color").trim() || "#444";
  const series = [{ label: "iteration" }, { label: "training reward", stroke: "#4ea1ff", width: 2, spanGaps: true }];
  if (detail.evals.length) series.push({ label: "evaluation reward", stroke: "#ffb347", width: 2, spanGaps: true });
  heldOutNames(detail).forEach((name, i) => series.push(
    { label: `eval ${name}`, stroke: HELD_OUT_COLORS[i % HELD_OUT_COLORS.length], width: 1.5, dash: [4, 3], spanGaps: true }));
  const key = `${job.id}:${series.length}`;
  if (state.plot && state.plotJob === key && state.plot.root.isConnected) {
    state.plot.setData(data);
    if (Math.abs(state.plot.width - width) > 2) state.plot.setSize({ width, height: 170 });
    return;
  }
  state.plot?.destroy();
  container.replaceChildren();
  const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
  state.plot = new uPlot({
    width, height: 170, scales: { x: { time: false } }, series,
    axes: [{ ...axis, label: "iteration" }, { ...axis, size: 50 }], legend: { show: true },
    cursor: { drag: { x: false, y: false } },
  }, data, container);
  state.plotJob = key;
}

function detailView(job) {
  const detail = state.details.get(job.id) ?? { metrics: [], evals: [], plots: null };
  const buttons = el("div", { class: "densegrpo-buttons" },
    ACTIVE.has(job.state) && job.state !== "stopping"
      ? el("button", { class: "densegrpo-btn", "data-action": "stop", onclick: () => stopJob(job.id) }, "Stop") : null,
    (job.state === "stopped" || job.state === "failed")
      ? el("button", { class: "densegrpo-btn", "data-action": "resume", onclick: () => resumeJob(job.id) }, "Resume") : null);
  const chart = el("div", { class: "densegrpo-chart" });
  const loras = [...(job.loras ?? [])].reverse().slice(0, 6);
  const images = detail.plots ? JOB_IMAGES.filter(([file]) => JOB_FILES.includes(file)).map(([file, label]) => el("figure", { class: "densegrpo-figure" },
    el("img", { src: api.apiURL(`/densegrpo/jobs/${job.id}/files/${file}?v=${detail.plots}`), alt: label,
                onerror: (e) => { e.target.closest("figure")?.remove(); } }),
    el("figcaption", {}, `${label} (iteration ${detail.plots})`))) : [];
  const view = el("div", { class: "densegrpo-detail", "data-job-id": job.id },
    el("div", { class: "densegrpo-title" }, `${job.name} · ${job.id}`),
    el("div", { class: "densegrpo-meta" }, `state ${job.state} · iteration ${job.iteration}/${job.total}`
      + (job.resumed_from ? ` · resumes ${job.resumed_from}` : "")),
    buttons,
    warningsView(job),
    el("div", { class: "densegrpo-section" }, el("div", { class: "densegrpo-title" }, "reward"),
      detail.metrics.length ? chart : el("div", { class: "densegrpo-meta" }, "no iteration yet")),
    costView(job),
    signCounts(job),
    images.length ? el("div", { class: "densegrpo-section" }, images) : null,
    el("div", { class: "densegrpo-section" },
      el("div", { class: "densegrpo-title" }, "LoRA files (models/loras)"),
      loras.length ? loras.map((name) => el("div", { class: "densegrpo-lora" },
        el("span", { class: "densegrpo-lora-name", title: name }, name),
        el("button", { class: "densegrpo-btn small", "data-action": "add-lora", onclick: () => addLora(name) },
          "Add LoRA to workflow")))
        : el("div", { class: "densegrpo-meta" }, "none yet")));
  if (detail.metrics.length) queueMicrotask(() => drawChart(chart, job, detail));
  return view;
}

function render() {
  const root = state.root;
  if (!root || !root.isConnected) return;
  const jobs = [...state.jobs.values()].sort((a, b) => (b.created ?? 0) - (a.created ?? 0));
  const selected = state.jobs.get(state.selected);
  if (selected) ensureDetail(selected.id);
  if (state.plot && (!selected || state.plotJob?.split(":")[0] !== selected.id)) {
    state.plot.destroy();
    state.plot = null; state.plotJob = null;
  }
  const keepChart = state.plot?.root.parentElement;
  const body = el("div", { class: "densegrpo-panel", "data-listed": state.listed ? "1" : "0", "data-jobs": jobs.length },
    el("div", { class: "densegrpo-header" }, "DenseGRPO training jobs"),
    jobs.length ? el("div", { class: "densegrpo-list" }, jobs.map(jobRow))
      : el("div", { class: "densegrpo-empty" }, state.listed
        ? "No training job yet. Queue a workflow with DenseGRPO Train LoRA: its job appears here and updates live."
        : "Loading…"),
    selected ? detailView(selected) : null);
  if (keepChart) {   // keep the live uPlot instance: move it into the new chart container
    const slot = body.querySelector(".densegrpo-chart");
    if (slot) slot.append(state.plot.root);
  }
  root.replaceChildren(body);
}

function mount(container) {
  injectStyle();
  state.root = container;
  render();
  loadJobs().catch((e) => {
    container.replaceChildren(el("div", { class: "densegrpo-error" }, `DenseGRPO: cannot list jobs: ${e.message ?? e}`));
  });
}

function unmount() {
  state.plot?.destroy();
  state.plot = null; state.plotJob = null; state.root = null;
}

function injectStyle() {
  if (document.getElementById("densegrpo-style")) return;
  document.head.append(el("link", { rel: "stylesheet", href: new URL("./vendor/uplot/uPlot.min.css", import.meta.url).href }));
  document.head.append(el("link", { id: "densegrpo-style", rel: "stylesheet", href: new URL("./densegrpo.css", import.meta.url).href }));
}

// ----------------------------------------------------------------------------------------- registration
// Registered once per page, even if ComfyUI serves this folder under two names.
const LOADED = Symbol.for("densegrpo.panel.loaded");
if (!window[LOADED]) {
  window[LOADED] = true;
  api.addEventListener(EVENT, onEvent);      // at import: no "Unknown message type" even before setup
  api.addEventListener("reconnected", () => { if (state.root) loadJobs().catch(() => {}); });

  app.registerExtension({
    name: "DenseGRPO.Panel",
    settings: [{
      id: TOAST_SETTING, category: ["DenseGRPO", "Panel", "Toasts"], type: "boolean", defaultValue: true,
      name: "Show a toast when a DenseGRPO training job finishes, stops or fails",
    }],
    setup() {
      app.extensionManager.registerSidebarTab({
        id: TAB_ID, icon: "pi pi-chart-line", title: "DenseGRPO", tooltip: "DenseGRPO training jobs",
        type: "custom", render: mount, destroy: unmount,
      });
    },
    nodeCreated(node) {
      // A new Train node's seed stays fixed after each run, so queueing again does not start another job.
      // A loaded workflow's saved choice is applied after this and wins.
      if (node.comfyClass !== TRAIN_NODE) return;
      const seed = node.widgets?.find((w) => w.name === "seed");
      const control = seed?.linkedWidgets?.[0] ?? node.widgets?.find((w) => w.name === "control_after_generate");
      if (control) control.value = "fixed";
    },
  });
}
