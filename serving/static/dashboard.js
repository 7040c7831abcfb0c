// canary-serve dashboard: reads GET rollout (every 2 s) and GET rollout/series (every 5 s), renders stable and
// candidate side by side, and sends operator actions with the admin token the user typed. No dependencies;
// every value from the server is put into the page as text, never as HTML.
"use strict";

const POLL_MS = 2000;
const SERIES_MS = 5000;
const TOKEN_KEY = "canary-admin-token";
const ARMS = ["stable", "candidate", "shadow"];
const COLORS = { stable: "#1f77b4", candidate: "#d9480f", shadow: "#8e44ad" };
const FINAL_MARKS = { promoted: "promoted", rolled_back: "rolled_back", closed: "promoted" };

// --- small helpers ---------------------------------------------------------------------------------------

function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : "–");
const fmtMs = (v) => (isNum(v) ? `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ms` : "–");
const fmtPct = (ratio, digits = 2) => (isNum(ratio) ? `${(ratio * 100).toFixed(digits)} %` : "–");
const fmtNum = (v) => (isNum(v) ? (Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3)))) : "–");
const fmtBytes = (v) => {
  if (!isNum(v)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const clock = (ts) => (isNum(ts) ? new Date(ts * 1000).toLocaleTimeString("en-GB") : "–");
const duration = (s) => {
  if (!isNum(s)) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
};
const segmentName = (s) => `${s.label}=${s.value}`;
const SEVERITY = { FAIL: 4, ERROR: 3, NODATA: 2, INCONCLUSIVE: 1, PASS: 0 };
const worst = (verdicts) => verdicts.reduce((a, b) => (SEVERITY[b] > SEVERITY[a] ? b : a), "PASS");
const verdictTag = (v) => h("span", { class: `v ${v}` }, v);

function replace(target, ...children) {
  target.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

// --- the side-by-side table ------------------------------------------------------------------------------

// Each row: key (for the gates that judge it), label, value(stats, arm, state), format, and how the delta
// reads ("ratio" for latencies, "points" for rates, null for none).
function armRows(state) {
  const feedback = new Set();
  const fields = new Set();
  for (const arm of ARMS) {
    const stats = armStats(state, arm) || {};
    Object.keys(stats.feedback || {}).forEach((k) => feedback.add(k));
    Object.keys(stats.fields || {}).forEach((k) => fields.add(k));
  }
  const replicas = (arm) => (state.replicas || []).filter((r) => r.arm === arm);
  const gpuMemory = (arm) => {
    const values = replicas(arm).map((r) => {
      const own = (r.gpus || []).map((g) => g.process_memory_bytes).filter(isNum);
      return own.length ? own.reduce((a, b) => a + b, 0) : r.torch_reserved_bytes;
    }).filter(isNum);
    return values.length ? values.reduce((a, b) => a + b, 0) : null;
  };
  const gpuUtil = (arm) => {
    const values = replicas(arm).flatMap((r) => (r.gpus || []).map((g) => g.utilization_ratio)).filter(isNum);
    return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
  };
  const live = (fn) => (stats, arm) => (arm === "shadow" ? null : fn(stats, arm));
  const rows = [
    { key: "requests", label: "requests", value: (s) => s.requests, fmt: fmtInt },
    { key: "latency_p50_ms", label: "p50 latency", value: (s) => s.latency_ms.p50, fmt: fmtMs, delta: "ratio" },
    { key: "latency_p95_ms", label: "p95 latency", value: (s) => s.latency_ms.p95, fmt: fmtMs, delta: "ratio" },
    { key: "latency_p99_ms", label: "p99 latency", value: (s) => s.latency_ms.p99, fmt: fmtMs, delta: "ratio" },
    { key: "error_rate", label: "error rate", value: (s) => s.error_rate, fmt: fmtPct, delta: "points" },
    { key: "timeout_rate", label: "time-out rate", value: (s) => s.timeout_rate, fmt: fmtPct, delta: "points" },
    {
      key: "schema_validation_pass_rate", label: "contract failures",
      value: (s) => s.contract_failures, fmt: fmtInt,
      extra: (s) => (isNum(s.contract_pass_rate) ? ` (${fmtPct(1 - s.contract_pass_rate)})` : ""),
    },
    { key: "fallback_rate", label: "fallbacks to stable", value: live((s) => s.fallbacks), fmt: fmtInt },
    { key: "gpu_memory", label: "GPU memory", value: live((s, arm) => gpuMemory(arm)), fmt: fmtBytes, gpu: true },
    { key: "gpu_utilization", label: "GPU utilisation", value: live((s, arm) => gpuUtil(arm)), fmt: (v) => fmtPct(v, 0), gpu: true },
    { key: "gpu_oom_events", label: "GPU OOM events", value: live((s, arm) => (state.oom_events || {})[arm] || 0), fmt: fmtInt },
    { key: "replica_restarts", label: "replica restarts", value: live((s, arm) => (state.restarts || {})[arm] || 0), fmt: fmtInt },
  ];
  for (const metric of [...feedback].sort()) {
    rows.push({
      key: metric, label: `${metric} (feedback mean)`, delta: "diff", fmt: fmtNum,
      value: (s) => (s.feedback && s.feedback[metric] ? s.feedback[metric].mean : null),
      extra: (s) => (s.feedback && s.feedback[metric] ? ` (n=${fmtInt(s.feedback[metric].count)})` : ""),
    });
  }
  for (const name of [...fields].sort()) {
    rows.push({ key: name, label: `${name} (mean)`, value: (s) => (s.fields || {})[name], fmt: fmtNum, delta: "diff" });
  }
  return rows;
}

function armStats(state, arm) {
  if (arm === "shadow") return state.shadow && state.shadow.stats;
  return state.arms && state.arms[arm] && state.arms[arm].stats;
}

function delta(kind, base, other) {
  if (!kind || !isNum(base) || !isNum(other)) return "";
  if (kind === "ratio") return base > 0 ? `×${(other / base).toFixed(2)}` : "";
  if (kind === "points") return `${other >= base ? "+" : ""}${((other - base) * 100).toFixed(2)} pp`;
  return `${other >= base ? "+" : ""}${fmtNum(other - base)}`;
}

function renderArms(state, verdictOf) {
  const versions = ARMS.map((arm) => (arm === "shadow" ? "candidate, mirrored" : (state.arms[arm] || {}).model_version));
  const head = h("thead", {}, h("tr", {},
    h("th", {}, "per arm"),
    ARMS.map((arm, i) => h("th", { class: arm }, arm, h("br"), h("small", { class: "muted" }, versions[i] || ""))),
    h("th", {}, "candidate vs stable"),
    h("th", {}, "gate"),
  ));
  const hasGpu = (state.replicas || []).some((r) => (r.gpus || []).length || isNum(r.torch_reserved_bytes));
  const body = h("tbody");
  for (const row of armRows(state)) {
    const values = ARMS.map((arm) => {
      const stats = armStats(state, arm);
      return stats ? row.value(stats, arm) : null;
    });
    const stable = armStats(state, "stable");
    const liveCandidate = (armStats(state, "candidate") || {}).requests > 0;
    const compared = liveCandidate ? values[1] : values[2];
    const verdict = verdictOf(row.key);
    const cells = ARMS.map((arm, i) => {
      let text = values[i] === null || values[i] === undefined ? "–" : row.fmt(values[i]);
      if (row.gpu && !hasGpu && arm !== "shadow") text = "no GPU";
      const stats = armStats(state, arm);
      if (row.extra && stats && values[i] !== null) text += row.extra(stats);
      const worse = verdict === "FAIL" && arm !== "stable";
      return h("td", { "data-arm": arm, "data-metric": row.key, class: worse ? "worse" : null }, text);
    });
    body.append(h("tr", { "data-row": row.key, class: verdict === "FAIL" ? "worse" : null },
      h("th", { class: "text" }, row.label),
      cells,
      h("td", {}, stable ? delta(row.delta, values[0], compared) : ""),
      h("td", {}, verdict ? verdictTag(verdict) : ""),
    ));
  }
  replace($("arms"), head, body);
}

// --- verdict, stages, facts ------------------------------------------------------------------------------

function renderHeader(state) {
  const v = state.versions || {};
  $("versions").textContent = `${v.stable || state.arms.stable.model_version} → ${v.candidate || state.arms.candidate.model_version}`;
  const stage = $("stage");
  stage.textContent = (state.stage || "manual").replace(/_/g, " ");
  stage.className = `badge ${state.stage || "manual"}`;
  $("weight").textContent = `${fmtNum(state.candidate_weight)} %`;
  $("shadow-rate").textContent = `${fmtNum(state.shadow_percent)} %`;
  $("mode").textContent = state.mode || "manual";
}

function renderVerdict(state) {
  const gates = state.gates || [];
  const failing = gates.filter((g) => g.verdict === "FAIL");
  const worse = new Set([...(state.worse || []), ...failing.map((g) => g.segment).filter((s) => s !== "all")]);
  const box = $("verdict");
  const names = [...worse].map((s) => h("span", { class: "segment-name" }, s));
  const join = (nodes) => nodes.flatMap((n, i) => (i ? [", ", n] : [n]));
  const failed = [...new Set(failing.map((g) => g.gate))].join(", ");
  if (state.stage === "rolled_back") {
    box.className = "verdict bad";
    replace(box, "Rolled back", names.length ? [": the candidate is worse at ", join(names)] : unnamedLead(state, failing),
      h("span", { class: "detail" }, failed ? `failing gates: ${failed}` : lastReason(state, "rolled_back")));
  } else if (worse.size || failing.length) {
    box.className = "verdict bad";
    replace(box, "The candidate is worse", names.length ? [" at ", join(names)] : " overall",
      h("span", { class: "detail" }, failed ? `failing gates: ${failed}` : "flagged by the segment screen (e-BH)"));
  } else if (state.stage === "promoted" || state.stage === "closed") {
    box.className = "verdict good";
    replace(box, "Promoted: the candidate serves all traffic", h("span", { class: "detail" }, lastReason(state, "promoted")));
  } else if (!gates.length) {
    box.className = "verdict wait";
    replace(box, state.mode === "auto" ? "Waiting for the first judgement" : "Manual routing: no gates are judged",
      h("span", { class: "detail" }, "the numbers below still compare stable and candidate"));
  } else {
    const counts = {};
    for (const g of gates) counts[g.verdict] = (counts[g.verdict] || 0) + 1;
    const summary = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ");
    box.className = "verdict good";
    replace(box, "No segment is worse so far", h("span", { class: "detail" }, `gate results: ${summary}`));
  }
}

// A regression in one segment often fails the global test before that segment has the samples to be named:
// then the segment with the largest p95 ratio is the lead, shown as an estimate, not a verdict.
function unnamedLead(state, failing) {
  if (!failing.some((g) => g.segment === "all")) return "";
  const lead = segmentRows(state).find((row) => isNum(row.ratio) && row.ratio > 1.1 && !row.whole);
  if (!lead) return ": the candidate failed overall";
  return [": the candidate failed overall; largest p95 ratio at ", h("span", { class: "segment-name" }, lead.name),
    ` (×${lead.ratio.toFixed(2)}, an estimate: too few samples there to prove it)`];
}

function lastReason(state, to) {
  const event = [...(state.events || [])].reverse().find((e) => e.to === to);
  return event ? `${event.actor || ""}: ${event.reason || ""}` : "";
}

function renderStages(state) {
  const stages = state.stages || [];
  const current = state.stage_index;
  const items = stages.map((s, i) => {
    const label = isNum(s.shadow_percent) ? `shadow ${fmtNum(s.shadow_percent)} %` : `${fmtNum(s.weight)} %`;
    let cls = "";
    if (state.stage === "promoted" || state.stage === "closed" || (isNum(current) && i < current)) cls = "done";
    if (isNum(current) && i === current) cls = state.stage === "rolled_back" ? "failed" : "current";
    return h("li", { class: cls }, label);
  });
  replace($("stages"), items.length ? items : h("li", { class: "current" }, `manual: candidate ${fmtNum(state.candidate_weight)} %, shadow ${fmtNum(state.shadow_percent)} %`));
  const now = Date.now() / 1000;
  const stage = isNum(current) ? stages[current] : null;
  const facts = [
    ["rollout", state.rollout_id || "–"],
    ["owner", state.owner || "–"],
    ["rolls back when", state.rollback_condition || "–"],
    ["compared with", baselineText(state.baseline)],
    ["in this stage", isNum(state.stage_started_at) ? duration(now - state.stage_started_at) + (stage ? ` of ≥ ${duration(stage.min_duration_s)}` : "") : "–"],
    ["requests in stage", state.stage_requests !== undefined ? fmtInt(state.stage_requests) + (stage ? ` of ≥ ${fmtInt(stage.min_requests)}` : "") : "–"],
    ["routing push", state.propagation_ms && isNum(state.propagation_ms.p99) ? `p99 ${fmtMs(state.propagation_ms.p99)} (${fmtInt(state.propagation_ms.count)} pushes)` : "–"],
  ];
  if (state.config_error) facts.push(["config refused", state.config_error]);
  if (state.config_pending) facts.push(["config pending", state.config_pending]);
  replace($("facts"), facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// What the comparative gates compare the candidate with (GET /rollout's `baseline`).
function baselineText(baseline) {
  if (!baseline || baseline.mode !== "matched") return "all of stable's answers since the rollout started";
  const sizes = isNum(baseline.stable_requests) && isNum(baseline.candidate_requests)
    ? ` (${fmtInt(baseline.stable_requests)} / ${fmtInt(baseline.candidate_requests)} so far)` : "";
  return `stable at the candidate's pace, ${fmtNum(baseline.ratio)} answers per candidate answer${sizes}`;
}

// --- gates, segments, shadow, replicas, events -----------------------------------------------------------

function unitOf(gate) {
  if (gate.startsWith("latency_")) return fmtMs;
  if (gate.endsWith("_rate")) return (v) => fmtPct(v);
  if (gate === "gpu_memory") return fmtBytes;
  return fmtNum;
}

function bounds(side, fmt) {
  if (!side) return "–";
  const est = fmt(side.estimate);
  const lo = isNum(side.lower) ? fmt(side.lower) : "…";
  const hi = isNum(side.upper) ? fmt(side.upper) : "…";
  return `${est}  [${lo}, ${hi}]`;
}

function renderGates(state) {
  const gates = [...(state.gates || [])].sort((a, b) =>
    SEVERITY[b.verdict] - SEVERITY[a.verdict] || (a.segment === "all" ? -1 : 0) - (b.segment === "all" ? -1 : 0)
    || a.gate.localeCompare(b.gate) || a.segment.localeCompare(b.segment));
  const head = h("thead", {}, h("tr", {}, ["gate", "segment", "verdict", "candidate (est. [bounds])", "stable (est. [bounds])", "limit", "why"]
    .map((t, i) => h("th", { class: i === 6 || i < 2 ? "text" : null }, t))));
  const body = h("tbody");
  for (const g of gates) {
    const e = g.evidence || {};
    const fmt = unitOf(g.gate);
    body.append(h("tr", { class: g.verdict === "FAIL" ? "worse" : null, "data-gate": g.gate, "data-segment": g.segment },
      h("td", { class: "text", title: e.rule || "" }, g.gate),
      h("td", { class: "text" }, g.segment),
      h("td", {}, verdictTag(g.verdict)),
      h("td", {}, bounds(e.candidate, fmt)),
      h("td", {}, bounds(e.stable, fmt)),
      h("td", {}, isNum(e.threshold) ? fmtNum(e.threshold) : "–"),
      h("td", { class: "text" }, e.reason || ""),
    ));
  }
  const skipped = (state.skipped || []).map(([gate, why]) => `${gate}: ${why}`).join("; ");
  if (!gates.length) body.append(h("tr", {}, h("td", { class: "text muted", colspan: 7 }, "no gate judged yet")));
  if (skipped) body.append(h("tr", {}, h("td", { class: "text muted", colspan: 7 }, `not judged now: ${skipped}`)));
  replace($("gates"), head, body);
}

function segmentRows(state) {
  const verdicts = {};
  for (const g of state.gates || []) {
    (verdicts[g.segment] = verdicts[g.segment] || []).push(g);
  }
  const flagged = new Set(state.worse || []);
  const arms = state.arms || {};
  return (state.segments || []).map((s) => {
    // a segment holding every request of both arms (a label with one value) says nothing of where
    const whole = ["stable", "candidate"].every(
      (arm) => ((s[arm] || {}).requests ?? null) === (((arms[arm] || {}).stats || {}).requests ?? null));
    const name = segmentName(s);
    const stable = s.stable || {};
    const other = (s.candidate || {}).requests ? s.candidate : (s.shadow || {}).stats || {};
    const ratio = (stable.latency_ms || {}).p95 > 0 && isNum((other.latency_ms || {}).p95)
      ? other.latency_ms.p95 / stable.latency_ms.p95 : null;
    const errDiff = isNum(other.error_rate) && isNum(stable.error_rate) ? other.error_rate - stable.error_rate : null;
    const gates = verdicts[name] || [];
    const verdict = gates.length ? worst(gates.map((g) => g.verdict)) : null;
    const failing = gates.filter((g) => g.verdict === "FAIL").map((g) => g.gate);
    const bad = verdict === "FAIL" || flagged.has(name);
    // worst first: judged worse, then by how much slower and how many more errors
    const score = (bad ? 1000 : 0) + (whole ? 0 : Math.max(0, (ratio || 1) - 1) + 20 * Math.max(0, errDiff || 0));
    return { s, name, stable, other, ratio, errDiff, verdict, failing, bad, score, whole };
  }).sort((a, b) => b.score - a.score || (b.stable.requests || 0) - (a.stable.requests || 0));
}

function renderSegments(state) {
  const head = h("thead", {}, h("tr", {},
    h("th", {}, "segment"), h("th", {}, "verdict"),
    h("th", { class: "stable" }, "stable req"), h("th", { class: "candidate" }, "candidate req"), h("th", { class: "shadow" }, "mirrored"),
    h("th", { class: "stable" }, "stable p95"), h("th", { class: "candidate" }, "candidate p95"), h("th", {}, "p95 ratio"),
    h("th", { class: "stable" }, "stable errors"), h("th", { class: "candidate" }, "candidate errors"),
    h("th", {}, "agreement"),
  ));
  const body = h("tbody");
  for (const row of segmentRows(state)) {
    const s = row.s;
    body.append(h("tr", { class: row.bad ? "worse" : null, "data-segment": row.name },
      h("td", { title: row.failing.length ? `FAIL: ${row.failing.join(", ")}` : "" }, row.name),
      h("td", {}, row.verdict ? verdictTag(row.verdict) : h("span", { class: "muted" }, "not judged")),
      h("td", {}, fmtInt((s.stable || {}).requests)),
      h("td", {}, fmtInt((s.candidate || {}).requests)),
      h("td", {}, fmtInt((s.shadow || {}).mirrored)),
      h("td", {}, fmtMs((row.stable.latency_ms || {}).p95)),
      h("td", { class: row.ratio > 1.1 ? "worse" : null }, fmtMs((row.other.latency_ms || {}).p95)),
      h("td", { class: row.ratio > 1.1 ? "worse" : null }, isNum(row.ratio) ? `×${row.ratio.toFixed(2)}` : "–"),
      h("td", {}, fmtPct(row.stable.error_rate)),
      h("td", { class: row.errDiff > 0.005 ? "worse" : null }, fmtPct(row.other.error_rate)),
      h("td", {}, fmtPct((s.shadow || {}).agreement_rate, 1)),
    ));
  }
  if (!body.children.length) body.append(h("tr", {}, h("td", { class: "text muted", colspan: 11 }, "no segment labels seen yet")));
  replace($("segments"), head, body);
}

function renderShadow(state) {
  const s = state.shadow || {};
  const facts = [
    ["mirrored", fmtInt(s.mirrored)],
    ["completed", fmtInt(s.completed)],
    ["dropped (over the in-flight cap)", fmtInt(s.dropped)],
    ["timed out", fmtInt(s.timed_out)],
    ["failed", fmtInt(s.failed)],
    ["in flight", `${fmtInt(s.in_flight)} of ≤ ${fmtInt(s.max_in_flight)} per Ingress`],
    ["prediction agreement", fmtPct(s.agreement_rate, 1)],
    ["|Δ confidence| mean / p95", `${fmtNum(s.confidence_diff_mean)} / ${fmtNum(s.confidence_diff_p95)}`],
    ["confidence shift (PSI)", fmtNum(s.confidence_psi)],
  ];
  replace($("shadow"), facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-shadow": k.split(" ")[0] }, v)]));
}

function renderReplicas(state) {
  const head = h("thead", {}, h("tr", {}, ["arm", "replica", "device", "GPU memory (own / used / total)", "utilisation", "OOMs"]
    .map((t, i) => h("th", { class: i < 3 ? "text" : null }, t))));
  const body = h("tbody");
  for (const r of [...(state.replicas || [])].sort((a, b) => a.arm.localeCompare(b.arm))) {
    const gpus = r.gpus || [];
    const own = gpus.map((g) => g.process_memory_bytes).filter(isNum).reduce((a, b) => a + b, 0);
    const memory = gpus.length
      ? gpus.map((g) => `${fmtBytes(own || r.torch_reserved_bytes)} / ${fmtBytes(g.memory_used_bytes)} / ${fmtBytes(g.memory_total_bytes)}`).join("; ")
      : "no GPU";
    const util = gpus.map((g) => g.utilization_ratio).filter(isNum);
    body.append(h("tr", {},
      h("td", { class: "text" }, r.arm),
      h("td", { class: "text" }, String(r.replica_id).slice(0, 12)),
      h("td", { class: "text" }, `${r.device || ""} ${r.model_version || ""}`),
      h("td", {}, memory),
      h("td", {}, util.length ? util.map((u) => fmtPct(u, 0)).join(", ") : "–"),
      h("td", {}, fmtInt(r.oom_events)),
    ));
  }
  if (!body.children.length) body.append(h("tr", {}, h("td", { class: "text muted", colspan: 6 }, "no replica has reported yet")));
  replace($("replicas"), head, body);
}

function renderEvents(state) {
  const head = h("thead", {}, h("tr", {}, ["time", "what", "stage", "candidate / shadow", "who", "why"]
    .map((t, i) => h("th", { class: i === 0 || i === 3 ? null : "text" }, t))));
  const body = h("tbody");
  for (const e of [...(state.events || [])].reverse()) {
    const move = e.from && e.to && e.from !== e.to ? `${e.from} → ${e.to}` : (e.to || "");
    body.append(h("tr", { "data-kind": e.kind },
      h("td", {}, clock(e.ts)),
      h("td", { class: "text" }, e.kind),
      h("td", { class: "text" }, move),
      h("td", {}, `${fmtNum(e.weight)} % / ${fmtNum(e.shadow_percent)} %`),
      h("td", { class: "text" }, e.actor || ""),
      h("td", { class: "text" }, e.reason || ""),
    ));
  }
  if (!body.children.length) body.append(h("tr", {}, h("td", { class: "text muted", colspan: 6 }, "no events yet")));
  replace($("events"), head, body);
}

// --- charts (SVG, drawn here: no chart library to ship) -----------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function lineChart(target, lines, marks, fmtY) {
  const W = 640, H = 220, L = 58, R = 10, T = 14, B = 24;
  const xs = lines.flatMap((l) => l.points.map((p) => p[0]));
  const ys = lines.flatMap((l) => l.points.map((p) => p[1])).filter(isNum);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  if (!xs.length || !ys.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, "no data yet"));
    replace(target, svg);
    return;
  }
  const x0 = Math.min(...xs), x1 = Math.max(Math.max(...xs), x0 + 10);
  const yMax = niceMax(Math.max(...ys) * 1.05);
  const X = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
  const Y = (v) => T + (1 - v / yMax) * (H - T - B);
  for (let i = 0; i <= 4; i += 1) {
    const v = (yMax * i) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "axis", "stroke-width": i ? 0.5 : 1 }));
    svg.append(s("text", { x: L - 4, y: Y(v) + 3, "text-anchor": "end", class: "tick" }, fmtY(v)));
  }
  for (let i = 0; i <= 4; i += 1) {
    const t = x0 + ((x1 - x0) * i) / 4;
    svg.append(s("text", { x: X(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle", class: "tick" }, clock(t)));
  }
  marks.filter((m) => m.t >= x0 && m.t <= x1).forEach((m, i) => {
    svg.append(s("line", { x1: X(m.t), x2: X(m.t), y1: T, y2: H - B, class: `mark ${m.cls || ""}` }));
    // staggered, so marks close in time keep readable labels
    const right = X(m.t) > W * 0.85; // near the right edge the label goes left of its line
    svg.append(s("text", {
      x: X(m.t) + (right ? -3 : 3), y: T + 8 + (i % 3) * 11, "text-anchor": right ? "end" : "start", class: "marklabel",
    }, m.label));
  });
  for (const line of lines) {
    let d = "";
    let pen = false;
    for (const [t, v] of line.points) {
      if (!isNum(v)) { pen = false; continue; } // a gap where the arm served nothing
      d += `${pen ? "L" : "M"}${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) {
      svg.append(s("path", {
        d, fill: "none", stroke: line.color, "stroke-width": line.width || 1.8,
        "stroke-dasharray": line.dash || "none", "vector-effect": "non-scaling-stroke",
      }));
    }
  }
  const legend = h("div", { class: "legend" }, lines.filter((l) => l.legend).map((l) =>
    h("span", {}, h("i", { style: `background:${l.color}` }), l.legend)));
  replace(target, svg, legend);
}

function stageMarks(events) {
  const marks = [];
  for (const e of events || []) {
    if (!isNum(e.ts)) continue;
    if (e.kind === "stage") {
      marks.push({ t: e.ts, label: isNum(e.shadow_percent) && e.shadow_percent > 0 && !e.weight ? "shadow" : `${fmtNum(e.weight)}%` });
    } else if (FINAL_MARKS[e.to] && e.from !== e.to) {
      marks.push({ t: e.ts, label: e.to.replace("_", " "), cls: FINAL_MARKS[e.to] });
    }
  }
  return marks;
}

function renderCharts(allPoints, state) {
  const marks = stageMarks(state && state.events);
  // the current rollout, from a minute before it started (the series runs since the controller started)
  const from = state && isNum(state.started_at) ? state.started_at - 60 : -Infinity;
  const points = allPoints.filter((p) => p.t + p.width_s >= from);
  const mid = (p) => p.t + p.width_s / 2;
  const series = (arm, key) => points.map((p) => [mid(p), p.arms[arm] ? p.arms[arm][key] : null]);
  const present = ARMS.filter((arm) => points.some((p) => p.arms[arm] && p.arms[arm].requests));
  const latency = present.flatMap((arm) => [
    { color: COLORS[arm], points: series(arm, "p95"), legend: `${arm} p95` },
    { color: COLORS[arm], points: series(arm, "p50"), dash: "2 3", width: 1.2 },
  ]);
  lineChart($("chart-latency"), latency, marks, (v) => fmtMs(v));
  const errors = present.map((arm) => ({ color: COLORS[arm], points: series(arm, "error_rate"), legend: arm }));
  lineChart($("chart-errors"), errors, marks, (v) => fmtPct(v, 1));
}

// --- polling ---------------------------------------------------------------------------------------------

let lastState = null;
let lastPoints = [];

function gateVerdicts(state) {
  const byGate = {};
  for (const g of state.gates || []) {
    if (g.segment === "all") byGate[g.gate] = g.verdict;
  }
  return (key) => byGate[key] || null;
}

function render(state) {
  lastState = state;
  renderHeader(state);
  renderVerdict(state);
  renderStages(state);
  renderArms(state, gateVerdicts(state));
  renderGates(state);
  renderSegments(state);
  renderShadow(state);
  renderReplicas(state);
  renderEvents(state);
  renderCharts(lastPoints, state);
}

function setFreshness(ok, text) {
  const node = $("freshness");
  node.textContent = text;
  node.className = ok ? "freshness" : "freshness stale";
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${body.detail || body.error || ""}`);
  return body;
}

async function pollRollout() {
  try {
    render(await getJSON("rollout"));
    setFreshness(true, `live · updated ${clock(Date.now() / 1000)}`);
  } catch (err) {
    setFreshness(false, `not updating: ${err.message}`);
  } finally {
    setTimeout(pollRollout, POLL_MS);
  }
}

async function pollSeries() {
  try {
    lastPoints = (await getJSON("rollout/series")).points || [];
    renderCharts(lastPoints, lastState);
  } catch (err) {
    // the rollout poll reports the connection; charts keep their last points
  } finally {
    setTimeout(pollSeries, SERIES_MS);
  }
}

// --- operator actions ------------------------------------------------------------------------------------

function setButtons() {
  const token = $("token").value.trim();
  for (const button of document.querySelectorAll("#admin button")) button.disabled = !token;
  $("admin-result").className = "muted";
  $("admin-result").textContent = token ? "Actions are sent with this token; the server checks it." : "Read-only: enter the admin token to use the buttons.";
}

async function act(action) {
  const token = $("token").value.trim();
  const result = $("admin-result");
  if (!token) return; // read-only without a token
  const reason = $("reason").value.trim();
  if (!reason) {
    result.className = "error";
    result.textContent = "Say why first: the reason goes into the audit trail.";
    $("reason").focus();
    return;
  }
  try {
    const response = await fetch(`admin/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ reason, actor: $("actor").value.trim() || "dashboard" }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      result.className = "error";
      result.textContent = `The token was refused (HTTP ${response.status}); nothing changed.`;
      return;
    }
    if (!response.ok) {
      result.className = "error";
      result.textContent = `${action} refused (HTTP ${response.status}): ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body)}`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    result.className = "ok";
    result.textContent = `${action}: done, stage now ${(body.state || body).stage || "updated"}.`;
    render(await getJSON("rollout"));
  } catch (err) {
    result.className = "error";
    result.textContent = `${action} failed: ${err.message}`;
  }
}

function start() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("input", setButtons);
  for (const button of document.querySelectorAll("#admin button")) {
    button.addEventListener("click", () => act(button.dataset.action));
  }
  setButtons();
  pollSeries();
  pollRollout();
}

start();
