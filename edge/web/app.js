// edge-run playground: plain JS over the server's public HTTP API (same origin, no other host).
"use strict";

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------- HTTP
function apiHeaders(json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = localStorage.getItem("edge-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

/** The server's own words for a failed response: OpenAI's error.message, else the body. */
async function errorMessage(res) {
  const text = await res.text().catch(() => "");
  try {
    const j = JSON.parse(text);
    if (j && j.error && j.error.message) return j.error.message;
    if (j && j.detail) return typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail);
  } catch (_) { /* not JSON */ }
  return `HTTP ${res.status} ${res.statusText}${text ? ": " + text.slice(0, 300) : ""}`;
}

class ApiError extends Error {}

/** fetch + JSON, throwing ApiError(server message) on HTTP errors and on network failures. */
async function api(path, { method = "GET", body, signal } = {}) {
  let res;
  try {
    res = await fetch(path, { method, headers: apiHeaders(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`could not reach the server (${e.message}). Is \`edge-run serve\` still running?`);
  }
  if (!res.ok) throw new ApiError(await errorMessage(res));
  return res.json();
}

function showError(el, msg) {
  el.textContent = msg || "";
  el.hidden = !msg;
}

/** A number from an <input>; the raw text when it is not one (so the server names the problem). */
function numberOrRaw(input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  const v = Number(raw);
  return Number.isNaN(v) ? raw : v;
}

function fmtBytes(n) {
  if (n == null) return "?";
  if (n >= 2 ** 30) return (n / 2 ** 30).toFixed(1) + " GiB";
  if (n >= 2 ** 20) return Math.round(n / 2 ** 20) + " MiB";
  return Math.round(n / 1024) + " KiB";
}

function fmtSeconds(s) { return s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(1) + " s"; }

// ---------------------------------------------------------------------------------------------- tabs
function selectTab(name) {
  for (const btn of document.querySelectorAll("[role=tab]")) {
    const on = btn.dataset.tab === name;
    btn.setAttribute("aria-selected", String(on));
    $("panel-" + btn.dataset.tab).hidden = !on;
  }
  if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
}

// ---------------------------------------------------------------------------------------------- status strip
const Status = {
  models: [],
  timer: null,

  parseMetrics(text) {
    const out = {};
    for (const line of text.split("\n")) {
      const m = /^([a-z_]+)(\{[^}]*\})?\s+([-0-9.eE+]+)$/.exec(line);
      if (m && !m[2]) out[m[1]] = Number(m[3]);
    }
    return out;
  },

  async poll() {
    try {
      const [models, metricsRes] = await Promise.all([api("/v1/models"), fetch("/metrics", { headers: apiHeaders(false) })]);  // behind the key when the server has one
      const metrics = metricsRes.ok ? this.parseMetrics(await metricsRes.text()) : {};
      this.models = models.data || [];
      const loaded = this.models.filter((m) => m.loaded);
      const el = $("status-models");
      el.textContent = loaded.length ? loaded.map((m) => `${m.id} (${fmtBytes(m.ram_bytes)})`).join(", ") : "none";
      el.dataset.ready = "1";
      const used = models.ram_used_bytes || 0, budget = models.ram_budget_bytes || 0;
      $("status-ram").textContent = `${fmtBytes(used)} / ${fmtBytes(budget)}`;
      $("status-ram-meter").max = budget || 1;
      $("status-ram-meter").value = used;
      $("status-queue").textContent = metrics.edge_queue_depth ?? "?";
      $("status-running").textContent = metrics.edge_running_jobs ?? "?";
      $("status-conn").textContent = "";
      fillModelSelects(this.models, !!models.pull_on_request);
    } catch (e) {
      $("status-conn").textContent = e instanceof ApiError ? e.message : "server unreachable";
      $("status-conn").className = "item bad";
      $("status-models").dataset.ready = "1";
    }
  },

  start() {
    this.poll();
    this.timer = setInterval(() => { if (!document.hidden) this.poll(); }, 2000);
  },
};

const TASKS = {   // task -> the tab that runs it and how the page names its models
  chat: { tab: "chat", noun: "chat model" },
  image: { tab: "imagine", noun: "image model" },
  segment: { tab: "segment", noun: "segmentation model" },
};

/** Whether each task has an installed model: null until /v1/models first answers (then the tabs keep
 * today's look rather than flashing "missing"), true / false after. */
const Ready = { chat: null, image: null, segment: null };

/** The menus list installed models only (as Ollama's UIs list what is pulled); a task with none gets a
 * panel at the top of its tab with the one command that installs one, and its controls are disabled. */
function fillModelSelects(models, pullOnRequest = false) {
  for (const [task, { tab, noun }] of Object.entries(TASKS)) {
    const sel = $(tab + "-model");
    let rows = models.filter((m) => m.task === task && m.installed), later = "";
    if (!rows.length && pullOnRequest) {
      // `serve --allow-pull`: a pinned model (not a recipe: those need an export) downloads on first use
      rows = models.filter((m) => m.task === task && !m.recipe);
      later = " (downloads on first use)";
    }
    const want = rows.map((m) => m.id + later).join("|");
    if (sel.dataset.options !== want) {
      const keep = sel.value;
      const options = rows.map((m) => new Option(m.id + later, m.id));
      sel.replaceChildren(...(options.length ? options : [new Option("none installed", "")]));
      sel.dataset.options = want;
      if (rows.some((m) => m.id === keep)) sel.value = keep;
    }
    // the command to show: the first pullable model of the task (the bundled default comes first)
    const pullable = models.find((m) => m.task === task && !m.installed && m.pull);
    setReady(task, rows.length > 0, pullable ? pullable.pull : null, noun);
  }
}

function setReady(task, ready, pull, noun) {
  const tab = TASKS[task].tab;
  Ready[task] = ready;
  $(tab + "-missing").hidden = ready;
  $(tab + "-model").disabled = !ready;
  if (!ready) {
    $(tab + "-missing-title").textContent = `No ${noun} installed.`;
    $(tab + "-missing-run").textContent = pull ? "Run:" : "See what can be installed:";
    $(tab + "-pull").textContent = pull || "edge-run models";
  }
  // what cannot work without a model looks inactive (busy states still win: see each tab's busy())
  for (const el of $("panel-" + tab).querySelectorAll(".controls input, .controls select, .controls textarea, .controls fieldset")) {
    if (el.closest("[data-always]")) continue;
    el.disabled = !ready;
  }
  if (task === "chat") Chat.busy(!!Chat.controller);
  if (task === "image") Imagine.busy(!!Imagine.controller);
  if (task === "segment") Segment.buttons();
}

/** Copy a pull command: the Clipboard API where the page is a secure context (localhost), else select it
 * so the user can copy it themselves (http://<lan-ip> is not a secure context). */
async function copyCommand(tab) {
  const code = $(tab + "-pull"), btn = $(tab + "-copy");
  try {
    await navigator.clipboard.writeText(code.textContent);
    btn.textContent = "Copied";
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents(code);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    btn.textContent = Touch.on ? "Selected: copy it" : "Selected: press Ctrl+C";
  }
  setTimeout(() => { btn.textContent = "Copy"; }, 2000);
}

// ---------------------------------------------------------------------------------------------- touch wording
/** Small screens and touch devices get "tap" / "long-press" where a mouse gets "click" / "right-click";
 * the Segment canvas accepts both on every device (see Segment.pointerDown). */
const Touch = {
  query: window.matchMedia("(pointer: coarse), (max-width: 599.98px)"),
  get on() { return this.query.matches; },

  apply() {
    const on = this.on;
    document.documentElement.dataset.pointer = on ? "touch" : "mouse";
    for (const el of document.querySelectorAll("[data-touch-text]")) {
      if (!el.dataset.mouseText) el.dataset.mouseText = el.textContent;
      el.textContent = on ? el.dataset.touchText : el.dataset.mouseText;
    }
    for (const el of document.querySelectorAll("[data-touch-placeholder]")) {
      if (!el.dataset.mousePlaceholder) el.dataset.mousePlaceholder = el.placeholder;
      el.placeholder = on ? el.dataset.touchPlaceholder : el.dataset.mousePlaceholder;
    }
    Segment.info();
  },

  start() {
    this.apply();
    this.query.addEventListener("change", () => this.apply());
  },
};

// ---------------------------------------------------------------------------------------------- chat
const Chat = {
  history: [],        // [{role, content}] of finished turns (a stopped answer is kept as it stands)
  controller: null,

  bubble(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = text;
    div.append(who, body);
    $("chat-log").append(div);
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
    return body;
  },

  busy(on) {
    $("chat-send").disabled = on || Ready.chat === false;
    $("chat-input").disabled = Ready.chat === false;
    $("chat-stop").disabled = !on;
  },

  async send() {
    const text = $("chat-input").value.trim();
    if (!text || this.controller || Ready.chat === false) return;
    showError($("chat-error"), "");
    $("chat-input").value = "";
    const userBody = this.bubble("user", text);
    const answer = this.bubble("assistant", "");
    answer.parentElement.classList.add("streaming");
    const system = $("chat-system").value.trim();
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...this.history,
      { role: "user", content: text }];
    const body = { model: $("chat-model").value || undefined, messages, stream: true,
      stream_options: { include_usage: true },
      temperature: numberOrRaw($("chat-temperature")), max_tokens: numberOrRaw($("chat-max-tokens")) };
    this.controller = new AbortController();
    this.busy(true);
    $("chat-stats").textContent = "waiting for the model…";
    const t0 = performance.now();
    let tFirst = null, tLast = null, chunks = 0, usage = null, finish = null, failed = false, stopped = false;
    try {
      let res;
      try {
        res = await fetch("/v1/chat/completions", { method: "POST", headers: apiHeaders(), body: JSON.stringify(body),
          signal: this.controller.signal });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        throw new ApiError(`could not reach the server (${e.message}).`);
      }
      if (!res.ok) throw new ApiError(await errorMessage(res));
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const obj = JSON.parse(data);
            if (obj.error) throw new ApiError(obj.error.message || JSON.stringify(obj.error));
            if (obj.usage) usage = obj.usage;
            const choice = obj.choices && obj.choices[0];
            if (!choice) continue;
            if (choice.finish_reason) finish = choice.finish_reason;
            const piece = choice.delta && choice.delta.content;
            if (piece) {
              const now = performance.now();
              if (tFirst === null) tFirst = now;
              tLast = now;
              chunks += 1;
              answer.textContent += piece;
              $("chat-log").scrollTop = $("chat-log").scrollHeight;
              this.stats(chunks, t0, tFirst, tLast, null);
            }
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else { failed = true; showError($("chat-error"), e.message); }
    } finally {
      this.controller = null;
      this.busy(false);
      answer.parentElement.classList.remove("streaming");
    }
    if (failed && !answer.textContent) {            // nothing was said: drop the turn, give the text back
      answer.parentElement.remove();
      userBody.parentElement.remove();
      $("chat-input").value = text;
      $("chat-stats").textContent = "";
      return;
    }
    this.history.push({ role: "user", content: text }, { role: "assistant", content: answer.textContent });
    if (stopped) {
      answer.parentElement.classList.add("stopped");
      answer.parentElement.dataset.state = "stopped";
    } else {
      answer.parentElement.dataset.state = failed ? "failed" : "done";
    }
    this.stats(usage ? usage.completion_tokens : chunks, t0, tFirst, tLast, stopped ? "stopped" : finish);
  },

  stats(tokens, t0, tFirst, tLast, finish) {
    const parts = [`${tokens} tokens`];
    if (tFirst !== null) {
      parts.push(`first token ${fmtSeconds((tFirst - t0) / 1000)}`);
      const span = (tLast - tFirst) / 1000;
      if (tokens > 1 && span > 0) parts.push(`${((tokens - 1) / span).toFixed(1)} tok/s`);
    }
    if (finish) parts.push(finish);
    $("chat-stats").textContent = parts.join(" · ");
  },

  stop() { if (this.controller) this.controller.abort(); },

  clear() {
    this.stop();
    this.history = [];
    $("chat-log").replaceChildren();
    $("chat-stats").textContent = "";
    showError($("chat-error"), "");
  },
};

// ---------------------------------------------------------------------------------------------- imagine
/** tEXt / iTXt chunks of a PNG (the server stores prompt, seed, steps, model there). */
function pngText(bytes) {
  const out = {};
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = 8;
  while (p + 8 <= bytes.length) {
    const len = dv.getUint32(p);
    const type = String.fromCharCode(...bytes.subarray(p + 4, p + 8));
    const data = bytes.subarray(p + 8, p + 8 + len);
    const z = data.indexOf(0);
    if (type === "tEXt" && z > 0) {
      const dec = new TextDecoder("latin1");
      out[dec.decode(data.subarray(0, z))] = dec.decode(data.subarray(z + 1));
    } else if (type === "iTXt" && z > 0 && data[z + 1] === 0) {   // uncompressed international text
      const lang = data.indexOf(0, z + 3), trans = data.indexOf(0, lang + 1);
      out[new TextDecoder("latin1").decode(data.subarray(0, z))] = new TextDecoder().decode(data.subarray(trans + 1));
    }
    if (type === "IEND") break;
    p += 12 + len;
  }
  return out;
}

function b64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

const Imagine = {
  controller: null,
  poller: null,
  lastB64: null,

  busy(on) {
    $("imagine-go").disabled = on || Ready.image === false;
    $("imagine-cancel").disabled = !on;
  },

  progress(done, total, text) {
    $("imagine-progress").max = total || 1;
    $("imagine-progress").value = done;
    $("imagine-progress-text").textContent = text;
  },

  /** Poll GET /v1/jobs for the newest image job (ids above ``baseline``): per-step progress. */
  watch(baseline, steps, t0) {
    let mine = null;
    const tick = async () => {
      try {
        const jobs = (await api("/v1/jobs")).data || [];
        const cand = jobs.filter((j) => j.label === "image" && j.id > baseline && (mine === null || j.id === mine));
        if (!cand.length) return;
        const j = cand.reduce((a, b) => (a.id < b.id ? a : b));
        mine = j.id;
        if (!this.controller) return;
        const total = j.steps_total || steps + 2;
        const el = ((performance.now() - t0) / 1000).toFixed(1) + " s";
        // steps_done counts finished steps: 1 = prompt encoded, 1 + i = UNet step i done, then decode
        let text;
        if (j.state === "queued") text = `queued · ${el}`;
        else if (j.steps_done === 0) text = `encoding the prompt · ${el}`;
        else if (j.steps_done <= steps) text = `denoising step ${j.steps_done}/${steps} · ${el}`;
        else text = `decoding · ${el}`;
        this.progress(j.steps_done, total, text);
        $("imagine-progress").dataset.seen = ($("imagine-progress").dataset.seen || "") + `${j.steps_done}/${total},`;
      } catch (_) { /* progress is best effort; the POST reports errors */ }
    };
    this.poller = setInterval(tick, 200);
    tick();
  },

  async go() {
    if (this.controller || Ready.image === false) return;
    showError($("imagine-error"), "");
    const steps = numberOrRaw($("imagine-steps"));
    const w = numberOrRaw($("imagine-width")), h = numberOrRaw($("imagine-height"));
    const body = { model: $("imagine-model").value || undefined, prompt: $("imagine-prompt").value,
      size: `${w ?? 512}x${h ?? 512}`, steps, seed: numberOrRaw($("imagine-seed")),
      guidance_scale: numberOrRaw($("imagine-guidance")), decoder: $("imagine-decoder").value || undefined,
      n: 1, response_format: "b64_json" };
    this.controller = new AbortController();
    this.busy(true);
    const t0 = performance.now();
    $("imagine-progress").dataset.seen = "";
    this.progress(0, 1, "submitting…");
    let baseline = 0;
    try {
      const jobs = (await api("/v1/jobs")).data || [];
      baseline = jobs.reduce((m, j) => Math.max(m, j.id), 0);
    } catch (_) { /* no progress then */ }
    this.watch(baseline, typeof steps === "number" ? steps : 4, t0);
    try {
      const res = await api("/v1/images/generations", { method: "POST", body, signal: this.controller.signal });
      const b64 = res.data[0].b64_json;
      const info = pngText(b64ToBytes(b64));
      const img = $("imagine-result");
      img.src = "data:image/png;base64," + b64;
      await img.decode();
      this.lastB64 = b64;
      const secs = (performance.now() - t0) / 1000;
      $("imagine-caption").textContent = `${img.naturalWidth}×${img.naturalHeight} · seed ${info.seed ?? "?"} · ` +
        `${info.steps ?? steps} steps · ${info.decoder ?? ""} · ${fmtSeconds(secs)}`;
      img.dataset.width = img.naturalWidth;
      img.dataset.height = img.naturalHeight;
      $("imagine-download").href = img.src;
      $("imagine-download").download = `edge-run-${info.seed ?? "image"}.png`;
      $("imagine-figure").hidden = false;
      this.progress(1, 1, `done in ${fmtSeconds(secs)}`);
    } catch (e) {
      if (e.name === "AbortError") this.progress(0, 1, "cancelled");
      else { this.progress(0, 1, ""); showError($("imagine-error"), e.message); }
    } finally {
      clearInterval(this.poller);
      this.controller = null;
      this.busy(false);
    }
  },

  cancel() { if (this.controller) this.controller.abort(); },
};

// ---------------------------------------------------------------------------------------------- segment
const LONG_PRESS_MS = 500;   // a touch held this long without moving adds a background point

const Segment = {
  dataUrl: null,     // the photo as sent to the server (first call only)
  imageId: null,     // the server's id for its cached embedding
  width: 0, height: 0,
  points: [],        // [x, y, label] in image pixels
  box: null,         // [x0, y0, x1, y1]
  undoStack: [],
  inFlight: false,
  dirty: false,
  decodes: 0,
  lastMask: null,
  drag: null,
  idle: false,       // segment-info holds the "click / tap on the photo" prompt (no answer shown yet)

  async load(dataUrl) {
    showError($("segment-error"), "");
    const img = new Image();
    img.src = dataUrl;
    try { await img.decode(); } catch (_) {
      showError($("segment-error"), "this browser cannot display that file; choose a PNG, JPEG or WebP photo.");
      return;
    }
    this.dataUrl = dataUrl;
    this.imageId = null;
    this.width = img.naturalWidth;
    this.height = img.naturalHeight;
    this.points = [];
    this.box = null;
    this.undoStack = [];
    this.lastMask = null;
    for (const id of ["segment-photo", "segment-overlay", "segment-marks"]) {
      $(id).width = this.width;
      $(id).height = this.height;
    }
    $("segment-photo").getContext("2d").drawImage(img, 0, 0);
    $("segment-overlay").getContext("2d").clearRect(0, 0, this.width, this.height);
    $("segment-overlay").dataset.maskPixels = "0";
    $("segment-stage").style.setProperty("--ar", String(this.width / this.height));
    $("segment-stage").hidden = false;
    $("segment-empty").hidden = true;
    this.idle = true;
    this.info();
    this.drawMarks();
    this.buttons();
  },

  loadFile(file) {
    if (!file) return;
    const r = new FileReader();
    r.onload = () => this.load(r.result);
    r.readAsDataURL(file);
  },

  demo() {
    // A picture drawn here (no network, no bundled file): sky, sun, hills, a house, a tree.
    const c = document.createElement("canvas");
    c.width = 640; c.height = 427;
    const g = c.getContext("2d");
    const sky = g.createLinearGradient(0, 0, 0, 300);
    sky.addColorStop(0, "#7fb2e5"); sky.addColorStop(1, "#dbe9f6");
    g.fillStyle = sky; g.fillRect(0, 0, 640, 427);
    g.fillStyle = "#f4c542"; g.beginPath(); g.arc(520, 90, 45, 0, 2 * Math.PI); g.fill();
    g.fillStyle = "#5f9e4a"; g.beginPath(); g.ellipse(180, 430, 360, 150, 0, 0, 2 * Math.PI); g.fill();
    g.fillStyle = "#4d8a3c"; g.beginPath(); g.ellipse(560, 440, 300, 130, 0, 0, 2 * Math.PI); g.fill();
    g.fillStyle = "#c8553d"; g.fillRect(250, 220, 150, 110);
    g.fillStyle = "#7a2e1f"; g.beginPath(); g.moveTo(235, 222); g.lineTo(325, 150); g.lineTo(415, 222); g.fill();
    g.fillStyle = "#3b2f2f"; g.fillRect(305, 270, 36, 60);
    g.fillStyle = "#6b4226"; g.fillRect(98, 230, 22, 100);
    g.fillStyle = "#2f6b2a"; g.beginPath(); g.arc(109, 205, 55, 0, 2 * Math.PI); g.fill();
    this.load(c.toDataURL("image/png"));
  },

  /** The prompt under the buttons before the first answer: what to do with the photo, in this device's words. */
  info() {
    if (!this.idle || !this.dataUrl) return;
    $("segment-info").textContent = Ready.segment === false
      ? `${this.width}×${this.height} · no segmentation model installed (see above)`
      : `${this.width}×${this.height} · ${Touch.on ? "tap" : "click"} on the photo`;
  },

  buttons() {
    const has = this.points.length > 0 || this.box !== null;
    const off = Ready.segment === false;   // nothing to undo or clear when no model can answer
    $("segment-undo").disabled = off || this.undoStack.length === 0;
    $("segment-clear").disabled = off || !has;
    $("panel-segment").dataset.ready = off ? "0" : "1";
    this.info();
    const dl = $("segment-download");
    dl.classList.toggle("disabled", !this.lastMask);
    dl.setAttribute("aria-disabled", String(!this.lastMask));
    if (this.lastMask) dl.href = "data:image/png;base64," + this.lastMask.png_b64;
    else dl.removeAttribute("href");
  },

  /** Canvas event position -> image pixel coordinates. */
  toImage(ev) {
    const r = $("segment-marks").getBoundingClientRect();
    const x = ((ev.clientX - r.left) / r.width) * this.width;
    const y = ((ev.clientY - r.top) / r.height) * this.height;
    return [Math.max(0, Math.min(this.width - 1, x)), Math.max(0, Math.min(this.height - 1, y))];
  },

  /** Pointer events serve mouse, pen and touch alike: a click or tap adds a point (the mode's label), a
   * right-click or a long-press (LONG_PRESS_MS without moving) a background point, a drag a box. */
  pointerDown(ev) {
    if (!this.dataUrl || Ready.segment === false || (ev.button !== 0 && ev.button !== 2)) return;
    ev.preventDefault();
    $("segment-marks").setPointerCapture(ev.pointerId);
    const d = { start: this.toImage(ev), button: ev.button, x0: ev.clientX, y0: ev.clientY, moved: false, now: null,
      pointerId: ev.pointerId, timer: null, done: false };
    if (ev.button === 0) {
      d.timer = setTimeout(() => {
        if (this.drag !== d || d.moved) return;
        d.done = true;   // the background point goes in now, while the finger is still down
        if (navigator.vibrate) navigator.vibrate(30);
        this.addPoint(d.start, 0);
      }, LONG_PRESS_MS);
    }
    this.drag = d;
  },

  pointerMove(ev) {
    const d = this.drag;
    if (!d || d.done || ev.pointerId !== d.pointerId) return;
    if (Math.hypot(ev.clientX - d.x0, ev.clientY - d.y0) > 6) {
      d.moved = true;
      clearTimeout(d.timer);
    }
    d.now = this.toImage(ev);
    if (d.moved && d.button === 0) this.drawMarks([...d.start, ...d.now]);
  },

  pointerUp(ev) {
    const d = this.drag;
    if (!d || ev.pointerId !== d.pointerId) return;
    this.drag = null;
    clearTimeout(d.timer);
    if (d.done) return;   // a long-press: its point is in already
    const here = this.toImage(ev);
    if (d.moved && d.button === 0) {
      this.undoStack.push({ points: this.points.slice(), box: this.box });
      const [x0, y0] = d.start, [x1, y1] = here;
      this.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)].map(Math.round);
      this.drawMarks();
      this.buttons();
      this.request();
    } else {
      const mode = Number(document.querySelector("input[name=segment-mode]:checked").value);
      this.addPoint(here, d.button === 2 ? 0 : mode);
    }
  },

  /** The browser took the pointer (a scroll, a system gesture): forget the gesture, add nothing. */
  pointerCancel(ev) {
    const d = this.drag;
    if (!d || ev.pointerId !== d.pointerId) return;
    clearTimeout(d.timer);
    this.drag = null;
    this.drawMarks();
  },

  addPoint([x, y], label) {
    this.undoStack.push({ points: this.points.slice(), box: this.box });
    this.points.push([Math.round(x), Math.round(y), label]);
    this.drawMarks();
    this.buttons();
    this.request();
  },

  undo() {
    const prev = this.undoStack.pop();
    if (!prev) return;
    this.points = prev.points;
    this.box = prev.box;
    this.drawMarks();
    this.buttons();
    if (this.points.length || this.box) this.request();
    else this.clearMask();
  },

  clear() {
    if (!this.points.length && !this.box) return;
    this.undoStack.push({ points: this.points.slice(), box: this.box });
    this.points = [];
    this.box = null;
    this.drawMarks();
    this.clearMask();
    this.buttons();
  },

  clearMask() {
    this.lastMask = null;
    $("segment-overlay").getContext("2d").clearRect(0, 0, this.width, this.height);
    $("segment-overlay").dataset.maskPixels = "0";
    this.buttons();
  },

  drawMarks(preview) {
    const c = $("segment-marks"), g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    const s = Math.max(this.width, this.height) / 100;   // marker size relative to the photo
    const box = preview || this.box;
    if (box) {
      g.lineWidth = Math.max(2, s / 3);
      g.strokeStyle = "#ffd400";
      g.setLineDash(preview ? [s, s / 2] : []);
      g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
      g.setLineDash([]);
    }
    for (const [x, y, label] of this.points) {
      g.beginPath();
      g.arc(x, y, Math.max(4, s * 0.9), 0, 2 * Math.PI);
      g.fillStyle = label ? "#17c964" : "#f31260";
      g.fill();
      g.lineWidth = Math.max(1.5, s / 4);
      g.strokeStyle = "#fff";
      g.stroke();
    }
  },

  /** One /v1/segment call for the current prompt; later clicks during a call coalesce into one more. */
  async request() {
    if (this.inFlight) { this.dirty = true; return; }
    this.inFlight = true;
    try {
      do {
        this.dirty = false;
        await this.decodeOnce();
      } while (this.dirty);
    } finally {
      this.inFlight = false;
    }
  },

  async decodeOnce() {
    if ((!this.points.length && !this.box) || Ready.segment === false) return;
    this.idle = false;
    showError($("segment-error"), "");
    const prompt = { model: $("segment-model").value || undefined, points: this.points.length ? this.points : undefined,
      box: this.box || undefined };
    const mm = $("segment-multimask").checked;
    if (mm) prompt.multimask = true;
    $("segment-info").textContent = this.imageId ? "decoding…" : "encoding the photo (once), then decoding…";
    const t0 = performance.now();
    let res;
    try {
      if (this.imageId) {
        try {
          res = await api("/v1/segment", { method: "POST", body: { ...prompt, image_id: this.imageId } });
        } catch (e) {
          if (!(e instanceof ApiError) || !/cache/i.test(e.message)) throw e;
          this.imageId = null;   // the server evicted the embedding: send the photo again
        }
      }
      if (!res) res = await api("/v1/segment", { method: "POST", body: { ...prompt, image: this.dataUrl } });
    } catch (e) {
      showError($("segment-error"), e.message);
      $("segment-info").textContent = "";
      return;
    }
    this.imageId = res.image_id;
    this.decodes += 1;
    const mask = res.masks[res.best ?? 0];
    this.lastMask = mask;
    const pixels = await this.drawMask(mask.png_b64);
    const secs = (performance.now() - t0) / 1000;
    $("segment-info").textContent = `${res.encoder_ran ? "encoder + decoder" : "decoder only (cached embedding)"} · ` +
      `${fmtSeconds(secs)} · score ${mask.score.toFixed(3)} · ${mask.area.toLocaleString("en")} px` +
      (res.masks.length > 1 ? ` · best of ${res.masks.length}` : "");
    const ov = $("segment-overlay");
    ov.dataset.decodes = String(this.decodes);
    ov.dataset.maskPixels = String(pixels);
    ov.dataset.area = String(mask.area);
    ov.dataset.encoderRan = String(res.encoder_ran);
    this.buttons();
  },

  /** Paint the mask PNG as a translucent colour over the photo; returns the number of mask pixels. */
  async drawMask(b64) {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    await img.decode();
    const off = document.createElement("canvas");
    off.width = this.width; off.height = this.height;
    const og = off.getContext("2d", { willReadFrequently: true });
    og.drawImage(img, 0, 0, this.width, this.height);
    const data = og.getImageData(0, 0, this.width, this.height);
    const px = data.data;
    let count = 0;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i] > 127) {
        px[i] = 30; px[i + 1] = 144; px[i + 2] = 255; px[i + 3] = 140;
        count += 1;
      } else {
        px[i + 3] = 0;
      }
    }
    $("segment-overlay").getContext("2d").putImageData(data, 0, 0);
    return count;
  },
};

