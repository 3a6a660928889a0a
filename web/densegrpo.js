// DenseGRPO front-end extension: a sidebar panel with every training job, live from the `densegrpo.job`
// websocket events (initial state from GET /densegrpo/jobs) and toasts when a job ends. The panel lists the
// active jobs and the most recent ended ones ("show all" for the rest) above the selected job's details,
// deletes ended jobs (with a confirmation), clears the finished ones and opens a large view of the curve, ΔR
// signs and samples. A resumed job is the same job: one row, one curve from iteration 1 with a mark where each
// resume continued it.
// Plain ES module, no build step; uPlot (MIT) is vendored in ./vendor/uplot/.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import uPlot from "./vendor/uplot/uPlot.esm.js";

// The event name, job states and job file names are defined once in nodes/web_contract.py;
// tests/test_web_contract.py checks these lines against it.
const EVENT = "densegrpo.job";
const TAB_ID = "densegrpo";
const TOAST_SETTING = "DenseGRPO.Panel.Toasts";
const JOB_STATES = ["queued", "running", "stopping", "finished", "stopped", "failed"];
const TERMINAL = new Set(["finished", "stopped", "failed"]);
const ACTIVE = new Set(["queued", "running", "stopping"]);
const JOB_FILES = ["reward_curve.png", "dense_rewards.png", "samples.png"];   // GET /densegrpo/jobs/{id}/files/{name}
const JOB_IMAGES = [["samples.png", "latest samples"], ["dense_rewards.png", "R_t and ΔR_t of the last saved iteration"]];
const RECENT_SETTING = "DenseGRPO.Panel.RecentJobs";
const RECENT_DEFAULT = 5;   // ended jobs listed besides the active ones, until "show all"
const NONE = "—";         // a value that does not exist yet

