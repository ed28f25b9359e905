// meshp2p console: plain JavaScript, no build step, no third-party code.
// The page talks to its own origin only: /api/events (server-sent status),
// /api/join, and the node's OpenAI API under /v1. Text from the mesh (model
// names, node ids) is always put in the page as text, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const ROLES = ["host", "worker", "standby", "client"];
const state = {
  status: null,
  modelIds: "",
  speeds: {}, // model -> tokens/s of the last answer streamed here
  history: [], // chat messages sent so far
  controller: null, // AbortController of the answer streaming now
  apiKey: "",
};

// -- small helpers ------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(id) { return id ? "…" + String(id).slice(-6) : "?"; }

function size(n) {
  if (typeof n !== "number" || !isFinite(n)) return "?";
  let value = n;
  for (const unit of ["B", "kB", "MB", "GB", "TB"]) {
    if (Math.abs(value) < 999.95 || unit === "TB") {
      return unit === "B" ? `${value.toFixed(0)} B` : `${value.toFixed(1)} ${unit}`;
    }
    value /= 1000;
  }
  return "?";
}

function role(r) { return ROLES.includes(r) ? r : "standby"; }

function setText(id, text) {
  const node = $(id);
  if (node.textContent !== text) node.textContent = text;
}

function setValue(id, value) {
  const node = $(id);
  if (node.value !== value && document.activeElement !== node) node.value = value;
}

