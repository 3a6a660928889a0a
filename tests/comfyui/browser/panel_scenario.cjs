// Drives ComfyUI's real front-end in headless Chromium like a new user: load a training workflow, press Run,
// open the DenseGRPO sidebar tab, watch the job's iteration rise, press Run again, press Stop, Resume (the same
// row goes on, its curve from iteration 1 with a resume mark), open the large view, Stop, run a short job to its
// end, reload, clear the finished jobs, delete the stopped one (cancel once, then confirm), reload.
// Run by tests/comfyui/test_panel_in_browser.py:  node panel_scenario.cjs CONFIG.json
// CONFIG: {url, prompt (API format), short_prompt (a 2-iteration run), short_name (its LoRA name), train_node,
//          playwright (node_modules dir), chromium, screenshots, timeout_ms}
// Prints one JSON object of observations on stdout; every wait is for a DOM/page condition, never a sleep.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf-8"));
const { chromium } = require(path.join(cfg.playwright, "playwright-core"));
const T = cfg.timeout_ms || 180000;
const out = { steps: [] };

function step(name, extra = {}) {
  out.steps.push({ name, t: Date.now(), ...extra });
}

async function shot(page, name) {
  if (!cfg.screenshots) return;
  fs.mkdirSync(cfg.screenshots, { recursive: true });
  await page.screenshot({ path: path.join(cfg.screenshots, name) });
}