// ---------------------------------------------------------------------------------------------- wiring
function init() {
  for (const btn of document.querySelectorAll("[role=tab]")) btn.addEventListener("click", () => selectTab(btn.dataset.tab));
  const start = location.hash.slice(1);
  selectTab(["chat", "imagine", "segment"].includes(start) ? start : "chat");

  const key = $("api-key");
  key.value = localStorage.getItem("edge-api-key") || "";
  key.addEventListener("change", () => {
    if (key.value) localStorage.setItem("edge-api-key", key.value);
    else localStorage.removeItem("edge-api-key");
    Status.poll();
  });

  $("chat-form").addEventListener("submit", (ev) => { ev.preventDefault(); Chat.send(); });
  $("chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); Chat.send(); }
  });
  $("chat-stop").addEventListener("click", () => Chat.stop());
  $("chat-clear").addEventListener("click", () => Chat.clear());

  $("imagine-go").addEventListener("click", () => Imagine.go());
  $("imagine-cancel").addEventListener("click", () => Imagine.cancel());
  $("imagine-to-segment").addEventListener("click", () => {
    if (!Imagine.lastB64) return;
    selectTab("segment");
    Segment.load("data:image/png;base64," + Imagine.lastB64);
  });

  $("segment-file").addEventListener("change", (ev) => Segment.loadFile(ev.target.files[0]));
  $("segment-demo").addEventListener("click", () => Segment.demo());
  $("segment-undo").addEventListener("click", () => Segment.undo());
  $("segment-clear").addEventListener("click", () => Segment.clear());
  const marks = $("segment-marks");
  marks.addEventListener("pointerdown", (ev) => Segment.pointerDown(ev));
  marks.addEventListener("pointermove", (ev) => Segment.pointerMove(ev));
  marks.addEventListener("pointerup", (ev) => Segment.pointerUp(ev));
  marks.addEventListener("pointercancel", (ev) => Segment.pointerCancel(ev));
  marks.addEventListener("contextmenu", (ev) => ev.preventDefault());
  const panel = $("panel-segment");
  panel.addEventListener("dragover", (ev) => ev.preventDefault());
  panel.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const f = ev.dataTransfer.files[0];
    if (f) Segment.loadFile(f);
  });
  window.addEventListener("paste", (ev) => {
    if ($("panel-segment").hidden) return;
    const f = [...(ev.clipboardData?.files || [])].find((x) => x.type.startsWith("image/"));
    if (f) Segment.loadFile(f);
  });

  for (const tab of ["chat", "imagine", "segment"]) $(tab + "-copy").addEventListener("click", () => copyCommand(tab));
  Touch.start();
  Status.start();
}

document.addEventListener("DOMContentLoaded", init);