function authHeaders() {
  return state.apiKey ? { authorization: "Bearer " + state.apiKey } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

// -- what the mesh looks like from here -----------------------------------------

// Every node this node knows: itself, gossiping peers, passive clients using it.
function meshNodes(status) {
  const links = {};
  for (const c of status.connections || []) links[c.peer] = links[c.peer] || c.transport;
  const me = {
    id: status.node_id, role: role(status.role), self: true,
    models: (status.models_served || []).map((m) => m.id),
    memory: status.memory || null,
  };
  const nodes = [me];
  for (const p of status.peers || []) {
    const total = p.memory_total, free = p.memory_free;
    let memory = null;
    if (typeof total === "number" && total > 0 && typeof free === "number") {
      const used = Math.max(0, total - free);
      // Gossip says how much is free, not what for: a worker's use is lent memory.
      memory = p.role === "worker"
        ? { total, models: 0, lent: used, free }
        : { total, models: used, lent: 0, free };
    }
    nodes.push({
      id: p.id, role: role(p.role), self: false, models: p.models_served || [],
      memory, rtt: p.rtt_ms, transport: links[p.id] || null, inflight: p.inflight,
    });
  }
  for (const c of status.clients || []) {
    nodes.push({ id: c.id, role: "client", self: false, models: [], memory: null,
      rtt: null, transport: c.transport || links[c.id] || null });
  }
  return nodes;
}

function linkLabel(node) {
  const parts = [];
  if (node.transport) parts.push(node.transport);
  if (typeof node.rtt === "number") parts.push(`${node.rtt < 10 ? node.rtt.toFixed(1) : node.rtt.toFixed(0)} ms`);
  return parts.join(" · ");
}

// -- rendering ---------------------------------------------------------------------

function render(status) {
  state.status = status;
  const nodes = meshNodes(status);
  setText("ident", `node ${status.node_id} · ${status.role} · meshp2p ${status.version}`);
  setText("mesh-id", status.mesh_id ? `· ${status.mesh_id} · ${nodes.length} node${nodes.length === 1 ? "" : "s"}` : "");
  document.title = `meshp2p console · ${nodes.length} node${nodes.length === 1 ? "" : "s"}`;
  const banner = $("banner");
  banner.hidden = !status.joining;
  if (status.joining) banner.textContent = "Joining another mesh…";
  renderGraph(nodes);
  renderNodes(nodes, status);
  renderModels(status);
  renderSplits(status);
  setValue("invite", status.invite_token || "");
  setValue("api-url", status.api_url || "");
  $("key-row").hidden = !(status.api_key_required || state.apiKey || $("chat-key-toggle").getAttribute("aria-expanded") === "true");
  setText("footer", `console ${status.console_url || ""} · home ${status.home || "?"} · up ${Math.round(status.uptime_s || 0)} s`);
  const ids = (status.models || []).map((m) => m.id).join("\n");
  if (ids !== state.modelIds) {
    state.modelIds = ids;
    loadModels(); // the mesh's models changed: ask the API what it serves now
  }
}

function renderGraph(nodes) {
  const graph = $("graph");
  // A narrow screen gets a narrow drawing, so its text stays readable.
  const narrow = graph.clientWidth > 0 && graph.clientWidth < 560;
  const W = narrow ? 380 : 640, cx = W / 2, cy = 180;
  for (const child of [...graph.childNodes]) {
    if (child.nodeName !== "title" && child.nodeName !== "desc") child.remove();
  }
  const others = nodes.filter((n) => !n.self)
    .sort((a, b) => ROLES.indexOf(a.role) - ROLES.indexOf(b.role) || (a.id < b.id ? -1 : 1));
  const r = others.length > 10 ? 16 : 24;
  const positions = new Map();
  positions.set(nodes[0].id, [cx, cy]);
  others.forEach((n, i) => {
    // One or two others side by side on a wide screen; above and below on a narrow one.
    const turn = others.length <= 2 && !narrow ? Math.PI / 2 : 0;
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / others.length + turn;
    positions.set(n.id, [cx + (W / 2 - 90) * Math.cos(angle), cy + (narrow ? 150 : 125) * Math.sin(angle)]);
  });
  const links = svg("g", { class: "links" });
  const labels = svg("g", { class: "link-labels" });
  for (const n of others) {
    const [x1, y1] = positions.get(nodes[0].id), [x2, y2] = positions.get(n.id);
    links.append(svg("line", { x1, y1, x2, y2, class: n.transport ? "link" : "link indirect" }));
    const text = linkLabel(n);
    if (text) {
      // Beside its line: above a flat one, to the right of a steep one.
      // A steep one's label sits past the middle, clear of this node's own label.
      const flat = Math.abs(x2 - x1) >= Math.abs(y2 - y1);
      const t = flat ? 0.5 : 0.62;
      labels.append(svg("text", {
        x: x1 + t * (x2 - x1) + (flat ? 0 : 8), y: y1 + t * (y2 - y1) + (flat ? -6 : 4),
        "text-anchor": flat ? "middle" : "start", class: "link-label",
      }, text));
    }
  }
  graph.append(links, labels);
  // Fit the drawing's height to the nodes: no empty bands above or below.
  const ys = [...positions.values()].map(([, y]) => y);
  const top = Math.min(...ys) - r - 46, bottom = Math.max(...ys) + r + 46;
  const height = Math.max(200, bottom - top);
  graph.setAttribute("viewBox", `0 ${((top + bottom) / 2 - height / 2).toFixed(0)} ${W} ${height.toFixed(0)}`);
  for (const n of nodes) {
    const [x, y] = positions.get(n.id);
    // Labels on the outer side of a node: above the ones drawn above this node.
    const up = !n.self && y < cy - 1;
    const edge = up ? y - r - 39 : y + (n.self ? r + 9 : r);
    const g = svg("g", { class: "graph-node", "data-node-id": n.id });
    g.append(svg("title", {}, `${n.self ? "this node, " : ""}${n.role} ${n.id}`));
    if (n.self) g.append(svg("circle", { cx: x, cy: y, r: r + 7, class: "self-ring" }));
    g.append(svg("circle", { cx: x, cy: y, r, class: `role-${n.role}` }));
    g.append(svg("text", { x, y: y + 5, "text-anchor": "middle", class: "node-letter" }, n.role[0].toUpperCase()));
    g.append(svg("text", { x, y: edge + 16, "text-anchor": "middle", class: "node-label" },
      `${short(n.id)}${n.self ? " (this node)" : ""}`));
    const sub = n.models.length ? n.models.join(", ") : n.role;
    g.append(svg("text", { x, y: edge + 31, "text-anchor": "middle", class: "node-sub" },
      sub.length > 34 ? sub.slice(0, 33) + "…" : sub));
    graph.append(g);
  }
  const summary = nodes.map((n) => `${n.self ? "this node" : short(n.id)}: ${n.role}` +
    (n.models.length ? ` serving ${n.models.join(", ")}` : "") +
    (n.self ? "" : (linkLabel(n) ? ` (${linkLabel(n)})` : " (no direct link)"))).join("; ");
  setText("graph-desc", `${nodes.length} node${nodes.length === 1 ? "" : "s"}: ${summary}.`);
}

function memoryBar(memory) {
  if (!memory || !memory.total) return el("p", { class: "bar-text", text: "memory not reported (API only)" });
  const pct = (v) => `${Math.max(0, Math.min(100, (100 * v) / memory.total)).toFixed(2)}%`;
  const bar = el("div", { class: "bar", role: "img",
    "aria-label": `memory: ${size(memory.models)} used by models, ${size(memory.lent)} lent, ${size(memory.free)} free of ${size(memory.total)}` });
  const models = el("span", { class: "models" }), lent = el("span", { class: "lent" });
  models.style.width = pct(memory.models);
  lent.style.width = pct(memory.lent);
  bar.append(models, lent);
  const text = el("p", { class: "bar-text", "aria-hidden": "true",
    text: `models ${size(memory.models)} · lent ${size(memory.lent)} · free ${size(memory.free)} of ${size(memory.total)}` });
  return [bar, text];
}

function renderNodes(nodes, status) {
  const list = $("nodes");
  const items = nodes.map((n) => {
    const head = el("div", { class: "node-head" },
      el("span", { class: `badge role-${n.role}`, text: n.role }),
      el("span", { class: "mono", title: n.id, text: n.id }),
      n.self ? el("span", { class: "this", text: "this node" }) : null);
    const facts = [];
    if (n.models.length) facts.push(`serves ${n.models.join(", ")}`);
    if (!n.self) facts.push(linkLabel(n) ? `link ${linkLabel(n)}` : "no direct link");
    const inflight = (status.inflight || {})[n.id];
    if (inflight) facts.push(`${inflight} request${inflight === 1 ? "" : "s"} from here in flight`);
    const bar = memoryBar(n.memory);
    return el("li", { class: "node", "data-node-id": n.id, "data-role": n.role },
      head, facts.length ? el("p", { class: "bar-text", text: facts.join(" · ") }) : null,
      ...(Array.isArray(bar) ? bar : [bar]));
  });
  list.replaceChildren(...items);
}

function renderModels(status) {
  const body = $("models").tBodies[0];
  const models = status.models || [];
  if (!models.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No model is served in this mesh yet." })));
    return;
  }
  body.replaceChildren(...models.map((m) => {
    const servedBy = el("td", {});
    m.nodes.forEach((id, i) => {
      if (i) servedBy.append(", ");
      servedBy.append(el("span", { class: id === status.node_id ? "this" : "mono", title: id,
        text: id === status.node_id ? "this node" : short(id) }));
    });
    const here = typeof m.busy === "number" ? m.busy + (m.waiting || 0) : null;
    const speed = state.speeds[m.id];
    return el("tr", { "data-model": m.id },
      el("th", { scope: "row", class: "mono", text: m.id }),
      servedBy,
      el("td", {}, el("span", { class: `badge state state-${m.state}`, text: m.state })),
      el("td", { class: "num", text: here === null ? "—" : String(here),
        title: here === null ? "counted on the nodes serving it" : `${m.busy} answering, ${m.waiting} waiting` }),
      el("td", { class: "num", text: speed ? speed.toFixed(1) : "—" }));
  }));
}

function renderSplits(status) {
  const box = $("splits");
  const parts = [];
  const placements = (status.placements || []).filter((p) => p.mode === "split" || p.mode === "unavailable");
  if (placements.length) {
    const rows = placements.map((p) => el("tr", {},
      el("th", { scope: "row", class: "mono", text: p.model }),
      el("td", { text: p.mode === "split" ? `${p.host_layers} layers on this node` : "waiting" }),
      el("td", { text: p.mode === "split"
        ? p.workers.map((w) => `${short(w.id)}: layers ${w.layer_range[0]}–${w.layer_range[1] - 1} (${size(w.memory)})`).join("; ")
        : p.reason || "" })));
    parts.push(el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Model" }),
        el("th", { scope: "col", text: "Host" }), el("th", { scope: "col", text: "Workers" }))),
      el("tbody", {}, ...rows))));
  }
  for (const lend of status.lending || []) {
    parts.push(el("p", { text: `This node lends ${size(lend.memory)} to host ${short(lend.host)} (${lend.open_streams} open stream${lend.open_streams === 1 ? "" : "s"}).` }));
  }
  if (!parts.length) parts.push(el("p", { class: "muted", text: "No model is split here: each runs whole on its host." }));
  box.replaceChildren(...parts);
}