async function openUI(page) {
  // ComfyUI shows a first-visit templates dialog (over everything) to a user whose settings lack
  // Comfy.TutorialCompleted, at a moment of its own choosing: record the visit as done, as that dialog does
  await fetch(`${cfg.url}/api/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });
  // list one ended job before "Show all" (default 5), so two ended jobs already show the cap
  await fetch(`${cfg.url}/api/settings/DenseGRPO.Panel.RecentJobs`, { method: "POST", body: "1" });
  await page.goto(cfg.url);
  await page.waitForFunction(() => window.app?.graph && window.app.extensionManager && window.comfyAPI?.api?.api,
    null, { timeout: T });
  await page.locator(".densegrpo-tab-button").waitFor({ timeout: T });
  // a new user gets the templates dialog first: close it like they would
  for (let i = 0; i < 5 && await page.locator("[role=dialog]").count(); i++) {
    await page.keyboard.press("Escape");
    await page.waitForFunction((n) => document.querySelectorAll("[role=dialog]").length < n,
      await page.locator("[role=dialog]").count(), { timeout: 5000 }).catch(() => {});
  }
  await page.evaluate(() => {
    window.__dgEvents = [];
    window.comfyAPI.api.api.addEventListener("densegrpo.job", (e) => window.__dgEvents.push(e.detail));
  });
}

async function openPanel(page) {
  if (!(await page.locator(".densegrpo-panel").count())) await page.locator(".densegrpo-tab-button").click();
  await page.locator('.densegrpo-panel[data-listed="1"]').waitFor({ timeout: T });
}

async function jobRow(page, predicate, arg) {
  const handle = await page.waitForFunction(([src, a]) => {
    const test = new Function("row", "arg", `return (${src})(row, arg)`);
    const row = [...document.querySelectorAll(".densegrpo-job")].find((r) => test(r, a));
    return row ? { id: row.dataset.jobId, state: row.dataset.state, iteration: Number(row.dataset.iteration),
                   text: row.textContent } : null;
  }, [predicate.toString(), arg], { timeout: T, polling: "raf" });
  const row = await handle.jsonValue();
  out.row_texts = [...(out.row_texts ?? []), ...await page.evaluate(() => [...document.querySelectorAll(".densegrpo-job")]
    .map((r) => r.textContent))];
  return row;
}

// the selected job's reward curve as the panel drew it: data of its points and the resume marks over it
async function curve(page, scope, minLast) {
  const handle = await page.waitForFunction(([sel, last]) => {
    const c = document.querySelector(`${sel} .densegrpo-chart`);
    if (!c || !c.querySelector("canvas") || Number(c.dataset.lastIteration) < last) return null;
    const marks = [...c.querySelectorAll(".densegrpo-resume-mark")].map((m) => Number(m.dataset.iteration));
    if (c.dataset.resumes && marks.length !== c.dataset.resumes.split(",").length) return null;   // not drawn yet
    return { points: Number(c.dataset.points), first: Number(c.dataset.firstIteration),
             last: Number(c.dataset.lastIteration), resumes: c.dataset.resumes, marks,
             width: c.querySelector("canvas").getBoundingClientRect().width };
  }, [scope, minLast], { timeout: T, polling: "raf" });
  return handle.jsonValue();
}

async function rowsNamed(page, name) {
  return page.evaluate((n) => [...document.querySelectorAll(".densegrpo-job")]
    .filter((r) => r.querySelector(".densegrpo-name")?.textContent === n).map((r) => r.dataset.jobId), name);
}

async function listedJobs(page) {
  return page.evaluate(async () => (await (await fetch("/densegrpo/jobs")).json()).jobs
    .map((j) => ({ id: j.id, name: j.name, state: j.state })));
}

async function gone(page, id) {
  await page.waitForFunction((i) => !document.querySelector(`.densegrpo-job[data-job-id="${i}"]`), id, { timeout: T });
}

async function historyDone(page) {
  return page.evaluate(async () => Object.values(await (await fetch("/api/history")).json())
    .filter((e) => e.status?.completed || e.status?.status_str === "error").length);
}

async function waitHistory(page, n) {
  await page.waitForFunction(async (k) => {
    const h = await (await fetch("/api/history")).json();
    return Object.values(h).filter((e) => e.status?.completed || e.status?.status_str === "error").length >= k;
  }, n, { timeout: T, polling: 250 });
}

(async () => {
  const userDir = fs.mkdtempSync(path.join(os.tmpdir(), "densegrpo_chromium_"));
  const context = await chromium.launchPersistentContext(userDir, {
    executablePath: cfg.chromium, headless: true, viewport: { width: 1440, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const page = context.pages()[0] || await context.newPage();
  const consoleLines = [];
  let prompts = 0;
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("request", (r) => { if (r.method() === "POST" && new URL(r.url()).pathname === "/api/prompt") prompts++; });
  try {
    await openUI(page);
    step("ui loaded");
    await openPanel(page);
    out.empty_panel_text = await page.locator(".densegrpo-panel").textContent();

    await page.evaluate(([p]) => window.app.loadApiJson(p, "densegrpo_panel_test"), [cfg.prompt]);
    await page.locator('button[aria-label="Run"]').click();
    step("run clicked");

    const first = await jobRow(page, (r) => r.dataset.state === "running" && Number(r.dataset.iteration) >= 1);
    out.job_id = first.id;
    out.first_iteration = first.iteration;
    step("job running", first);
    const later = await jobRow(page, (r, a) => r.dataset.jobId === a.id && Number(r.dataset.iteration) >= a.it + 3,
      { id: first.id, it: first.iteration });
    out.later_iteration = later.iteration;
    out.prompts_posted_while_watching = prompts;
    out.later_text = later.text;
    step("iteration rose", later);

    await page.locator(".densegrpo-chart canvas").first().waitFor({ timeout: T });
    await page.locator(".densegrpo-bars").waitFor({ timeout: T });
    await page.waitForFunction(() => [...document.querySelectorAll(".densegrpo-figure img")]
      .some((i) => i.complete && i.naturalWidth > 0), null, { timeout: T });
    await page.locator('.densegrpo-lora button[data-action="add-lora"]').first().waitFor({ timeout: T });
    out.detail_text = await page.locator(".densegrpo-detail").textContent();
    out.chart_series = await page.waitForFunction(() => {
      const labels = [...document.querySelectorAll(".densegrpo-chart .u-legend .u-series .u-label")]
        .map((e) => e.textContent.trim());
      return labels.some((l) => l.startsWith("eval ")) ? labels : null;
    }, null, { timeout: T }).then((h) => h.jsonValue());
    out.warnings = await page.waitForFunction(() => {
      const w = [...document.querySelectorAll(".densegrpo-warning")]
        .map((e) => ({ code: e.dataset.code, text: e.textContent }));
      return w.length ? w : null;
    }, null, { timeout: T }).then((h) => h.jsonValue());
    step("held-out reward and warning shown", { series: out.chart_series, warnings: out.warnings.length });
    out.node_progress_text = await page.waitForFunction(() => {
      const node = window.app.graph.nodes.find((n) => n.comfyClass === "DenseGRPO_TrainLoRA");
      const w = node?.widgets?.find((x) => x.name === "$$node-text-preview");
      return w && /iteration \d+\/\d+/.test(String(w.value)) ? String(w.value) : null;
    }, null, { timeout: T }).then((h) => h.jsonValue());

    // Run again with the same settings; a new nonce upstream makes ComfyUI execute the Train node again
    // (without it ComfyUI would just reuse the cached output) on the same MODEL: no second job
    const done = await historyDone(page);
    await page.evaluate(() => {
      const n = window.app.graph.nodes.find((x) => x.comfyClass === "DenseGRPOTest_Passthrough");
      n.widgets.find((w) => w.name === "nonce").value = 1;
    });
    await page.locator('button[aria-label="Run"]').click();
    await waitHistory(page, done + 1);
    out.second_run_text = await page.evaluate(async (id) => {
      const h = Object.values(await (await fetch("/api/history")).json());
      const last = h.filter((e) => e.outputs?.[id]).sort((a, b) => (a.prompt?.[0] ?? 0) - (b.prompt?.[0] ?? 0)).at(-1);
      return last?.outputs?.[id]?.text?.join(" ") ?? null;
    }, cfg.train_node);
    out.jobs_after_second_run = await page.evaluate(async () => (await (await fetch("/densegrpo/jobs")).json()).jobs
      .filter((j) => j.name === "browser_panel" && ["queued", "running"].includes(j.state)).map((j) => ({ id: j.id, state: j.state })));
    step("second run done");

    // Add LoRA to workflow
    const before = await page.evaluate(() => window.app.graph.nodes.length);
    await page.locator('.densegrpo-lora button[data-action="add-lora"]').first().click();
    out.lora_node = await page.evaluate((n) => {
      const nodes = window.app.graph.nodes;
      const added = nodes.length > n ? nodes[nodes.length - 1] : null;
      return added ? { type: added.comfyClass, lora: added.widgets.find((w) => w.name === "lora_name")?.value } : null;
    }, before);

    // Stop
    await page.locator('.densegrpo-detail button[data-action="stop"]').click();
    const stopping = await jobRow(page, (r, id) => r.dataset.jobId === id && r.dataset.state !== "running", out.job_id);
    out.state_after_stop_click = stopping.state;
    const stopped = await jobRow(page, (r, id) => r.dataset.jobId === id && r.dataset.state === "stopped", out.job_id);
    out.stopped_iteration = stopped.iteration;
    await page.locator('.densegrpo-detail button[data-action="resume"]').waitFor({ timeout: T });
    await page.waitForFunction(() => [...document.querySelectorAll(".p-toast-message")]
      .some((t) => /stopped/i.test(t.textContent)), null, { timeout: T });
    out.toast = await page.locator(".p-toast-message").last().textContent();
    out.stop_toasts = await page.locator(".p-toast-message", { hasText: "training stopped" }).count();
    step("stopped", stopped);

    out.events = await page.evaluate(() => window.__dgEvents);

    // Resume: the job's own workflow is queued again with resume_job set; the same job (one row) continues
    await page.locator('.densegrpo-detail button[data-action="resume"]').click();
    const resumed = await jobRow(page, (r, a) => r.dataset.jobId === a.id && r.dataset.state === "running"
      && Number(r.dataset.iteration) >= a.it + 2, { id: out.job_id, it: out.stopped_iteration });
    out.rows_after_resume = await rowsNamed(page, "browser_panel");
    out.curve_after_resume = await curve(page, ".densegrpo-detail", resumed.iteration);
    out.resumed = await page.evaluate(async (id) => (await fetch(`/densegrpo/jobs/${id}`)).json(), out.job_id);
    await shot(page, "comfyui_panel_running.png");   // docs/img: the resumed run, one row, its mark on the curve
    step("resumed", resumed);

    // The large view: the curve, ΔR signs and samples in a dialog, larger than in the sidebar
    await page.locator('.densegrpo-detail button[data-action="enlarge"]').click();
    out.large_curve = await curve(page, ".densegrpo-modal", resumed.iteration);
    await page.waitForFunction(() => [...document.querySelectorAll(".densegrpo-modal .densegrpo-figure img")]
      .some((i) => i.complete && i.naturalWidth > 0), null, { timeout: T });
    out.large = await page.evaluate(() => {
      const m = document.querySelector(".densegrpo-modal");
      return { role: m.getAttribute("role"), bars: !!m.querySelector(".densegrpo-bars.large"),
               images: [...m.querySelectorAll(".densegrpo-figure img")].map((i) => ({ file: i.dataset.file,
                 width: i.getBoundingClientRect().width, panel_width: document.querySelector(
                   `.densegrpo-detail .densegrpo-figure img[data-file="${i.dataset.file}"]`)?.getBoundingClientRect().width ?? 0 })),
               panel_chart_width: document.querySelector(".densegrpo-detail .densegrpo-chart canvas")?.getBoundingClientRect().width ?? 0 };
    });
    await shot(page, "comfyui_panel_large.png");
    await page.keyboard.press("Escape");
    await page.locator(".densegrpo-modal").waitFor({ state: "detached", timeout: T });
    step("large view opened and closed", out.large);

    await page.locator('.densegrpo-detail button[data-action="stop"]').click();
    const stoppedAgain = await jobRow(page, (r, id) => r.dataset.jobId === id && r.dataset.state === "stopped", out.job_id);
    out.resumed_stopped_iteration = stoppedAgain.iteration;
    step("resumed and stopped", stoppedAgain);

    // A short job runs to its end (a finished job for "Clear finished")
    await page.evaluate(async (p) => {
      const res = await fetch("/api/prompt", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: p, client_id: window.comfyAPI.api.api.clientId }) });
      if (!res.ok) throw new Error(`short job refused: ${await res.text()}`);
    }, cfg.short_prompt);
    const short = await jobRow(page, (r, n) => r.querySelector(".densegrpo-name")?.textContent === n
      && r.dataset.state === "finished", cfg.short_name);
    out.short_job = short;
    step("short job finished", short);

    // Reload: the job is still one row, with its final state and its whole curve
    await page.reload();
    await openUI(page);
    await openPanel(page);
    await jobRow(page, (r, id) => r.dataset.jobId === id, out.short_job.id);
    out.list_before_show_all = await page.evaluate(async () => {
      const list = document.querySelector(".densegrpo-list");
      const jobs = (await (await fetch("/densegrpo/jobs")).json()).jobs;  // other suites' jobs may share the server
      return { jobs: jobs.length, active: jobs.filter((j) => ["queued", "running", "stopping"].includes(j.state)).length,
               rows: [...list.querySelectorAll(".densegrpo-job")].map((r) => r.dataset.jobId),
               hidden: Number(list.dataset.hidden), button: list.querySelector('[data-action="show-all"]')?.textContent ?? null,
               detail: document.querySelector(".densegrpo-detail")?.dataset.jobId ?? null };
    });
    await page.locator('.densegrpo-list button[data-action="show-all"]').click();
    const again = await jobRow(page, (r, id) => r.dataset.jobId === id, out.job_id);
    out.after_reload = again;
    out.rows_after_reload = await rowsNamed(page, "browser_panel");
    await page.locator(`.densegrpo-job[data-job-id="${out.job_id}"]`).click();
    out.curve_after_reload = await curve(page, ".densegrpo-detail", again.iteration);
    await shot(page, "comfyui_panel_stopped.png");   // docs/img: after a reload, stopped, Clear finished offered
    step("reloaded", again);

    // Clear finished: a confirmation, then the finished job is gone and the stopped one stays
    await page.locator('.densegrpo-header button[data-action="clear-finished"]').click();
    out.clear_confirm = await page.locator(".densegrpo-confirm").textContent({ timeout: T });
    await page.locator('.densegrpo-confirm button[data-action="confirm"]').click();
    await gone(page, short.id);
    out.after_clear = await listedJobs(page);
    step("cleared finished", { jobs: out.after_clear.length });

    // Delete the stopped job: Cancel keeps it; Delete removes it, also after a reload
    await page.locator(`.densegrpo-job[data-job-id="${out.job_id}"]`).click();
    await page.locator('.densegrpo-detail button[data-action="delete"]').click();
    await page.locator('.densegrpo-confirm button[data-action="cancel"]').click();
    await page.locator(".densegrpo-modal").waitFor({ state: "detached", timeout: T });
    out.after_cancel = await listedJobs(page);
    await page.locator('.densegrpo-detail button[data-action="delete"]').click();
    out.delete_confirm = await page.locator(".densegrpo-confirm").textContent({ timeout: T });
    await shot(page, "comfyui_panel_delete.png");
    await page.locator('.densegrpo-confirm button[data-action="confirm"]').click();
    await gone(page, out.job_id);
    await page.reload();
    await openUI(page);
    await openPanel(page);
    out.rows_after_delete_reload = await page.evaluate(() => [...document.querySelectorAll(".densegrpo-job")]
      .map((r) => r.dataset.jobId));
    out.after_delete = await listedJobs(page);
    step("deleted and reloaded");
  } catch (e) {
    out.error = String(e && e.stack || e);
    await shot(page, "failure.png").catch(() => {});
  } finally {
    out.console = consoleLines;
    out.unknown_message_lines = consoleLines.filter((l) => /Unknown message type/i.test(l));
    await context.close().catch(() => {});
    fs.rmSync(userDir, { recursive: true, force: true });
    process.stdout.write(JSON.stringify(out));
  }
})();
