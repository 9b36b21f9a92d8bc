// PESC web UI: live regions fed by server-sent events, forms that call the
// API (uploads with progress). No build step, no polling loops.
"use strict";
const csrf = () => (document.querySelector('meta[name=csrf]') || {}).content || "";

async function api(method, url, body) {
  const r = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "X-CSRF-Token": csrf(), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || (r.status + " " + r.statusText));
  return j;
}

// Sends a file as the raw body, reporting progress; resolves with the JSON answer.
function upload(url, file, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("POST", url);
    x.setRequestHeader("X-CSRF-Token", csrf());
    x.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(Math.round(e.loaded * 100 / e.total)); };
    x.onload = () => {
      let j = {};
      try { j = JSON.parse(x.responseText); } catch (_) {}
      if (x.status >= 200 && x.status < 300) resolve(j);
      else reject(new Error(j.error || (x.status + " " + x.statusText)));
    };
    x.onerror = () => reject(new Error("the upload failed (network)"));
    x.send(file);
  });
}

// Live regions: <div data-live="URL" [data-request="ID"]> is re-rendered by
// the server when an event concerns it.
function live() {
  const regions = Array.from(document.querySelectorAll("[data-live]"));
  if (!regions.length || !window.EventSource) return;
  const state = new Map();
  const refresh = async (el) => {
    const s = state.get(el) || {};
    if (s.busy) { s.again = true; state.set(el, s); return; }
    s.busy = true; s.again = false; state.set(el, s);
    try {
      const r = await fetch(el.dataset.live, { credentials: "same-origin" });
      if (r.ok) { el.innerHTML = await r.text(); localTimes(el); }
    } finally {
      s.busy = false;
      if (s.again) refresh(el);
    }
  };
  const es = new EventSource("/api/v1/events");
  const all = () => regions.forEach(refresh);
  // On (re)connect the server says hello: catch up with anything missed.
  es.addEventListener("hello", all);
  es.addEventListener("reset", all);
  es.addEventListener("request", (e) => {
    let id = null;
    try { id = JSON.parse(e.data).request; } catch (_) {}
    regions.filter((el) => !el.dataset.request || el.dataset.request === id).forEach(refresh);
  });
}

function localTimes(root) {
  root.querySelectorAll("time[data-ms]").forEach((t) => {
    const d = new Date(Number(t.dataset.ms));
    t.title = t.textContent;
    t.textContent = d.toLocaleString();
  });
}

function showError(box, msg) {
  box.textContent = msg;
  box.hidden = !msg;
}

