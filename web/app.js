// Sluice web page: chat, completion and schema-constrained extraction over the server's SSE
// streams. Plain ES module, no build step.

const $ = (id) => document.getElementById(id);

const PRESETS = {
  person: {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 40 },
      age: { type: "integer", minimum: 0, maximum: 130 },
      city: { type: "string", maxLength: 30 },
      email: { type: "string", format: "email" },
    },
    required: ["name", "age", "city"],
    additionalProperties: false,
  },
  invoice: {
    type: "object",
    properties: {
      number: { type: "string", pattern: "^INV-[0-9]{3,6}$" },
      date: { type: "string", format: "date" },
      currency: { enum: ["EUR", "USD", "GBP"] },
      total: { type: "number" },
    },
    required: ["number", "date", "currency", "total"],
    additionalProperties: false,
  },
  event: {
    type: "object",
    properties: {
      title: { type: "string", maxLength: 60 },
      start: { type: "string", format: "date-time" },
      attendees: { type: "array", items: { type: "string", maxLength: 30 }, maxItems: 5 },
    },
    required: ["title", "start"],
    additionalProperties: false,
  },
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function explain(status, message) {
  const what = {
    400: "The server refused the request",
    401: "The server needs a valid API key (see Settings)",
    404: "Not found",
    413: "The request is too large",
    501: "Not supported by this server",
    503: "The server is unavailable (busy, loading a model, or shutting down)",
  }[status] || `The server answered ${status}`;
  return message ? `${what}: ${message}` : what;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// the API's root: where this script is served from, less "/web/app.js" (the server may run
// under --api-prefix)
const BASE = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

async function request(method, path, body, signal) {
  const response = await fetch(BASE + path, {
    method, headers: headers(), signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let message = "";
    try {
      const err = (await response.json()).error || {};
      message = err.message || "";
      if (err.pointer) message = `at ${err.pointer}: ${message}`;
    } catch {
      message = await response.text().catch(() => "");
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

// Server-Sent Events from a fetch response (POST, so no EventSource).
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

// --- shared run state: one generation at a time, the Stop button aborts it -------------------
let current = null;

function showError(text) {
  const banner = $("error-banner");
  banner.textContent = text;
  banner.hidden = !text;
}

class Run {
  constructor() {
    this.controller = new AbortController();
    this.started = performance.now();
    this.first = null;
    this.last = null;
    this.tokens = 0;
    current = this;
    $("stop").disabled = false;
    showError("");
    $("stats").textContent = "waiting for the first token…";
  }
  get signal() { return this.controller.signal; }
  token(n = 1) {
    const now = performance.now();
    if (this.first === null) this.first = now;
    this.last = now;
    this.tokens += n;
    this.render();
  }
  render(suffix = "") {
    if (this.first === null) return;
    const ttft = (this.first - this.started) / 1000;
    const span = (this.last - this.first) / 1000;
    const rate = span > 0 ? (this.tokens - 1) / span : 0;
    $("stats").textContent = `${this.tokens} tokens · ${rate.toFixed(1)} tok/s · first token after ${ttft.toFixed(2)} s${suffix}`;
  }
  finish(note = "") {
    if (current === this) current = null;
    $("stop").disabled = true;
    if (this.first === null) $("stats").textContent = note || "done";
    else this.render(note ? ` · ${note}` : "");
  }
  fail(err) {
    if (err.name === "AbortError") {
      this.finish("stopped");
      return;
    }
    this.finish("failed");
    showError(err instanceof ApiError ? explain(err.status, err.message) : `Connection problem: ${err.message}`);
  }
}

$("stop").addEventListener("click", () => current && current.controller.abort());

function sampling() {
  const num = (id) => Number($(id).value);
  const out = {
    temperature: num("temperature"), top_k: num("top_k"), top_p: num("top_p"), min_p: num("min_p"),
  };
  const seed = num("seed");
  if (seed >= 0) out.seed = seed;
  const stops = $("stop_strings").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stops.length) out.stop = stops;
  return out;
}

function streamError(event) {
  if (event.error) throw new ApiError(event.error.code || 500, event.error.message);
}

// --- tabs ------------------------------------------------------------------------------------
for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[role=tab]")) {
      other.setAttribute("aria-selected", String(other === tab));
    }
    for (const panel of document.querySelectorAll(".panel")) {
      panel.hidden = panel.dataset.panel !== tab.dataset.tab;
    }
  });
}

// --- chat ------------------------------------------------------------------------------------
const history = [];

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("chat-log").append(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (current) return;
  const text = $("chat-input").value.trim();
  if (!text) return;
  $("chat-input").value = "";
  history.push({ role: "user", content: text });
  bubble("user", text);
  const reply = bubble("assistant", "");
  let thinking = null;
  const run = new Run();
  try {
    const response = await request("POST", "/v1/chat/completions", {
      model: chosenModel(), messages: history, stream: true, max_tokens: Number($("max_tokens").value), ...sampling(),
    }, run.signal);
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      streamError(event);
      const thought = event.choices?.[0]?.delta?.reasoning_content;
      if (thought) {  // a thinking model's reasoning, shown apart from the answer
        if (!thinking) {
          thinking = bubble("thinking", "");
          $("chat-log").insertBefore(thinking, reply);
        }
        thinking.textContent += thought;
        run.token();
      }
      const delta = event.choices?.[0]?.delta?.content;
      if (delta) {
        reply.textContent += delta;
        run.token();
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
    }
    run.finish();
  } catch (err) {
    run.fail(err);
  }
  history.push({ role: "assistant", content: reply.textContent });
});

