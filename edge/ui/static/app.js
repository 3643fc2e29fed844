// The operators' page: live figures from /events (Server-Sent Events), history and NG
// gallery from the JSON API. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %");
const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "–");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function setBadge(el, text, cls) {
  el.textContent = text;
  el.className = "badge " + cls;
}

function renderCamera(cam, info) {
  let card = $("cam-" + cam);
  if (!card) {
    card = document.createElement("div");
    card.className = "camera";
    card.id = "cam-" + cam;
    card.innerHTML = `<div><b>${esc(cam)}</b> <span class="decision">waiting</span></div>
      <img alt="latest ${esc(cam)}"><div class="reason small"></div><div class="meta small"></div>`;
    $("cameras").appendChild(card);
    const opt = document.createElement("option");
    opt.value = opt.textContent = cam;
    $("h-camera").appendChild(opt);
  }
  const latest = info.latest;
  const c = info.counts;
  card.querySelector(".meta").textContent = `PASS ${c.PASS} · FAIL ${c.FAIL} · NO_DECISION ${c.NO_DECISION}`;
  if (!latest) return;
  const key = `${latest.epoch}-${latest.seq}`;
  const badge = card.querySelector(".decision");
  if (badge.dataset.key === key) return;
  badge.dataset.key = key;
  badge.dataset.seq = latest.seq;
  badge.textContent = `${latest.decision} #${latest.seq}`;
  badge.className = "decision " + latest.decision;
  // the image is of the latest preview's frame (a few a second), which may be an earlier one
  const shown = latest.preview_seq !== null && latest.preview_seq !== latest.seq && latest.decision !== "FAIL"
    ? ` · frame #${latest.preview_seq}` : "";
  card.querySelector(".reason").textContent = `${latest.reason} · ${when(latest.ts)}${shown}`;
  const img = card.querySelector("img");
  // one image request at a time per camera: a fast line never queues up image loads
  if (!img.dataset.loading) {
    img.dataset.loading = "1";
    img.onload = img.onerror = () => delete img.dataset.loading;
    img.src = `/api/camera/${encodeURIComponent(cam)}/overlay.png?k=${key}`;
  }
}

function render(s) {
  $("line-name").textContent = s.line;
  setBadge($("line-state"), s.line_running ? "line running" : "no status from the line", s.line_running ? "ok" : "warn");
  for (const [row, counts] of [["start", s.since_start], ["hour", s.last_hour]]) {
    for (const d of ["PASS", "FAIL", "NO_DECISION"]) $(`${row}-${d}`).textContent = counts[d];
    $(`${row}-yield`).textContent = pct(counts.yield);
  }
  $("p50").textContent = fmt(s.e2e_ms.p50) + " ms";
  $("p99").textContent = fmt(s.e2e_ms.p99) + " ms";
  $("fps").textContent = fmt(s.fps, 1);
  const rz = s.health.readyz;
  setBadge($("ready"), rz.ready === true ? "ready" : rz.ready === false ? "not ready" : "readiness unknown",
    rz.ready === true ? "ok" : rz.ready === false ? "bad" : "warn");
  const reasons = [...(rz.reasons || [])];
  if (rz.error) reasons.push(rz.error);
  for (const [role, n] of Object.entries(s.health.restarts || {})) reasons.push(`${role} restarted ${n}×`);
  for (const [why, n] of Object.entries(s.health.lost || {})) reasons.push(`lost ${n} frame(s): ${why}`);
  $("reasons").innerHTML = reasons.length ? reasons.map((r) => `<li>${esc(r)}</li>`).join("") : "<li>all well</li>";
  const procs = Object.keys(s.health.processes || {});
  $("processes").textContent = procs.length ? "processes: " + procs.join(", ") : "";
  for (const [cam, info] of Object.entries(s.cameras)) renderCamera(cam, info);
}

function connect() {
  const source = new EventSource("/events");
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
  source.onerror = () => setBadge($("line-state"), "UI connection lost, retrying", "bad");
}

