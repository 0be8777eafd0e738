// pvefleet serve: the live parts of the pages, from server-sent events. Everything a job or a
// node says is put in with textContent, never as markup.
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function gib(bytes) { return (bytes / 2 ** 30).toFixed(1) + " GiB"; }

function bar(used, total) {
  const pct = total ? Math.min(100, Math.floor((used * 100) / total)) : 0;
  const b = el("span", "bar"); b.title = pct + "%";
  const f = el("span", "fill"); f.style.width = pct + "%"; b.appendChild(f);
  return b;
}

function nodeCard(beat) {
  const card = el("article", "node"); card.dataset.node = beat.node;
  const h = el("h2", null, beat.node + " "); h.appendChild(el("span", "badge live", "live")); card.appendChild(h);
  card.appendChild(el("p", null, "agent " + beat.agent_version + " · " + beat.running_jobs.length + "/" +
    beat.concurrency + " running · last seen " + beat.last_seen));
  const cap = beat.capacity;
  if (cap) {
    const mem = el("p", null, "memory ");
    mem.appendChild(bar(cap.memory_total_bytes - Math.min(cap.memory_free_bytes, cap.memory_total_bytes), cap.memory_total_bytes));
    mem.appendChild(document.createTextNode(" " + gib(cap.memory_free_bytes) + " free of " + gib(cap.memory_total_bytes)));
    card.appendChild(mem);
    for (const s of cap.storages) {
      const p = el("p", null, s.storage + " ");
      p.appendChild(bar(s.total_bytes - s.avail_bytes, s.total_bytes));
      p.appendChild(document.createTextNode(" " + gib(s.avail_bytes) + " free of " + gib(s.total_bytes)));
      card.appendChild(p);
    }
  } else {
    card.appendChild(el("p", "error", "its Proxmox API did not answer"));
  }
  return card;
}

function followFleet(section) {
  // Nodes seen on this page stay, marked gone, once their agent stops beating.
  const gone = new Map();
  for (const card of section.querySelectorAll("article.node")) gone.set(card.dataset.node, null);
  const source = new EventSource(section.dataset.live);
  source.addEventListener("fleet", (m) => {
    const beats = JSON.parse(m.data);
    if (!Array.isArray(beats)) return;
    const live = new Set(beats.map((b) => b.node));
    const cards = beats.map(nodeCard);
    for (const [node, since] of gone) {
      if (live.has(node)) { gone.set(node, null); continue; }
      const at = since || new Date().toISOString();
      gone.set(node, at);
      const card = el("article", "node gone"); card.dataset.node = node;
      const h = el("h2", null, node + " "); h.appendChild(el("span", "badge gone", "gone")); card.appendChild(h);
      card.appendChild(el("p", null, "its agent stopped beating (seen gone at " + at + ")"));
      cards.push(card);
    }
    for (const node of live) if (!gone.has(node)) gone.set(node, null);
    cards.sort((a, b) => a.dataset.node.localeCompare(b.dataset.node));
    section.replaceChildren(...cards);
    if (beats.length === 0) { const p = el("p", null, "No live agent."); p.id = "no-agents"; section.appendChild(p); }
  });
}

function followJob(section) {
  const percent = document.getElementById("percent");
  const percentText = document.getElementById("percent-text");
  const stepNow = document.getElementById("step");
  const timeline = document.getElementById("timeline");
  const log = document.getElementById("log");
  const warnings = document.getElementById("warnings");
  const result = document.getElementById("result");
  const state = document.getElementById("state");
  let last = null; // the step under way: {li, at}
  const closeStep = (at) => {
    if (!last) return;
    const secs = Math.max(0, (Date.parse(at) - Date.parse(last.at)) / 1000);
    last.li.querySelector(".secs").textContent = " " + secs.toFixed(1) + " s";
    last.li.querySelector(".dur").style.width = Math.min(400, Math.max(2, secs * 40)) + "px";
    last = null;
  };
  const source = new EventSource(section.dataset.events);
  // A reconnected stream replays from the first event: skip what is shown already.
  let lastSeq = 0;
  source.addEventListener("job", (m) => {
    const e = JSON.parse(m.data);
    if (e.seq <= lastSeq) return;
    lastSeq = e.seq;
    percent.value = e.percent; percentText.textContent = e.percent + "%";
    if (e.step) stepNow.textContent = e.step;
    if (e.type === "step") {
      closeStep(e.timestamp);
      const li = el("li", "step", e.step + ": " + e.message);
      li.dataset.step = e.step;
      li.appendChild(el("span", "secs", ""));
      li.appendChild(el("span", "dur"));
      timeline.appendChild(li);
      last = { li, at: e.timestamp };
    } else if (e.type === "log") {
      const li = el("li", e.stream || "agent");
      li.dataset.seq = e.seq;
      li.appendChild(el("span", "stream", e.stream || "agent"));
      li.appendChild(el("span", "line", e.message));
      log.appendChild(li);
      log.scrollTop = log.scrollHeight;
    } else if (e.type === "warning") {
      warnings.appendChild(el("li", "warning", e.message));
    } else if (e.type === "complete" || e.type === "error") {
      closeStep(e.timestamp);
      const r = e.result || {};
      result.className = e.type === "complete" ? "ok" : "failed";
      let text = e.type === "complete" ? "Done: " + e.message : "Failed: " + e.message;
      if (r.vmid) text += " [vmid " + r.vmid + (r.ip ? ", ip " + r.ip : "") + "]";
      if (r.error) text += " (" + r.error.kind + " at " + r.error.step + (r.rolled_back ? ", rolled back" : "") + ")";
      result.textContent = text;
      if (state) state.textContent = e.type === "complete" ? "succeeded" : (r.error && r.error.kind === "cancelled" ? "cancelled" : "failed");
      // A job that ended can no longer be cancelled.
      const cancel = document.getElementById("cancel");
      if (cancel) cancel.closest("form").remove();
    }
  });
  source.addEventListener("end", () => source.close());
}

document.addEventListener("DOMContentLoaded", () => {
  const fleet = document.getElementById("fleet");
  if (fleet) followFleet(fleet);
  const job = document.getElementById("job");
  if (job) followJob(job);
});
