// charnn serve's page: the models from /v1/models, every sampling setting of the API, the answer streamed
// from /v1/completions (or /v1/chat/completions) into one card per choice, with the speed as it comes.
"use strict";

const $ = (id) => document.getElementById(id);
const settings = JSON.parse($("settings").textContent);
const NUMBERS = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens", "n"];
const ESCAPES = {n: "\n", t: "\t", r: "\r", "\\": "\\"};
const page = {controller: null, last: null, cards: [], started: 0, first: 0, firstChars: 0, chars: 0};

// --- talking to the server ------------------------------------------------------------------------

function headers() {
  const sent = {"Content-Type": "application/json"};
  if (settings.needs_key) sent["Authorization"] = "Bearer " + $("api_key").value;
  return sent;
}

// An answer that is not 2xx, as an Error saying the status and the server's own message.
async function failure(response) {
  const body = await response.json().catch(() => null);
  const message = (body && body.error && body.error.message) || response.statusText || "the request failed";
  const err = new Error(response.status + ": " + message);
  err.status = response.status;
  return err;
}

async function getJson(path) {
  const response = await fetch(path, {headers: headers()});
  if (!response.ok) throw await failure(response);
  return response.json();
}

// --- the models ------------------------------------------------------------------------------------

async function loadModels() {
  const chosen = $("model").value;
  try {
    const list = await getJson("/v1/models");
    $("model").replaceChildren(...list.data.map((model) => new Option(model.id, model.id)));
    if (list.data.some((model) => model.id === chosen)) $("model").value = chosen;
    showModel(list.data.find((model) => model.id === $("model").value));
  } catch (err) {
    $("model-info").textContent = settings.needs_key && err.status === 401
      ? "enter the server's API key (in the settings) to see its models" : "the models: " + err.message;
  }
}

async function showSelectedModel() {
  try {
    showModel(await getJson("/v1/models/" + encodeURIComponent($("model").value)));
  } catch (err) {
    $("model-info").textContent = "the model: " + err.message;
  }
}

function showModel(model) {
  const card = model && model.charnn;
  if (!card) {
    $("model-info").textContent = "";
    return;
  }
  const units = card.vocab_mode === "byte" ? "bytes" : "characters";
  const parts = [card.num_layers + "×" + card.hidden_size + " " + card.cell.toUpperCase(),
                 card.vocab_size.toLocaleString("en") + " " + units,
                 card.parameters.toLocaleString("en") + " parameters"];
  parts.push(card.val_loss === null ? "no validation loss recorded"
    : "validation loss " + card.val_loss.toFixed(4) + " nats/char (" + card.val_bpc.toFixed(4) + " bits/char)"
      + (card.step === null ? "" : " at step " + card.step.toLocaleString("en")));
  $("model-info").textContent = parts.join(" · ");
  $("model-info").dataset.valBpc = card.val_bpc === null ? "" : String(card.val_bpc);
}

// --- the request -----------------------------------------------------------------------------------

function unescape(text) {
  return text.replace(/\\([ntr\\])/g, (whole, letter) => ESCAPES[letter]);
}

// What the form asks for: the path, the body without its seed, and the seed (digits, kept exact).
function request() {
  const chat = $("mode").value === "chat";
  const body = {model: $("model").value, stream: true};
  for (const name of NUMBERS) {
    const value = $(name).value.trim();
    if (value !== "") body[name] = Number(value);
  }
  const stops = $("stop_strings").value.split("\n").filter((line) => line !== "").map(unescape);
  if (stops.length) body.stop = stops;
  if (chat) body.messages = [{role: "user", content: $("prompt").value}];
  else body.prompt = $("prompt").value;
  const seed = $("seed").value.trim();
  return {path: chat ? "/v1/chat/completions" : "/v1/completions", body, fixedSeed: seed,
          shown: chat ? "" : $("prompt").value, n: Math.max(1, Math.min(body.n || 1, settings.max_n))};
}

function drawSeed() {
  return String(crypto.getRandomValues(new Uint32Array(1))[0]);
}

// The body as JSON, with the seed written as its own digits (a number of JavaScript's loses some past 2**53).
function bodyText(body, seed) {
  const text = JSON.stringify(body);
  if (/^\d{1,19}$/.test(seed)) return text.slice(0, -1) + ',"seed":' + seed + "}";
  return JSON.stringify({...body, seed: seed === "" ? undefined : Number(seed)});  // the server says what is wrong
}

// --- the answer ------------------------------------------------------------------------------------

function makeCards(count, shown) {
  page.cards = [];
  const cards = [];
  for (let index = 0; index < count; index++) {
    const card = document.createElement("article");
    card.className = "choice";
    card.setAttribute("aria-label", "Choice " + (index + 1));
    const head = document.createElement("header");
    const name = span("name", "Choice " + (index + 1));
    const chars = span("chars", "0");
    const finish = span("finish", "");
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy choice " + (index + 1));
    const counted = span("counted", "");  // one flex item: the header's gaps fall between its parts only
    counted.append(chars, " chars ", finish);
    head.append(name, counted, span("spacer", ""), copy);
    const pre = document.createElement("pre");
    const text = document.createTextNode("");
    pre.append(span("prompt", shown), text);
    card.append(head, pre);
    const entry = {text, chars, finish, count: 0, reason: null, shown};
    copy.addEventListener("click", () => copyText(entry.shown + entry.text.data, copy));
    page.cards.push(entry);
    cards.push(card);
  }
  $("choices").replaceChildren(...cards);
}

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function characters(text) {
  let count = 0;
  for (const _ of text) count++;  // code points, as the server counts them (not UTF-16 units)
  return count;
}