// -- history -------------------------------------------------------------------------------
let historyPage = 1;
// the newest log row page 1 counted: later pages send it back, so that the decisions the line
// logs meanwhile do not push rows from one page onto the next (a new search starts afresh)
let historyAsOf = 0;

function toUnix(value) {
  return value ? String(new Date(value).getTime() / 1000) : "";
}

async function loadHistory() {
  const q = new URLSearchParams({
    camera: $("h-camera").value,
    decision: $("h-decision").value,
    since: toUnix($("h-since").value),
    until: toUnix($("h-until").value),
    page: historyPage,
    per_page: 25,
    as_of: historyPage > 1 ? historyAsOf : 0,
  });
  const r = await fetch("/api/history?" + q);
  const data = await r.json();
  const body = $("history").querySelector("tbody");
  if (!r.ok) {
    $("h-note").textContent = data.error;
    return;
  }
  if (historyPage === 1) historyAsOf = data.as_of;
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  $("h-page").textContent = `page ${data.page} of ${pages} (${data.total} decisions)`;
  $("h-page").dataset.total = data.total;
  $("h-note").textContent = data.note || "";
  body.innerHTML = data.rows
    .map((row) => {
      const ng = row.ng ? `<a href="/ng/${row.ng}.png" target="_blank">image</a>` : "";
      const e2e = row.latencies && row.latencies.end_to_end;
      return `<tr class="row" data-camera="${esc(row.camera_id)}" data-decision="${esc(row.decision)}">
        <td>${esc(when(row.capture_ts))}</td><td>${esc(row.camera_id)}</td><td>${row.seq}</td>
        <td><span class="decision ${esc(row.decision)}">${esc(row.decision)}</span></td><td>${esc(row.reason)}</td>
        <td>${row.defect_count ?? ""}</td><td>${row.defect_area ?? ""}</td><td>${fmt(e2e)}</td><td>${ng}</td></tr>`;
    })
    .join("");
  $("h-prev").disabled = data.page <= 1;
  $("h-next").disabled = data.page >= pages;
}

$("history-form").addEventListener("submit", (e) => {
  e.preventDefault();
  historyPage = 1;
  loadHistory();
});
$("h-prev").onclick = () => { historyPage = Math.max(1, historyPage - 1); loadHistory(); };
$("h-next").onclick = () => { historyPage += 1; loadHistory(); };

// -- NG gallery ------------------------------------------------------------------------------
let ngPage = 1;
let ngAsOf = 0; // page 1's newest entry: as for the history, later pages stay where they were

async function loadGallery() {
  const r = await fetch(`/api/ng?page=${ngPage}&per_page=12&as_of=${ngPage > 1 ? ngAsOf : 0}`);
  const data = await r.json();
  if (ngPage === 1) ngAsOf = data.as_of;
  $("ng-note").textContent = data.note || `${data.total} NG image(s) kept`;
  $("ng-page").textContent = ` ${data.page} `;
  $("gallery").innerHTML = data.entries
    .map((e) => {
      const m = e.meta;
      const base = "/ng/" + e.id.split("/").slice(0, 2).join("/") + "/";
      const meta = { reason: m.reason, defect_area: m.defect_area, boxes: m.boxes, model_id: m.model_id };
      return `<div class="ng"><div><b>${esc(m.camera_id)}</b> #${m.seq} · ${esc(when(m.capture_ts))}</div>
        <a href="${base}${esc(m.image)}" target="_blank"><img alt="NG image" src="${base}${esc(m.image)}"></a>
        <a href="${base}${esc(m.mask)}" target="_blank"><img alt="NG mask" src="${base}${esc(m.mask)}"></a>
        <pre>${esc(JSON.stringify(meta))}</pre></div>`;
    })
    .join("");
}

$("ng-refresh").onclick = () => { ngPage = 1; loadGallery(); }; // the newest entries
$("ng-prev").onclick = () => { ngPage = Math.max(1, ngPage - 1); loadGallery(); };
$("ng-next").onclick = () => { ngPage += 1; loadGallery(); };

connect();
loadHistory();
loadGallery();
setInterval(loadGallery, 10000);
