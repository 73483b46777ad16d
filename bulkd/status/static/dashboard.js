// bulkd dashboard: polls the status API and renders it. No framework, no build step.
// Everything shown is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const refreshSeconds = Math.max(Number(params.get("refresh")) || 1, 0.2);
  const TOKEN_KEY = "bulkd-status-token";
  const expanded = new Set();
  const $ = (id) => document.getElementById(id);

  const fmtInt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en"));
  const fmtRate = (n) => (n >= 100 ? fmtInt(n) : (Math.round(n * 10) / 10).toLocaleString("en"));
  const fmtBytes = (n) => {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  };
  const fmtDuration = (s) => {
    s = Math.floor(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
  };

  class Unauthorised extends Error {}

  async function api(path) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) throw new Unauthorised();
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // -- header and uploader ------------------------------------------------------------------

  function renderOverview(o) {
    $("uptime").textContent = fmtDuration(o.uptime_seconds);
    $("intake").textContent = o.intake.stopping ? "stopping" : o.intake.paused ? `paused: ${o.intake.paused}` : "open";
    $("queue").textContent = fmtInt(o.intake.queue_depth);
    $("spool").textContent = `${fmtBytes(o.spool.pending_bytes)} pending`;
    const up = o.uploader;
    $("uploader").dataset.state = up.state;
    $("uploader-state").textContent = up.state;
    $("uploader-banner").hidden = !up.paused;
    $("in-flight").textContent = `${up.in_flight} of ${up.concurrency}`;
    $("retries-recent").textContent = fmtInt(up.retries_recent);
    const causes = Object.entries(up.retries).map(([cause, n]) => `${cause} ${n}`).join(", ");
    $("retries").textContent = up.retries_total ? `${up.retries_total} (${causes})` : "0";
    $("delivered").textContent = `${fmtInt(up.delivered)} chunks, ${fmtBytes(up.bytes_sent)}`;
    $("target").textContent = up.target;
    renderChart(o.throughput);
  }

  function renderChart(throughput) {
    const samples = throughput.samples;
    const width = 600, height = 160;
    const now = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
    // The window grows with the daemon's age, from one minute up to the ten minutes kept.
    const age = samples.length ? now - samples[0].t + throughput.interval : 0;
    const span = Math.min(600, Math.max(60, age));
    const minutes = Math.round(span / 60);
    $("chart-title").textContent = `Throughput, last ${minutes} minute${minutes === 1 ? "" : "s"}`;
    const max = Math.max(1, ...samples.map((s) => Math.max(s.rows_per_second, s.records_per_second)));
    const x = (t) => (width * (t - (now - span))) / span;
    const y = (v) => height - 4 - ((height - 8) * v) / max;
    const points = (key) => samples.map((s) => `${x(s.t).toFixed(1)},${y(s[key]).toFixed(1)}`).join(" ");
    $("line-rows").setAttribute("points", points("rows_per_second"));
    $("line-records").setAttribute("points", points("records_per_second"));
    const grid = $("chart-grid");
    if (!grid.childElementCount) {
      for (let i = 1; i < 4; i += 1) {
        const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
        line.setAttribute("x1", "0"); line.setAttribute("x2", String(width));
        line.setAttribute("y1", String((height * i) / 4)); line.setAttribute("y2", String((height * i) / 4));
        grid.appendChild(line);
      }
    }
    const last = samples[samples.length - 1];
    $("rate-rows").textContent = last ? fmtRate(last.rows_per_second) : "0";
    $("rate-records").textContent = last ? fmtRate(last.records_per_second) : "0";
    $("chart-max").textContent = fmtRate(max);
  }

  // -- jobs ---------------------------------------------------------------------------------

  function progressLabel(job) {
    const p = job.progress;
    if (p.stage === "converting") return `converting ${Math.round(p.fraction * 100)}%`;
    if (p.stage === "delivering") return `delivering ${p.chunks[0]}/${p.chunks[1]} chunks`;
    return p.stage;
  }

  function reasonChips(cell, byRule) {
    cell.replaceChildren();
    Object.entries(byRule).sort((a, b) => b[1] - a[1]).forEach(([rule, n]) => {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = `${rule} ${n}`;
      cell.appendChild(chip);
    });
  }

  function makeRow(job) {
    const row = $("job-row").content.firstElementChild.cloneNode(true);
    row.dataset.jobId = job.job_id;
    const button = row.querySelector(".expand");
    button.addEventListener("click", () => toggle(job.job_id, row));
    return row;
  }

  function fillRow(row, job) {
    row.dataset.state = job.state;
    const button = row.querySelector(".expand");
    button.textContent = job.source;
    button.title = job.source;
    row.querySelector(".dest").textContent = `${job.dataset_id} / ${job.record_type}`;
    const state = row.querySelector(".state");
    state.textContent = job.state;
    state.dataset.state = job.state;
    const percent = Math.round(job.progress.fraction * 100);
    const bar = row.querySelector(".bar");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.setAttribute("aria-valuetext", progressLabel(job));
    row.querySelector(".fill").style.width = `${percent}%`;
    row.querySelector(".progress-label").textContent = progressLabel(job);
    row.querySelector(".rows").textContent = fmtInt(job.rows);
    row.querySelector(".rate").textContent = fmtRate(job.rows_per_second);
    row.querySelector(".records").textContent = fmtInt(job.records);
    row.querySelector(".rejected").textContent = fmtInt(job.rejected);
    row.querySelector(".chunks").textContent = `${job.chunks.delivered}/${job.chunks.total}`;
    reasonChips(row.querySelector(".reasons"), job.rejects_by_rule);
  }

  function renderJobs(jobs) {
    const body = $("jobs-body");
    const rows = new Map([...body.querySelectorAll("tr.job")].map((r) => [r.dataset.jobId, r]));
    const wanted = [];
    for (const job of jobs) {
      const row = rows.get(job.job_id) || makeRow(job);
      fillRow(row, job);
      wanted.push(row);
      if (expanded.has(job.job_id)) {
        wanted.push(details.get(job.job_id) || makeDetail(job.job_id));
        const changed = row.dataset.detailState !== job.state;
        row.dataset.detailState = job.state;
        refreshDetail(job.job_id, changed);
      }
    }
    body.replaceChildren(...wanted);
    $("no-jobs").hidden = jobs.length > 0;
  }

  // -- a job's detail: reject reasons, upload ids, error -------------------------------------

  const details = new Map();

  function makeDetail(jobId) {
    const detail = $("job-detail").content.firstElementChild.cloneNode(true);
    detail.dataset.jobId = jobId;
    details.set(jobId, detail);
    return detail;
  }

  function toggle(jobId, row) {
    const open = !expanded.has(jobId);
    if (open) expanded.add(jobId); else expanded.delete(jobId);
    row.querySelector(".expand").setAttribute("aria-expanded", String(open));
    if (open) {
      row.after(details.get(jobId) || makeDetail(jobId));
      row.dataset.detailState = row.dataset.state;
      refreshDetail(jobId, true);
    } else if (details.has(jobId)) {
      details.get(jobId).remove();
    }
  }

  function refreshDetail(jobId, force) {
    const detail = details.get(jobId);
    if (!detail || (!force && detail.dataset.loaded === "1")) return;
    detail.dataset.loaded = "1";
    loadDetail(jobId, detail).catch(() => { detail.dataset.loaded = "0"; });
  }

  async function loadDetail(jobId, detail) {
    const [job, rejects] = await Promise.all([
      api(`/api/jobs/${encodeURIComponent(jobId)}`),
      api(`/api/jobs/${encodeURIComponent(jobId)}/rejects`),
    ]);
    const body = detail.querySelector(".rejects tbody");
    body.replaceChildren(...rejects.groups.map((g) => {
      const tr = document.createElement("tr");
      const lines = g.lines.join(", ") + (g.lines_truncated ? ", …" : "");
      for (const [text, cls] of [[g.field || "(row)", ""], [g.rule, ""], [fmtInt(g.count), "num"], [g.message, ""], [lines, "lines"]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      return tr;
    }));
    detail.querySelector(".rejects").hidden = rejects.groups.length === 0;
    detail.querySelector(".no-rejects").hidden = rejects.groups.length > 0;
    detail.querySelector(".job-id").textContent = job.job_id;
    detail.querySelector(".upload-ids").textContent = job.upload_ids.length ? job.upload_ids.join(", ") : "–";
    detail.querySelector(".report").textContent = job.report || "–";
    const error = detail.querySelector(".error");
    error.hidden = !job.error;
    error.textContent = job.error || "";
  }

  // -- the loop -----------------------------------------------------------------------------

  function showLogin() {
    const form = $("login");
    if (!form.hidden) return;
    form.hidden = false;
    $("token").focus();
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("login").hidden = true;
    poll();
  });

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    const connection = $("connection");
    try {
      const [overview, jobs] = await Promise.all([api("/api/overview"), api("/api/jobs?limit=50")]);
      renderOverview(overview);
      renderJobs(jobs.jobs);
      connection.textContent = `updated ${new Date().toLocaleTimeString()}`;
      connection.classList.remove("lost");
    } catch (error) {
      if (error instanceof Unauthorised) {
        connection.textContent = "token required";
        showLogin();
        return;
      }
      connection.textContent = "daemon not answering; retrying…";
      connection.classList.add("lost");
    }
    timer = setTimeout(poll, refreshSeconds * 1000);
  }

  poll();
})();