// -- live status (server-sent events, no polling) ------------------------------------

function connect() {
  const live = $("live");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { live.dataset.state = "live"; live.textContent = "live"; });
  source.addEventListener("status", (event) => {
    live.dataset.state = "live";
    live.textContent = "live";
    try { render(JSON.parse(event.data)); } catch (err) { console.error(err); }
  });
  source.addEventListener("error", () => {
    live.dataset.state = "reconnecting";
    live.textContent = "reconnecting…";
  });
}

// -- chat ------------------------------------------------------------------------------

async function loadModels() {
  const select = $("chat-model");
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
  } catch (err) {
    return;
  }
  if (response.status === 401 || response.status === 403) {
    showKey(await errorMessage(response));
    return;
  }
  if (!response.ok) return;
  const body = await response.json();
  const ids = (body.data || []).map((m) => m.id);
  const current = select.value;
  const options = ids.map((id) => el("option", { value: id, text: id }));
  if (!ids.length) options.push(el("option", { value: "", text: "no model in the mesh yet" }));
  select.replaceChildren(...options);
  if (ids.includes(current)) select.value = current;
}

function showKey(message) {
  $("key-row").hidden = false;
  $("chat-key-toggle").setAttribute("aria-expanded", "true");
  chatStatus(`${message}: enter an API key of this node.`, true);
}