function take(choice) {
  const card = page.cards[choice.index];
  if (!card) return;
  const text = choice.text !== undefined ? choice.text : (choice.delta && choice.delta.content) || "";
  if (text) {
    const now = performance.now();
    const count = characters(text);
    if (!page.first) {
      page.first = now;
      page.firstChars = count;
    }
    card.text.appendData(text);
    card.count += count;
    page.chars += count;
    card.chars.textContent = card.count.toLocaleString("en");
    showSpeed(now);
  }
  if (choice.finish_reason) {
    card.reason = choice.finish_reason;
    card.finish.textContent = "· " + choice.finish_reason;
  }
}

// Time to the first character from the request; then the characters after it over the time since it.
function showSpeed(now) {
  $("ttfc").textContent = Math.round(page.first - page.started).toLocaleString("en");
  const since = now - page.first;
  const speed = since >= 20 ? (page.chars - page.firstChars) / since : page.chars / Math.max(now - page.started, 1);
  $("speed").textContent = Math.round(speed * 1000).toLocaleString("en");
  $("count").textContent = page.chars.toLocaleString("en");
}

// Server-sent events: "data: {...}" blocks separated by a blank line, "data: [DONE]" at the end.
function handle(block) {
  const data = block.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
  if (!data || data === "[DONE]") return data === "[DONE]";
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message);
  for (const choice of chunk.choices || []) take(choice);
  return false;
}

async function readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (handle(block)) return;
    }
  }
}

// --- running it ------------------------------------------------------------------------------------

function status(text) {
  $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function busy(running) {
  $("generate").disabled = running;
  $("regenerate").disabled = running || !page.last;
  $("stop").disabled = !running;
  $("choices").setAttribute("aria-busy", String(running));
}

async function run(asked, seed) {
  if (page.controller) return;
  page.last = asked;
  const controller = page.controller = new AbortController();
  Object.assign(page, {started: performance.now(), first: 0, firstChars: 0, chars: 0});
  for (const id of ["ttfc", "speed"]) $(id).textContent = "–";
  $("count").textContent = "0";
  $("used-seed").textContent = seed;
  makeCards(asked.n, asked.shown);
  showError("");
  status("waiting for the first character…");
  busy(true);
  try {
    const response = await fetch(asked.path, {method: "POST", headers: headers(), body: bodyText(asked.body, seed),
                                              signal: controller.signal});
    if (!response.ok) throw await failure(response);
    status("generating…");
    await readEvents(response);
    const reasons = [...new Set(page.cards.map((card) => card.reason).filter(Boolean))];
    status("done (" + (reasons.join(", ") || "ended") + ")");
  } catch (err) {
    if (err.name === "AbortError") {
      status("stopped");
    } else {
      status("failed");
      showError(err.message);
      if (!page.chars) $("choices").replaceChildren();
    }
  } finally {
    page.controller = null;
    busy(false);
  }
}

function generate() {
  const asked = request();
  run(asked, asked.fixedSeed || drawSeed());
}

function regenerate() {  // the last request's settings; a new seed unless that one was fixed
  if (page.last) run(page.last, page.last.fixedSeed || drawSeed());
}

function stop() {
  if (page.controller) page.controller.abort();
}

// --- copying ---------------------------------------------------------------------------------------

async function copyText(text, button) {
  let copied = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      copied = true;
    }
  } catch (err) {
    copied = false;  // no permission, or the page lost focus: the older way below
  }
  if (!copied) copied = copyBySelection(text);
  button.textContent = copied ? "Copied" : "Copy failed";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function copyBySelection(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch (err) {
    copied = false;
  }
  area.remove();
  return copied;
}

// --- the page's controls -------------------------------------------------------------------------

function setUp() {
  $("max_tokens").value = settings.max_tokens;
  $("max_tokens").max = settings.max_tokens_limit;
  $("n").max = settings.max_n;
  if (settings.needs_key) $("key-label").hidden = false;
  if (window.matchMedia("(max-width: 40rem)").matches) $("settings-panel").open = false;
  $("generate").addEventListener("click", generate);
  $("regenerate").addEventListener("click", regenerate);
  $("stop").addEventListener("click", stop);
  $("model").addEventListener("change", showSelectedModel);
  $("api_key").addEventListener("change", loadModels);
  $("mode").addEventListener("change", () => {
    const chat = $("mode").value === "chat";
    $("prompt-label").textContent = chat ? "Message" : "Prompt";
    $("prompt").placeholder = chat ? "A message for the model to answer, through the server's chat template"
      : "Type a prompt for the model to continue (empty: it starts on its own)";
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!page.controller) generate();
    } else if (event.key === "Escape" && page.controller) {
      stop();
    }
  });
  loadModels();
}

setUp();
