// The live status page: holds nodes, VMs and jobs as the events stream (/api/v1/events) reports them, and redraws.
// Read-only. Every text from the cluster goes in through textContent, never as markup.
"use strict";

const state = { nodes: new Map(), vms: new Map(), jobs: new Map() };
const MAX_VMS = 300;       // rows drawn; the rest are counted
const MAX_FAILURES = 10;
let drawPending = false;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function bar(percent, cls = "bar") {
  const fill = el("div", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  return el("div", { class: cls, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
                     "aria-valuenow": String(percent) }, fill);
}

function mib(n) { return n >= 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${n} MiB`; }

function when(epoch) { return epoch ? new Date(epoch * 1000).toLocaleTimeString() : ""; }

function subject(job) { return job.vm || job.node || (job.params && job.params.target) || ""; }

function drawNodes() {
  const body = document.querySelector("#nodes tbody");
  const rows = [...state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name)).map((n) => {
    const used = n.memory.total ? Math.round(100 * n.memory.allocated / n.memory.total) : 0;
    const worker = el("td", { class: n.alive ? "good" : "bad" }, n.alive ? n.daemon_state : "absent");
    return el("tr", { "data-node": n.name }, el("td", {}, n.name), worker, el("td", {}, n.domain_state),
              el("td", {}, `${n.vms.running} / ${n.vms.total}`),
              el("td", {}, bar(used, "meter"), ` ${mib(n.memory.allocated)} of ${mib(n.memory.total)}`),
              el("td", {}, n.load.toFixed(2)), el("td", {}, n.active_job ? n.active_job.slice(0, 8) : ""));
  });
  body.replaceChildren(...rows);
}

function drawJobs() {
  const running = [...state.jobs.values()].filter((j) => j.state === "queued" || j.state === "running")
    .sort((a, b) => a.created - b.created);
  const box = document.getElementById("jobs");
  if (!running.length) { box.replaceChildren(el("p", { class: "empty" }, "none")); return; }
  box.replaceChildren(...running.map((j) => {
    const flight = (j.progress && j.progress.in_flight) || [];
    return el("div", { class: "job", "data-job": j.id, "data-kind": j.kind },
              el("div", { class: "title" }, `${j.kind} ${subject(j)}`, el("span", { class: "phase" },
                 ` ${j.state} · ${j.percent}% · ${j.phase}`)),
              bar(j.percent),
              el("div", { class: "phase" }, flight.length ? `in flight: ${flight.join(", ")}` : (j.message || "")));
  }));
}

function drawFailures() {
  const failed = [...state.jobs.values()].filter((j) => j.state === "failed")
    .sort((a, b) => (b.finished || 0) - (a.finished || 0)).slice(0, MAX_FAILURES);
  const vms = [...state.vms.values()].filter((v) => v.failed_reason);
  const items = [
    ...failed.map((j) => el("li", { "data-job": j.id }, el("span", { class: "bad" }, `${j.kind} ${subject(j)}`),
                            ` at ${when(j.finished)}: ${j.reason}`)),
    ...vms.map((v) => el("li", {}, el("span", { class: "bad" }, `VM ${v.name}`), `: ${v.failed_reason}`)),
  ];
  document.getElementById("failures").replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "none")]));
}

function drawVms() {
  const all = [...state.vms.values()].sort((a, b) => a.name.localeCompare(b.name));
  const rows = all.slice(0, MAX_VMS).map((v) => el("tr", { "data-vm": v.name }, el("td", {}, v.name),
    el("td", { class: v.state === "running" ? "good" : v.state === "failed" ? "bad" : "" }, v.state),
    el("td", {}, v.node), el("td", {}, mib(v.memory)), el("td", {}, v.vcpus),
    el("td", {}, v.active_job ? v.active_job.slice(0, 8) : "")));
  document.querySelector("#vms tbody").replaceChildren(...rows);
  document.getElementById("vm-count").textContent = `(${all.length})`;
  const more = document.getElementById("vms-more");
  more.hidden = all.length <= MAX_VMS;
  more.textContent = `and ${all.length - MAX_VMS} more: pvc vm list`;
}

function draw() {
  drawPending = false;
  drawNodes(); drawJobs(); drawFailures(); drawVms();
  const running = [...state.vms.values()].filter((v) => v.state === "running").length;
  document.getElementById("summary").textContent =
    `${state.nodes.size} nodes · ${state.vms.size} VMs (${running} running)`;
}

function schedule() {
  if (!drawPending) { drawPending = true; requestAnimationFrame(draw); }
}

const MAX_ENDED = 200;      // ended jobs kept for "recent failures"; older ones are forgotten

function forgetOldJobs() {
  const ended = [...state.jobs.values()].filter((j) => j.finished).sort((a, b) => a.finished - b.finished);
  for (const job of ended.slice(0, Math.max(0, ended.length - MAX_ENDED))) state.jobs.delete(job.id);
}

function apply(kind, item) {
  const map = { node: state.nodes, vm: state.vms, job: state.jobs }[kind];
  const key = kind === "job" ? item.id : item.name;
  if (item.deleted) map.delete(key); else map.set(key, item);
  if (kind === "job" && item.finished && state.jobs.size > 2 * MAX_ENDED) forgetOldJobs();
  schedule();
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("events");
  for (const kind of ["node", "vm", "job"]) {
    source.addEventListener(kind, (e) => apply(kind, JSON.parse(e.data)));
  }
  source.addEventListener("reset", () => {  // a snapshot follows: start from it
    state.nodes.clear(); state.vms.clear(); state.jobs.clear();
  });
  source.addEventListener("ready", () => { status.textContent = "live"; status.className = "state-live"; });
  source.onerror = () => { status.textContent = "reconnecting"; status.className = "state-reconnecting"; };
}

connect();