function newRequestForm() {
  const f = document.getElementById("new-request");
  if (!f) return;
  const err = document.getElementById("form-error");
  const prog = document.getElementById("upload-progress");
  const bar = prog.querySelector("progress"), label = prog.querySelector("span");
  const progress = (what) => (pct) => { prog.hidden = false; bar.value = pct; label.textContent = " " + what + " " + pct + "%"; };
  // The sweep's size, as the node counts it (it parses; the page only shows).
  const count = document.getElementById("sweep-count");
  const sweepLines = () => (f.elements.sweep.value || "").split("\n").map((s) => s.trim()).filter(Boolean);
  let asked = 0;
  const recount = async () => {
    const lines = sweepLines();
    const reps = Number((f.elements.repetitions.value || "1").trim()) || 1;
    const mine = ++asked;
    if (!lines.length) { count.textContent = reps + " run(s)"; return; }
    try {
      const p = await api("POST", "/api/v1/sweep", { sweep_params: lines, repetitions: reps });
      if (mine !== asked) return;
      count.textContent = p.combinations + " combination(s) of " + p.names.join(", ") + " × " + reps + " = " + p.runs + " run(s)";
      count.classList.remove("error");
    } catch (e) {
      if (mine !== asked) return;
      count.textContent = e.message;
      count.classList.add("error");
    }
  };
  f.elements.sweep.addEventListener("input", recount);
  f.elements.repetitions.addEventListener("input", recount);
  recount();
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(err, "");
    const v = (n) => (f.elements[n] && f.elements[n].value || "").trim();
    const file = f.elements.upload.files[0];
    let process = v("process");
    const reps = Number(v("repetitions"));
    if (!process && !file) return showError(err, "Choose a process, or upload a file or a zip.");
    if (!Number.isInteger(reps) || reps < 1) return showError(err, "Repetitions must be a whole number, 1 or more.");
    const gpus = Number(v("gpus") || 0);
    if (!Number.isInteger(gpus) || gpus < 0) return showError(err, "GPUs per run must be a whole number, 0 or more.");
    const button = f.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      if (file) {
        const q = new URLSearchParams({ file_name: file.name, kind: /\.zip$/i.test(file.name) ? "zip" : "file" });
        for (const k of ["language", "entry", "command"]) if (v(k)) q.set(k, v(k));
        const p = await upload("/api/v1/processes?" + q, file, progress("uploading " + file.name));
        process = p.id;
      }
      const shared = Array.from(f.querySelectorAll("input[name=shared_files]:checked")).map((c) => c.value);
      const extra = f.elements.shared_upload.files[0];
      if (extra) {
        const s = await upload("/api/v1/files?" + new URLSearchParams({ name: extra.name }), extra, progress("uploading " + extra.name));
        shared.push(s.name);
      }
      const body = {
        process,
        repetitions: reps,
        retries: Number(v("retries") || 0),
        parameters: v("parameters").split("\n").map((s) => s.trim()).filter(Boolean),
        rooms: Array.from(f.querySelectorAll("input[name=rooms]:checked")).map((c) => c.value),
        shared_files: shared,
        domain: v("domain") || null,
        limits: { memory_mb: v("memory_mb") ? Number(v("memory_mb")) : null, cpus: v("cpus") ? Number(v("cpus")) : null },
        gpu: { count: gpus, min_capability: v("gpu_capability") ? Number(v("gpu_capability")) : null },
        parallel: f.elements.parallel.checked,
        same_node: f.elements.same_node.checked,
        sweep_params: sweepLines(),
      };
      const r = await api("POST", "/api/v1/requests", body);
      location.href = "/requests/" + r.id;
    } catch (e) {
      showError(err, e.message);
      button.disabled = false;
    }
  });
}

function fileUploadForm() {
  const f = document.getElementById("file-upload");
  if (!f) return;
  const err = f.querySelector(".flash.error");
  const prog = f.querySelector(".upload-progress");
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(err, "");
    const file = f.elements.file.files[0];
    if (!file) return showError(err, "Choose a file.");
    const name = f.elements.name.value.trim() || file.name;
    try {
      await upload("/api/v1/files?" + new URLSearchParams({ name }), file, (pct) => {
        prog.hidden = false; prog.querySelector("progress").value = pct; prog.querySelector("span").textContent = " " + pct + "%";
      });
      location.href = "/files?ok=" + encodeURIComponent("Shared file " + name + " added.");
    } catch (e) { showError(err, e.message); }
  });
}

// Cancel buttons live in regions the server re-renders: listen on the document.
function cancelButtons() {
  document.addEventListener("click", async (ev) => {
    const again = ev.target.closest("[data-rerun]");
    if (again) {
      again.disabled = true;
      try {
        const r = await api("POST", "/api/v1/requests/" + again.dataset.rerun + "/rerun");
        location.href = "/requests/" + r.id;
      } catch (e) { alert(e.message); again.disabled = false; }
      return;
    }
    const b = ev.target.closest("[data-cancel]");
    if (!b) return;
    if (!confirm("Cancel this request? Runs in progress are stopped.")) return;
    b.disabled = true;
    try {
      await api("POST", "/api/v1/requests/" + b.dataset.cancel + "/cancel");
      b.textContent = "Cancelling…";
    } catch (e) { alert(e.message); b.disabled = false; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  live();
  newRequestForm();
  fileUploadForm();
  cancelButtons();
});
