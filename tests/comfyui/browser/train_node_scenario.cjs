// The Train node on ComfyUI's real canvas, in headless Chromium: its height before (the 31-widget node, on a
// ComfyUI running the pack as of the commit before the change) and after (the compact node + the Training
// Options node), where an old workflow's values land, a screenshot of the new layout, and the Training Status
// node's preview while its job starts.
// Run by tests/comfyui/test_train_node_in_browser.py:  node train_node_scenario.cjs CONFIG.json
// CONFIG: {url, old_url (or null), old_workflow, new_workflow (UI format), status_prompt (API format),
//          playwright (node_modules dir), chromium, screenshot (PNG path or null), timeout_ms}
// Prints one JSON object of observations on stdout; every wait is for a page condition, never a sleep.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf-8"));
const { chromium } = require(path.join(cfg.playwright, "playwright-core"));
const T = cfg.timeout_ms || 180000;
const out = { steps: [] };
const TRAIN = "DenseGRPO_TrainLoRA";
const OPTIONS = "DenseGRPO_TrainingOptions";
const STATUS = "DenseGRPO_TrainingStatus";

function step(name, extra = {}) {
  out.steps.push({ name, t: Date.now(), ...extra });
}

async function openUI(page, url) {
  // the first-visit templates dialog waits for Comfy.TutorialCompleted: record the visit as done
  await fetch(`${url}/api/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph && window.app.canvas && window.comfyAPI?.api?.api,
    null, { timeout: T });
  for (let i = 0; i < 5 && await page.locator("[role=dialog]").count(); i++) {
    await page.keyboard.press("Escape");
    await page.waitForFunction((n) => document.querySelectorAll("[role=dialog]").length < n,
      await page.locator("[role=dialog]").count(), { timeout: 5000 }).catch(() => {});
  }
}

async function loadWorkflow(page, workflow) {
  await page.evaluate(async (wf) => {
    await window.app.loadGraphData(wf, true, true, null,
      { showMissingNodesDialog: false, showMissingModelsDialog: false });
  }, workflow);
  // the canvas draws once, so the DOM widgets (the multiline prompts) have their sizes
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

async function measure(page, comfyClass) {
  return page.evaluate((cls) => {
    const node = window.app.graph.nodes.find((n) => n.comfyClass === cls);
    if (!node) return null;
    const link = (i) => (i.link == null ? null : window.app.graph.links[i.link] ?? window.app.graph.links.get?.(i.link));
    return {
      id: node.id,
      size: [node.size[0], node.size[1]],
      min_size: [...node.computeSize()],
      widgets: Object.fromEntries((node.widgets ?? []).map((w) => [w.name, w.value])),
      widget_count: (node.widgets ?? []).length,
      inputs: node.inputs.map((i) => ({ name: i.name, type: i.type, from: link(i)?.origin_id ?? null })),
    };
  }, comfyClass);
}

async function screenshotNodes(page, classes, file) {
  // frame the nodes: scale and offset of the canvas so that their boxes (with titles) fill the view
  const clip = await page.evaluate((names) => {
    const canvas = window.app.canvas;
    canvas.show_info = false;  // no render statistics in the corner
    const nodes = window.app.graph.nodes.filter((n) => names.includes(n.comfyClass));
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const pad = 30;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])) - pad - 60;  // a little of the links coming in
    const y0 = Math.min(...nodes.map((n) => n.pos[1] - title)) - pad;
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + pad + 60;
    const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + pad;
    // the part of the canvas that no tab bar, side bar or menu covers
    const rect = canvas.canvas.getBoundingClientRect();
    const view = { left: rect.left + 70, top: rect.top + 90, width: rect.width - 90, height: rect.height - 110 };
    const scale = Math.min(1, view.height / (y1 - y0), view.width / (x1 - x0));
    canvas.ds.scale = scale;
    canvas.ds.offset[0] = (view.left - rect.left) / scale - x0;
    canvas.ds.offset[1] = (view.top - rect.top) / scale - y0;
    canvas.setDirty(true, true);
    return { x: view.left, y: view.top, width: (x1 - x0) * scale, height: (y1 - y0) * scale };
  }, classes);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await page.screenshot({ path: file, clip });
  return clip;
}

async function imageStats(page, src) {
  // mean and spread of the grey level of an image the page can fetch (0 = black, 255 = white)
  return page.evaluate(async (url) => {
    const blob = await (await fetch(url)).blob();
    const bitmap = await createImageBitmap(blob);
    const c = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = c.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const d = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    let sum = 0, sq = 0;
    const n = d.length / 4;
    for (let i = 0; i < d.length; i += 4) {
      const g = (d[i] + d[i + 1] + d[i + 2]) / 3;
      sum += g;
      sq += g * g;
    }
    const mean = sum / n;
    return { width: bitmap.width, height: bitmap.height, mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)) };
  }, src);
}

(async () => {
  const userDir = fs.mkdtempSync(path.join(os.tmpdir(), "densegrpo_chromium_"));
  const context = await chromium.launchPersistentContext(userDir, {
    executablePath: cfg.chromium, headless: true, viewport: { width: 1440, height: 1240 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const page = context.pages()[0] || await context.newPage();
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  try {
    if (cfg.old_url) {  // before: the old node, on the pack as it was
      await openUI(page, cfg.old_url);
      await loadWorkflow(page, cfg.old_workflow);
      out.old_node_on_old_pack = await measure(page, TRAIN);
      step("old node measured");
    }
    await openUI(page, cfg.url);
    step("ui loaded");
    await loadWorkflow(page, cfg.old_workflow);  // an old workflow on the new pack
    out.old_workflow = { train: await measure(page, TRAIN), options: await measure(page, OPTIONS) };
    step("old workflow loaded");
    await loadWorkflow(page, cfg.new_workflow);
    out.new_workflow = { train: await measure(page, TRAIN), options: await measure(page, OPTIONS) };
    step("new workflow loaded");
    if (cfg.screenshot) out.screenshot_clip = await screenshotNodes(page, [TRAIN, OPTIONS], cfg.screenshot);

    // the Status node right after its Train node started a job: the job has drawn nothing yet
    await page.evaluate(([p]) => window.app.loadApiJson(p, "densegrpo_status_test"), [cfg.status_prompt]);
    await page.locator('button[aria-label="Run"]').click();
    step("run clicked");
    const shown = await page.waitForFunction((cls) => {
      const node = window.app.graph.nodes.find((n) => n.comfyClass === cls);
      const images = node && window.app.nodeOutputs?.[String(node.id)]?.images;
      return images?.length ? images : null;
    }, STATUS, { timeout: T, polling: 250 }).then((h) => h.jsonValue());
    out.status_images = shown;
    const im = shown[0];
    const url = `/api/view?filename=${encodeURIComponent(im.filename)}&type=${im.type}&subfolder=${encodeURIComponent(im.subfolder ?? "")}`;
    out.status_preview = await imageStats(page, url);
    out.status_text = await page.waitForFunction((cls) => {
      const node = window.app.graph.nodes.find((n) => n.comfyClass === cls);
      const texts = window.app.nodeOutputs?.[String(node.id)]?.text;
      return texts?.length ? texts.join("\n") : null;
    }, STATUS, { timeout: T, polling: 250 }).then((h) => h.jsonValue());
    step("status preview checked", out.status_preview);
  } catch (e) {
    out.error = String(e && e.stack || e);
    try { await page.screenshot({ path: path.join(os.tmpdir(), "densegrpo_train_node_failure.png") }); } catch {}
  } finally {
    out.console = consoleLines.slice(-60);
    await context.close();
    fs.rmSync(userDir, { recursive: true, force: true });
    process.stdout.write(JSON.stringify(out));
  }
})();