const state = {
  jobs: new Map(),        // id -> job summary (GET /densegrpo/jobs, or the `job` of the latest event)
  details: new Map(),     // id -> {metrics, evals, plots}: the selected job's curves, from ?full=1 + events
  selected: null,
  root: null,             // the panel's element while the tab is open
  listed: false,          // GET /densegrpo/jobs answered at least once
  showAll: false,         // list every job, not just the active and the recent ones
  charts: { small: { plot: null, key: null }, large: { plot: null, key: null } },   // live uPlot instances
  large: null,            // id of the job in the large-view dialog, or null
  modal: null,            // the open dialog's backdrop element
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
  if (s === null || s === undefined || !isFinite(s)) return NONE;
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${String(m).padStart(2, "0")}m` : m ? `${m}m ${String(sec).padStart(2, "0")}s` : `${sec}s`;
}

function num(x, digits = 4) {
  return isNum(x) ? x.toFixed(digits) : NONE;
}

function isNum(x) {
  return typeof x === "number" && isFinite(x);
}

// "iteration 12/300 · reward 0.4123 · 1.20 s/it · ETA 5m 46s": the parts without a value are left out
function progressLine(job) {
  const last = job.last_metric ?? {};
  const parts = [`iteration ${job.iteration ?? 0}/${job.total ?? NONE}`];
  if (isNum(last.reward_mean)) parts.push(`reward ${num(last.reward_mean)}`);
  if (isNum(job.sec_per_iteration) && job.sec_per_iteration > 0) parts.push(`${job.sec_per_iteration.toFixed(2)} s/it`);
  if (ACTIVE.has(job.state) && isNum(job.eta_s)) parts.push(`ETA ${duration(job.eta_s)}`);
  return parts.join(" · ");
}

function resumeText(job) {
  const at = (job.resumes ?? []).map((r) => r.iteration);
  if (at.length) return `resumed at iteration ${at.join(", ")}`;
  return job.resumed_from ? `resumes ${job.resumed_from}` : "";   // a record from before resumes kept one job
}

function toast(severity, summary, detail, life = 6000) {
  try {
    app.extensionManager.toast.add({ severity, summary, detail, life });
  } catch (e) {
    console.warn("[DenseGRPO]", summary, detail);
  }
}

function recentCount() {
  try {
    const n = Number(app.extensionManager.setting.get(RECENT_SETTING));
    return Number.isFinite(n) && n >= 1 ? Math.floor(n) : RECENT_DEFAULT;
  } catch (e) {
    return RECENT_DEFAULT;
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
  // a job an event announced after the list was read; an ended job missing from the list was deleted
  for (const [id, job] of state.jobs) if (!fresh.has(id) && ACTIVE.has(job.state)) fresh.set(id, job);
  for (const id of state.details.keys()) if (!fresh.has(id)) state.details.delete(id);
  state.jobs = fresh;
  state.listed = true;
  if (!state.selected || !state.jobs.has(state.selected)) state.selected = sortedJobs()[0]?.id ?? null;
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

function sortedJobs() {
  return [...state.jobs.values()].sort((a, b) => (b.created ?? 0) - (a.created ?? 0));
}

function removeJob(id) {
  state.jobs.delete(id);
  state.details.delete(id);
  if (state.large === id) closeModal();
  if (state.selected === id) state.selected = sortedJobs()[0]?.id ?? null;
  scheduleRender();
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
  if (ev.type === "deleted") {
    removeJob(ev.job_id);
    return;
  }
  const before = state.jobs.get(ev.job_id);
  if (ev.job) state.jobs.set(ev.job_id, { ...before, ...ev.job });
  const detail = state.details.get(ev.job_id);
  if (detail) {
    const newer = (list) => !list.length || ev.iteration > list[list.length - 1].iteration;
    if (ev.type === "iteration" && newer(detail.metrics)) detail.metrics.push(curvePoint(ev));
    else if (ev.type === "eval" && newer(detail.evals)) detail.evals.push(curvePoint(ev));
    else if (ev.type === "plots") detail.plots = ev.iteration;
    else if (ev.type === "resumed") {   // the run's history from its checkpoint: read it again
      state.details.delete(ev.job_id);
      ensureDetail(ev.job_id);
    }
  }
  if (ev.type === "state" && ACTIVE.has(ev.state)) {   // queued again (a resume): its next end is news again
    for (const end of TERMINAL) state.toasted.delete(`${ev.job_id}:${end}`);
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

async function deleteJob(id) {
  const job = state.jobs.get(id);
  if (!job) return;
  const ok = await confirmDialog({
    title: "Delete this training job?",
    message: `${job.name} (${id}), ${job.state} at iteration ${job.iteration}/${job.total}: its record, checkpoint, `
      + `plots and samples (output/densegrpo/jobs/${id}) are deleted. Its LoRA files in models/loras stay.`
      + (job.state === "finished" ? "" : " It can no longer be resumed."),
    confirm: "Delete",
  });
  if (!ok) return;
  try {
    await getJSON(`/densegrpo/jobs/${id}`, { method: "DELETE" });
    removeJob(id);
  } catch (e) {
    toast("error", "DenseGRPO: cannot delete the job", String(e.message ?? e), 8000);
  }
}

async function clearFinished() {
  const finished = sortedJobs().filter((j) => j.state === "finished");
  if (!finished.length) return;
  const ok = await confirmDialog({
    title: `Delete ${finished.length} finished job${finished.length > 1 ? "s" : ""}?`,
    message: "Their records, checkpoints, plots and samples are deleted; their LoRA files in models/loras stay. "
      + "Stopped and failed jobs are kept (they can be resumed).",
    confirm: "Delete", items: finished.map((j) => `${j.name} (${j.id})`),
  });
  if (!ok) return;
  try {
    const { deleted } = await getJSON("/densegrpo/jobs/clear_finished", { method: "POST" });
    for (const id of deleted) removeJob(id);
  } catch (e) {
    toast("error", "DenseGRPO: cannot clear the finished jobs", String(e.message ?? e), 8000);
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
  if ((!state.root && !state.modal) || state.frame) return;
  state.frame = requestAnimationFrame(() => { state.frame = 0; render(); });
}

function jobRow(job) {
  const selected = job.id === state.selected;
  const meta = [job.meta?.model, job.meta?.advantage_mode, resumeText(job)].filter(Boolean).join(" · ");
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
  meta ? el("div", { class: "densegrpo-meta" }, meta) : null,
  el("div", { class: "densegrpo-meta densegrpo-progress" }, progressLine(job)),
  job.error ? el("div", { class: "densegrpo-error" }, job.error) : null);
}

// the rows listed until "show all": the active jobs, the most recent ended ones and the selected one
function recentJobs(jobs) {
  const n = recentCount();
  let ended = 0;
  return jobs.filter((j) => ACTIVE.has(j.state) || ended++ < n || j.id === state.selected);
}

function listView(jobs) {
  const recent = recentJobs(jobs);
  const shown = state.showAll ? jobs : recent;
  const more = jobs.length - recent.length;
  const toggle = !more ? null : state.showAll
    ? el("button", { class: "densegrpo-btn small", "data-action": "show-recent", onclick: () => { state.showAll = false; render(); } },
      "Show recent jobs only")
    : el("button", { class: "densegrpo-btn small", "data-action": "show-all", onclick: () => { state.showAll = true; render(); } },
      `Show all ${jobs.length} jobs (${more} more)`);
  return el("div", { class: "densegrpo-list", "data-shown": shown.length, "data-hidden": jobs.length - shown.length },
    shown.map(jobRow), toggle ? el("div", { class: "densegrpo-list-toggle" }, toggle) : null);
}

function signCounts(job, large = false) {
  const m = job.last_metric ?? {};
  if (!Array.isArray(m.dR_pos) || !Array.isArray(m.dR_neg)) return null;
  const T = m.dR_pos.length;
  const title = el("div", { class: "densegrpo-title" }, `ΔR signs per step (it. ${m.iteration})`,
    el("span", { class: "densegrpo-legend" }, el("i", { class: "sw pos" }), ">0 ", el("i", { class: "sw neg" }), "<0"));
  const n = Math.max(1, ...m.dR_pos.map((p, i) => p + m.dR_neg[i]));
  const cols = m.dR_pos.map((p, i) => {
    const q = m.dR_neg[i];
    return el("div", { class: "densegrpo-bar", title: `step ${T - i}: ΔR>0 ×${p}, ΔR<0 ×${q}` },
      el("div", { class: "pos-box" }, el("div", { class: "pos", style: `height:${(100 * p) / n}%` })),
      el("div", { class: "neg-box" }, el("div", { class: "neg", style: `height:${(100 * q) / n}%` })),
      el("div", { class: "densegrpo-step" }, String(T - i)));
  });
  const zero = m.dR_pos.every((p, i) => p + m.dR_neg[i] === 0);
  return el("div", { class: "densegrpo-section" }, title,
    el("div", { class: `densegrpo-bars${large ? " large" : ""}${zero ? " zero" : ""}`, "data-steps": T }, cols),
    zero ? el("div", { class: "densegrpo-meta" }, `every ΔR_t was 0 in iteration ${m.iteration}`) : null);
}

// the cost of the last iteration: NFE (network evaluations) and, with an SDE window, which steps were SDE
function costView(job) {
  const m = job.last_metric ?? {};
  if (typeof m.nfe !== "number") return null;
  const T = Array.isArray(m.dR_pos) ? m.dR_pos.length : (job.config?.steps ?? job.steps);
  const windowed = typeof m.sde_window_start === "number" && typeof m.sde_window_end === "number";
  const text = [`NFE ${m.nfe} per iteration`, isNum(m.nfe_per_trajectory) ? `${num(m.nfe_per_trajectory)} per trajectory` : null,
    windowed ? `SDE window: grid steps ${m.sde_window_start}–${m.sde_window_end - 1}` : "every step SDE"].filter(Boolean).join(" · ");
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
const ITERATION_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];   // whole-iteration ticks

// the run's health warnings of the last iteration (densegrpo_core/training/health.py)
function warningsView(job) {
  const warnings = job.last_metric?.warnings;
  if (!Array.isArray(warnings) || !warnings.length) return null;
  return el("div", { class: "densegrpo-warnings", "data-iteration": job.last_metric.iteration },
    warnings.map((w) => el("div", { class: "densegrpo-warning", "data-code": w.code, title: w.code }, `⚠ ${w.message}`)));
}

// a dashed vertical line where each resume continued the run (drawn over the plot, one element per mark)
function resumeMarks(iterations) {
  const draw = (u) => {
    u.over.querySelectorAll(".densegrpo-resume-mark").forEach((m) => m.remove());
    for (const k of iterations) {
      const x = u.valToPos(k, "x");
      if (!isFinite(x) || x < 0 || x > u.over.clientWidth + 0.5) continue;
      u.over.append(el("div", { class: "densegrpo-resume-mark", style: `left:${x}px`, "data-iteration": k,
                                title: `resumed at iteration ${k}` }, el("span", {}, `↻ ${k}`)));
    }
  };
  return { hooks: { draw: [draw] } };
}

function curveAttrs(job, detail) {
  const its = detail.metrics.map((p) => p.iteration);
  return {
    "data-points": its.length, "data-first-iteration": its.length ? its[0] : null,
    "data-last-iteration": its.length ? its[its.length - 1] : null,
    "data-resumes": (job.resumes ?? []).map((r) => r.iteration).join(","),
  };
}

// draw (or update) the `which` chart ("small" in the panel, "large" in the dialog) into container
function drawChart(container, job, detail, which, width, height) {
  const holder = state.charts[which];
  const data = chartData(detail);
  const fg = getComputedStyle(document.body).getPropertyValue("--fg-color").trim() || "#ddd";
  const grid = getComputedStyle(document.body).getPropertyValue("--border-color").trim() || "#444";
  const series = [{ label: "iteration" }, { label: "training reward", stroke: "#4ea1ff", width: 2, spanGaps: true }];
  if (detail.evals.length) series.push({ label: "evaluation reward", stroke: "#ffb347", width: 2, spanGaps: true });
  heldOutNames(detail).forEach((name, i) => series.push(
    { label: `eval ${name}`, stroke: HELD_OUT_COLORS[i % HELD_OUT_COLORS.length], width: 1.5, dash: [4, 3], spanGaps: true }));
  const marks = (job.resumes ?? []).map((r) => r.iteration);
  const key = `${job.id}:${series.length}:${marks.join(",")}`;
  if (holder.plot && holder.key === key && holder.plot.root.isConnected) {
    holder.plot.setData(data);
    if (Math.abs(holder.plot.width - width) > 2 || Math.abs(holder.plot.height - height) > 2) holder.plot.setSize({ width, height });
    return;
  }
  holder.plot?.destroy();
  container.replaceChildren();
  const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
  holder.plot = new uPlot({
    width, height, scales: { x: { time: false } }, series, plugins: [resumeMarks(marks)],
    axes: [{ ...axis, label: "iteration", incrs: ITERATION_STEPS }, { ...axis, size: 50 }], legend: { show: true },
    cursor: { drag: { x: false, y: false } },
  }, data, container);
  holder.key = key;
}

function dropChart(which) {
  const holder = state.charts[which];
  holder.plot?.destroy();
  holder.plot = null; holder.key = null;
}

function imageFigures(job, detail, large = false) {
  if (!detail.plots) return [];
  return JOB_IMAGES.filter(([file]) => JOB_FILES.includes(file)).map(([file, label]) => el("figure", { class: "densegrpo-figure" },
    el("img", { src: api.apiURL(`/densegrpo/jobs/${job.id}/files/${file}?v=${detail.plots}`), alt: label,
                "data-file": file, title: large ? label : "click for a large view",
                onclick: large ? null : () => openLarge(job.id),
                onerror: (e) => { e.target.closest("figure")?.remove(); } }),
    el("figcaption", {}, `${label} (iteration ${detail.plots})`)));
}

function detailView(job) {
  const detail = state.details.get(job.id) ?? { metrics: [], evals: [], plots: null };
  const buttons = el("div", { class: "densegrpo-buttons" },
    ACTIVE.has(job.state) && job.state !== "stopping"
      ? el("button", { class: "densegrpo-btn", "data-action": "stop", onclick: () => stopJob(job.id) }, "Stop") : null,
    (job.state === "stopped" || job.state === "failed")
      ? el("button", { class: "densegrpo-btn", "data-action": "resume", onclick: () => resumeJob(job.id) }, "Resume") : null,
    el("button", { class: "densegrpo-btn", "data-action": "enlarge", title: "the curve, ΔR signs and samples, large",
                   onclick: () => openLarge(job.id) }, "⤢ Large view"),
    TERMINAL.has(job.state)
      ? el("button", { class: "densegrpo-btn danger", "data-action": "delete", title: "delete this job (its LoRA files stay)",
                       onclick: () => deleteJob(job.id) }, "Delete") : null);
  const chart = el("div", { class: "densegrpo-chart", ...curveAttrs(job, detail) });
  const loras = [...(job.loras ?? [])].reverse().slice(0, 6);
  const images = imageFigures(job, detail);
  const view = el("div", { class: "densegrpo-detail", "data-job-id": job.id },
    el("div", { class: "densegrpo-title" }, `${job.name} · ${job.id}`),
    el("div", { class: "densegrpo-meta" }, [`state ${job.state}`, progressLine(job), resumeText(job)].filter(Boolean).join(" · ")),
    buttons,
    warningsView(job),
    el("div", { class: "densegrpo-section" }, el("div", { class: "densegrpo-title" }, "reward"),
      detail.metrics.length ? chart : el("div", { class: "densegrpo-meta" }, "no iteration yet")),
    costView(job),
    signCounts(job),
    images.length ? el("div", { class: "densegrpo-section densegrpo-images" }, images) : null,
    el("div", { class: "densegrpo-section" },
      el("div", { class: "densegrpo-title" }, "LoRA files (models/loras)"),
      loras.length ? loras.map((name) => el("div", { class: "densegrpo-lora" },
        el("span", { class: "densegrpo-lora-name", title: name }, name),
        el("button", { class: "densegrpo-btn small", "data-action": "add-lora", onclick: () => addLora(name) },
          "Add LoRA to workflow")))
        : el("div", { class: "densegrpo-meta" }, "none yet")));
  if (detail.metrics.length) {
    queueMicrotask(() => drawChart(chart, job, detail, "small", Math.max(200, (state.root?.clientWidth ?? 320) - 24), 170));
  }
  return view;
}

// the large view of a job: its curve, ΔR signs and samples, in a dialog over the page (kept live)
function largeView(job) {
  const detail = state.details.get(job.id) ?? { metrics: [], evals: [], plots: null };
  const chart = el("div", { class: "densegrpo-chart large", ...curveAttrs(job, detail) });
  const images = imageFigures(job, detail, true);
  const body = el("div", { class: "densegrpo-large", "data-job-id": job.id },
    el("div", { class: "densegrpo-meta" }, [`state ${job.state}`, progressLine(job), resumeText(job)].filter(Boolean).join(" · ")),
    warningsView(job),
    el("div", { class: "densegrpo-section" }, el("div", { class: "densegrpo-title" }, "reward"),
      detail.metrics.length ? chart : el("div", { class: "densegrpo-meta" }, "no iteration yet")),
    el("div", { class: "densegrpo-large-row" }, signCounts(job, true), costView(job)),
    images.length ? el("div", { class: "densegrpo-section densegrpo-images large" }, images) : null);
  if (detail.metrics.length) {
    queueMicrotask(() => {
      const width = Math.max(320, (state.modal?.querySelector(".densegrpo-modal-body")?.clientWidth ?? 900) - 24);
      drawChart(chart, job, detail, "large", width, Math.max(220, Math.round(window.innerHeight * 0.4)));
    });
  }
  return body;
}

// ----------------------------------------------------------------------------------------- dialogs
// A plain DOM dialog over the page (role=dialog): Escape, the × button or a click beside it close it.
function openModal({ title, content, className = "", onClose }) {
  closeModal();
  const close = () => closeModal();
  const box = el("div", { class: `densegrpo-modal ${className}`, role: "dialog", "aria-modal": "true", "aria-label": title, tabindex: "-1" },
    el("div", { class: "densegrpo-modal-header" },
      el("span", { class: "densegrpo-modal-title" }, title),
      el("button", { class: "densegrpo-btn small", "data-action": "close", title: "close (Esc)", onclick: close }, "✕")),
    el("div", { class: "densegrpo-modal-body" }, content));
  const backdrop = el("div", { class: "densegrpo-modal-backdrop", onclick: (e) => { if (e.target === backdrop) close(); } }, box);
  // keys stay in the dialog: ComfyUI's shortcuts (Delete removes canvas nodes) must not see them
  backdrop.addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Escape") { e.preventDefault(); close(); }
  });
  backdrop.onCloseDialog = onClose;
  document.body.append(backdrop);
  state.modal = backdrop;
  (box.querySelector("[data-autofocus]") ?? box).focus();
  return box;
}

function closeModal() {
  const modal = state.modal;
  if (!modal) return;
  state.modal = null;
  modal.remove();
  modal.onCloseDialog?.();
}

function openLarge(id) {
  const job = state.jobs.get(id);
  if (!job) return;
  state.large = id;
  ensureDetail(id);
  openModal({ title: `${job.name} · ${job.id}`, content: largeView(job), className: "densegrpo-large-dialog",
              onClose: () => { state.large = null; dropChart("large"); } });
}

// refresh the open large view with the job's newest data (keeps its live uPlot instance)
function renderLarge() {
  const job = state.large && state.jobs.get(state.large);
  const body = state.modal?.querySelector(".densegrpo-modal-body");
  if (!job || !body) return;
  const keep = state.charts.large.plot?.root.parentElement;
  const view = largeView(job);
  if (keep) view.querySelector(".densegrpo-chart")?.append(state.charts.large.plot.root);
  reuseImages(body, view);
  const scroll = body.scrollTop;
  body.replaceChildren(view);
  body.scrollTop = scroll;
}

// move the loaded images of `before` into `after` where the same file would be loaded again (no flicker)
function reuseImages(before, after) {
  for (const img of after.querySelectorAll("img[data-file]")) {
    const old = before.querySelector(`img[data-file="${img.dataset.file}"]`);
    if (old && old.src === img.src && old.complete && old.naturalWidth > 0) img.replaceWith(old);
  }
}

// a confirmation dialog: resolves true for the confirm button, false for Cancel, Escape or a click beside it
function confirmDialog({ title, message, confirm = "OK", items = [] }) {
  return new Promise((resolve) => {
    let answer = false;
    const done = (value) => { answer = value; closeModal(); };
    openModal({
      title, className: "densegrpo-confirm", onClose: () => resolve(answer),
      content: [
        el("div", { class: "densegrpo-confirm-message" }, message),
        items.length ? el("ul", { class: "densegrpo-confirm-items" }, items.slice(0, 12).map((t) => el("li", {}, t)),
          items.length > 12 ? el("li", {}, `… and ${items.length - 12} more`) : null) : null,
        el("div", { class: "densegrpo-buttons densegrpo-confirm-buttons" },
          el("button", { class: "densegrpo-btn", "data-action": "cancel", "data-autofocus": true, onclick: () => done(false) }, "Cancel"),
          el("button", { class: "densegrpo-btn danger", "data-action": "confirm", onclick: () => done(true) }, confirm)),
      ],
    });
  });
}

function render() {
  const root = state.root;
  renderLarge();
  if (!root || !root.isConnected) return;
  const jobs = sortedJobs();
  const selected = state.jobs.get(state.selected);
  if (selected) ensureDetail(selected.id);
  const small = state.charts.small;
  if (small.plot && (!selected || small.key?.split(":")[0] !== selected.id)) dropChart("small");
  const keepChart = small.plot?.root.parentElement;
  const finished = jobs.filter((j) => j.state === "finished").length;
  const body = el("div", { class: "densegrpo-panel", "data-listed": state.listed ? "1" : "0", "data-jobs": jobs.length },
    el("div", { class: "densegrpo-header" },
      el("span", {}, "DenseGRPO training jobs"),
      finished ? el("button", { class: "densegrpo-btn small", "data-action": "clear-finished",
                                title: "delete the finished jobs (their LoRA files stay)", onclick: clearFinished },
        `Clear finished (${finished})`) : null),
    jobs.length ? listView(jobs)
      : el("div", { class: "densegrpo-empty" }, state.listed
        ? "No training job yet. Queue a workflow with DenseGRPO Train LoRA: its job appears here and updates live."
        : "Loading…"),
    selected ? detailView(selected) : null);
  if (keepChart) {   // keep the live uPlot instance: move it into the new chart container
    const slot = body.querySelector(".densegrpo-detail .densegrpo-chart");
    if (slot) slot.append(small.plot.root);
  }
  const previous = root.querySelector(".densegrpo-detail");
  const same = previous && previous.dataset.jobId === selected?.id;
  if (same) reuseImages(previous, body);
  const scroll = same ? previous.scrollTop : 0;
  const listScroll = root.querySelector(".densegrpo-list")?.scrollTop ?? 0;
  root.replaceChildren(body);
  const detail = body.querySelector(".densegrpo-detail");
  if (detail) detail.scrollTop = scroll;
  const list = body.querySelector(".densegrpo-list");
  if (list) list.scrollTop = listScroll;
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
  dropChart("small");
  state.root = null;
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
    }, {
      id: RECENT_SETTING, category: ["DenseGRPO", "Panel", "Recent jobs"], type: "number", defaultValue: RECENT_DEFAULT,
      attrs: { min: 1, max: 100, step: 1 },
      name: "Ended jobs the DenseGRPO panel lists before \"Show all\" (queued and running ones are always listed)",
      onChange: () => scheduleRender(),
    }],
    setup() {
      app.extensionManager.registerSidebarTab({
        id: TAB_ID, icon: "pi pi-chart-line", title: "DenseGRPO", tooltip: "DenseGRPO training jobs",
        type: "custom", render: mount, destroy: unmount,
      });
    },
  });
}