function chatStatus(text, error) {
  const node = $("chat-status");
  node.textContent = text;
  node.classList.toggle("error", Boolean(error));
}

function addMessage(who, text, cls) {
  const item = el("li", { class: cls }, el("span", { class: "who", text: who }), el("span", { class: "text", text }));
  $("transcript").append(item);
  item.scrollIntoView({ block: "nearest" });
  return item;
}

function streaming(on) {
  $("chat-send").disabled = on;
  $("chat-stop").disabled = !on;
}

// Reads an OpenAI stream (server-sent events) and calls onEvent with each JSON object.
// A stream that ends before its [DONE] was cut off: that is an error, not an answer.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
  }
  throw new Error("the answer was cut off: the stream ended before it was complete");
}

async function sendChat(event) {
  if (event) event.preventDefault();
  if (state.controller) return;
  const model = $("chat-model").value;
  const input = $("chat-message");
  const content = input.value.trim();
  if (!model) { chatStatus("Choose a model first.", true); $("chat-model").focus(); return; }
  if (!content) { chatStatus("Type a message first.", true); input.focus(); return; }
  const maxTokens = Math.max(1, Math.min(32768, parseInt($("chat-max").value, 10) || 256));
  // Blank leaves sampling to the node's default; 0 always gives the same answer.
  const temperatureText = $("chat-temperature").value.trim();
  const temperature = temperatureText === "" ? null : Number(temperatureText);
  if (temperature !== null && !(temperature >= 0 && temperature <= 2)) {
    chatStatus("Temperature is a number from 0 to 2, or blank for the default.", true);
    $("chat-temperature").focus();
    return;
  }
  const messages = [...state.history, { role: "user", content }];
  addMessage("You", content, "question");
  input.value = "";
  const item = addMessage(model, "", "answer streaming");
  const text = item.querySelector(".text");
  item.dataset.chunks = "0";
  const controller = new AbortController();
  state.controller = controller;
  streaming(true);
  chatStatus(`Asking ${model}…`);
  let answer = "", usage = null, first = null, chunks = 0, finish = null;
  const started = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify({ model, messages, stream: true, max_tokens: maxTokens,
        ...(temperature === null ? {} : { temperature }),
        stream_options: { include_usage: true } }),
      signal: controller.signal,
    });
    if (response.status === 401 || response.status === 403) {
      const message = await errorMessage(response);
      showKey(message);
      throw new Error(message);
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message || "the answer failed");
      if (chunk.usage) usage = chunk.usage;
      const choice = (chunk.choices || [])[0];
      if (!choice) return;
      const delta = (choice.delta && choice.delta.content) || "";
      if (delta) {
        if (first === null) first = performance.now();
        answer += delta;
        chunks += 1;
        text.textContent = answer;
        item.dataset.chunks = String(chunks);
        item.scrollIntoView({ block: "nearest" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    const seconds = (performance.now() - (first || started)) / 1000;
    const tokens = usage ? usage.completion_tokens : chunks;
    if (tokens > 1 && seconds > 0) state.speeds[model] = tokens / seconds;
    state.history = [...messages, { role: "assistant", content: answer }];
    if (!answer) item.append(el("span", { class: "muted empty", text: "(the model returned no text)" }));
    chatStatus(`Done: ${tokens} tokens${state.speeds[model] ? `, ${state.speeds[model].toFixed(1)} tok/s` : ""}` +
      `${finish === "length" ? " (stopped at max tokens)" : ""}.`);
    if (state.status) renderModels(state.status);
  } catch (err) {
    if (err.name === "AbortError") {
      chatStatus("Stopped.");
      state.history = [...messages, { role: "assistant", content: answer }];
    } else {
      item.append(el("span", { class: "error", text: (answer ? "\n" : "") + String(err.message || err) }));
      chatStatus(String(err.message || err), true);
    }
  } finally {
    item.classList.remove("streaming");
    item.dataset.done = "true";
    state.controller = null;
    streaming(false);
  }
}

function stopChat() {
  if (state.controller) state.controller.abort();
}

// -- invite, copy, join -------------------------------------------------------------------

async function copyFrom(id, label) {
  const input = $(id);
  const value = input.value;
  if (!value) return;
  try {
    await navigator.clipboard.writeText(value);
  } catch (_) {
    // No clipboard API (a page not served from localhost): select it, copy the old way.
    input.focus();
    input.select();
    try { document.execCommand("copy"); } catch (__) { /* the text stays selected */ }
  }
  setText("copy-status", `${label} copied.`);
}

async function join(event) {
  event.preventDefault();
  const input = $("join-token");
  const status = $("join-status");
  const token = input.value.trim();
  status.className = "";
  if (!token) { status.textContent = "Paste an invite token first."; status.className = "error"; input.focus(); return; }
  const mesh = state.status ? state.status.mesh_id : "this mesh";
  if (!window.confirm(`Leave mesh ${mesh} and join the invite's mesh?`)) return;
  $("join-submit").disabled = true;
  status.textContent = "Joining: checking that the mesh answers…";
  try {
    const response = await fetch("/api/join", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const result = await response.json();
    status.textContent = `Joined mesh ${result.mesh_id} (left ${result.previous_mesh_id}); ` +
      `${result.members} member${result.members === 1 ? "" : "s"} reached.`;
    status.className = "ok";
    input.value = "";
  } catch (err) {
    status.textContent = `Not joined: ${err.message || err}`;
    status.className = "error";
  } finally {
    $("join-submit").disabled = false;
  }
}

// -- wiring ----------------------------------------------------------------------------------

function init() {
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-stop").addEventListener("click", stopChat);
  $("chat-clear").addEventListener("click", () => {
    stopChat();
    state.history = [];
    $("transcript").replaceChildren();
    chatStatus("Conversation cleared.");
  });
  $("chat-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) sendChat(event);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) stopChat();
  });
  $("chat-key-toggle").addEventListener("click", () => {
    const row = $("key-row");
    row.hidden = !row.hidden;
    $("chat-key-toggle").setAttribute("aria-expanded", String(!row.hidden));
    if (!row.hidden) $("chat-key").focus();
  });
  $("chat-key").addEventListener("change", () => {
    state.apiKey = $("chat-key").value.trim();
    loadModels();
  });
  $("copy-invite").addEventListener("click", () => copyFrom("invite", "Invite token"));
  $("copy-api").addEventListener("click", () => copyFrom("api-url", "API address"));
  $("join-form").addEventListener("submit", join);
  window.addEventListener("resize", () => { if (state.status) renderGraph(meshNodes(state.status)); });
  connect();
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