// --- completion ------------------------------------------------------------------------------
$("completion-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (current) return;
  const out = $("completion-output");
  out.textContent = "";
  const run = new Run();
  try {
    const response = await request("POST", "/completion", {
      model: chosenModel(), prompt: $("completion-prompt").value, stream: true, n_predict: Number($("max_tokens").value),
      ...sampling(),
    }, run.signal);
    for await (const data of sseData(response)) {
      const event = JSON.parse(data);
      streamError(event);
      if (event.stop) break;
      out.textContent += event.content;
      run.token(event.tokens.length || 1);
    }
    run.finish();
  } catch (err) {
    run.fail(err);
  }
});

// --- extraction ------------------------------------------------------------------------------
function loadPreset() {
  $("schema-input").value = JSON.stringify(PRESETS[$("schema-preset").value], null, 2);
  convert();
}

let convertTimer = null;
async function convert() {
  const error = $("schema-error");
  let schema;
  try {
    schema = JSON.parse($("schema-input").value);
  } catch (err) {
    error.textContent = `The schema is not valid JSON: ${err.message}`;
    error.hidden = false;
    return null;
  }
  try {
    const response = await request("POST", "/grammar", { schema });
    const body = await response.json();
    $("gbnf-output").textContent = body.gbnf;
    error.hidden = true;
    return schema;
  } catch (err) {
    error.textContent = err instanceof ApiError ? explain(err.status, err.message) : err.message;
    error.hidden = false;
    $("gbnf-output").textContent = "";
    return null;
  }
}

$("schema-preset").addEventListener("change", loadPreset);
$("schema-input").addEventListener("input", () => {
  clearTimeout(convertTimer);
  convertTimer = setTimeout(convert, 300);
});

$("extract-run").addEventListener("click", async () => {
  if (current) return;
  const schema = await convert();
  if (!schema) return;
  const out = $("extract-output");
  const badge = $("validation-badge");
  out.textContent = "";
  badge.hidden = true;
  const run = new Run();
  const prompt = `Extract the data from the text as JSON.\nText: ${$("extract-text").value}\nJSON:`;
  try {
    const response = await request("POST", "/completion", {
      model: chosenModel(), prompt, json_schema: schema, stream: true, n_predict: Number($("max_tokens").value),
      ...sampling(),
    }, run.signal);
    let text = "";
    for await (const data of sseData(response)) {
      const event = JSON.parse(data);
      streamError(event);
      if (event.stop) {  // the final event: its content is empty, the partials carried it
        try {
          out.textContent = JSON.stringify(JSON.parse(text), null, 2);
        } catch {
          out.textContent = text;
        }
        badge.hidden = false;
        badge.className = `badge ${event.schema_valid ? "valid" : "invalid"}`;
        badge.textContent = event.schema_valid
          ? "valid against the schema"
          : `invalid: ${(event.schema_errors || []).map((e) => `${e.pointer || "/"} ${e.message}`).join("; ")}`;
        break;
      }
      text += event.content;
      out.textContent = text;
      run.token(event.tokens.length || 1);
    }
    run.finish();
  } catch (err) {
    run.fail(err);
  }
});

// --- models ------------------------------------------------------------------------------------
// Every request names the model picked here (the server's default until one is picked); the
// list is the server's /v1/models with each model's status.
let models = [];

function chosenModel() {
  return $("model-select").value || undefined;
}

function showModel() {
  const entry = models.find((m) => m.id === chosenModel()) ?? models[0];
  $("model-name").textContent = entry?.id ?? "no model";
  const status = entry?.status?.value ?? "";
  $("model-status").textContent = status === "failed" ? `failed: ${entry.status.error}`
    : status === "loaded" ? `loaded${entry.meta ? `, ${entry.meta.architecture}` : ""}`
    : status ? `${status} (loads on first use)` : "";
}

async function refreshModel() {
  try {
    models = (await (await request("GET", "/v1/models")).json()).data ?? [];
  } catch (err) {
    $("model-name").textContent = err instanceof ApiError ? explain(err.status, "") : "server unreachable";
    return;
  }
  const select = $("model-select");
  const keep = select.value;
  select.replaceChildren(...models.map((m) => new Option(m.id, m.id, false, m.id === keep)));
  if (!keep && models.length) select.value = models[0].id;
  $("model-box").hidden = models.length < 2;
  showModel();
}

$("model-select").addEventListener("change", showModel);

$("model-load").addEventListener("click", async () => {
  $("model-status").textContent = "loading…";
  try {
    await request("POST", "/models/load", { model: chosenModel() });
    await refreshModel();
  } catch (err) {
    $("model-status").textContent = err instanceof ApiError ? explain(err.status, err.message) : err.message;
  }
});

// The API key is kept for this browser session only, and the model state is read again with it.
$("api_key").value = sessionStorage.getItem("sluice-api-key") || "";
$("api_key").addEventListener("change", () => {
  sessionStorage.setItem("sluice-api-key", $("api_key").value.trim());
  showError("");
  refreshModel();
});

loadPreset();
refreshModel();
