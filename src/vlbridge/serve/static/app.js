// vlbridge serve: the page's behaviour. Talks only to this server's /v1 routes (no other requests).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, ready: false, models: {}, hasIndex: false, exampleShots: 0 };

function apiKey() { return localStorage.getItem("vlbridge-api-key") || ""; }

async function call(path, body) {
  const headers = { "content-type": "application/json" };
  if (apiKey()) headers.authorization = "Bearer " + apiKey();
  const response = await fetch(path, { method: body ? "POST" : "GET", headers, body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) {
    if (response.status === 401) $("key-box").hidden = false;
    throw new Error((data && data.error && data.error.message) || `HTTP ${response.status}`);
  }
  return data;
}

async function imageBlobUrl(path) {
  const headers = apiKey() ? { authorization: "Bearer " + apiKey() } : {};
  const response = await fetch(path, { headers });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

function show(id, text, kind) {
  const box = $(id);
  box.className = "output " + (kind || "text");
  box.textContent = text;
}

async function busy(button, work) {
  button.classList.add("busy");
  button.disabled = true;
  try { await work(); } finally { button.classList.remove("busy"); refreshButtons(); }
}

function refreshButtons() {
  const limber = state.ready && "limber" in state.models;
  const clip = state.ready && "clip" in state.models;
  $("caption-btn").disabled = !(limber && state.image);
  $("ask-btn").disabled = !(limber && state.image);
  $("classify-btn").disabled = !(clip && state.image);
  $("similar-btn").disabled = !(state.hasIndex && state.image);
  $("search-btn").disabled = !state.hasIndex;
}

// ------------------------------------------------------------------ status
async function checkReady(attempt = 0) {
  const status = $("status");
  try {
    const info = await call("/readyz");
    state.ready = true;
    state.models = info.models || {};
    state.hasIndex = Boolean(info.index);
    offerShots(info.example_shots || 0);
    const names = Object.values(state.models).join(" · ");
    status.textContent = "ready · " + names + (info.index ? ` · ${info.index.images} images (${info.index.kind})` : "");
    status.className = "status status-ok";
    if (!state.hasIndex) $("search-info").textContent = "no search index on this server (start it with --index)";
  } catch (err) {
    status.textContent = /loading/.test(err.message) ? "loading models…" : "not ready: " + err.message;
    status.className = /loading/.test(err.message) ? "status status-wait" : "status status-bad";
    if (attempt < 600) setTimeout(() => checkReady(attempt + 1), 1000);
  }
  refreshButtons();
}

// ------------------------------------------------------------------ image input
function markSmall(img) {  // tiny images (icons, 28-64 px datasets) are scaled up without blurring
  img.addEventListener("load", () => img.classList.toggle("small", img.naturalWidth < 128));
}
markSmall($("preview"));

function takeFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    $("file-name").textContent = `${file.name} is not an image`;
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;  // a data URL: sent as is, never a remote URL
    $("preview").src = state.image;
    $("preview").hidden = false;
    $("drop-text").hidden = true;
    $("file-name").textContent = "";
    refreshButtons();
  };
  reader.readAsDataURL(file);
}

$("file").addEventListener("change", (event) => takeFile(event.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (event) => takeFile(event.dataTransfer.files[0]));

// ------------------------------------------------------------------ caption, classify, ask
$("caption-btn").addEventListener("click", () => busy($("caption-btn"), async () => {
  try {
    const tokens = parseInt($("caption-tokens").value, 10) || 30;
    const data = await call("/v1/caption", { image: state.image, max_new_tokens: tokens });
    show("caption-out", data.captions[0] || "(empty caption)");
  } catch (err) { show("caption-out", err.message, "error"); }
}));

$("classify-btn").addEventListener("click", () => busy($("classify-btn"), async () => {
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  const templates = $("templates").value.split("\n").map((s) => s.trim()).filter(Boolean);
  try {
    const data = await call("/v1/classify", { image: state.image, labels, templates });
    const box = $("classify-out");
    box.className = "output";
    box.replaceChildren(...data.labels.map(({ label, score }) => {
      const row = document.createElement("div");
      row.className = "bar-row label-row";
      const name = document.createElement("span"); name.className = "name"; name.textContent = label; name.title = label;
      const track = document.createElement("span"); track.className = "track";
      const fill = document.createElement("span"); fill.className = "fill"; fill.style.width = (100 * score).toFixed(1) + "%";
      track.append(fill);
      const pct = document.createElement("span"); pct.className = "pct"; pct.textContent = (100 * score).toFixed(1) + "%";
      row.append(name, track, pct);
      return row;
    }));
  } catch (err) { show("classify-out", err.message, "error"); }
}));

// The server's solved example questions (the demo has some): 0..N of them go before the question.
function offerShots(count) {
  if (count === state.exampleShots) return;
  state.exampleShots = count;
  const select = $("shots");
  select.replaceChildren(...Array.from({ length: count + 1 }, (_, n) => new Option(String(n), String(n))));
  select.value = String(count);
  $("shots-box").hidden = count === 0;
}

function ask() {
  const question = $("question").value.trim();
  if (!question) { show("answer-out", "Type a question first.", "error"); return; }
  busy($("ask-btn"), async () => {
    try {
      const body = { image: state.image, question };
      if (state.exampleShots) body.shots = Number($("shots").value);
      const data = await call("/v1/vqa", body);
      const hint = data.shots ? "" : " — the model stopped at once; with example questions it answers more often";
      show("answer-out", data.answer || "(empty answer" + hint + ")", data.answer ? "text" : "text quiet");
    } catch (err) { show("answer-out", err.message, "error"); }
  });
}
$("ask-btn").addEventListener("click", ask);
$("question").addEventListener("keydown", (event) => { if (event.key === "Enter" && !$("ask-btn").disabled) ask(); });

// ------------------------------------------------------------------ search
async function runSearch(body, button) {
  await busy(button, async () => {
    const grid = $("results");
    try {
      const started = performance.now();
      const data = await call("/v1/search", { ...body, k: parseInt($("search-k").value, 10) });
      const ms = Math.round(performance.now() - started);
      $("search-info").textContent = `${data.results.length} results in ${ms} ms (${data.index_kind} search)`;
      grid.replaceChildren(...data.results.map(resultCard));
      if (!data.results.length) grid.innerHTML = '<div class="empty">No images in the index.</div>';
    } catch (err) {
      grid.innerHTML = "";
      const empty = document.createElement("div"); empty.className = "empty"; empty.textContent = err.message;
      grid.append(empty);
    }
  });
}

function resultCard(hit) {
  const card = document.createElement("figure");
  card.className = "result";
  card.style.margin = "0";
  const link = document.createElement("a");
  link.title = hit.caption;
  const img = document.createElement("img");
  img.alt = hit.caption;
  img.loading = "lazy";
  markSmall(img);
  imageBlobUrl(hit.thumbnail_url).then((url) => { img.src = url; }).catch(() => { img.alt = "(image unavailable)"; });
  link.addEventListener("click", () => imageBlobUrl(hit.image_url).then((url) => window.open(url, "_blank")));
  link.append(img);
  const meta = document.createElement("figcaption");
  meta.className = "meta";
  const score = document.createElement("div"); score.className = "score"; score.textContent = hit.score.toFixed(3);
  const caption = document.createElement("div"); caption.className = "caption"; caption.textContent = hit.caption || "(no caption)";
  meta.append(score, caption);
  card.append(link, meta);
  return card;
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("search-q").value.trim();
  if (!query) { $("search-info").textContent = "Type what you are looking for."; return; }
  runSearch({ query }, $("search-btn"));
});
$("similar-btn").addEventListener("click", () => runSearch({ image: state.image }, $("similar-btn")));

// ------------------------------------------------------------------ API key
$("key-btn").addEventListener("click", () => { $("key-box").hidden = !$("key-box").hidden; $("api-key").value = apiKey(); });
$("key-save").addEventListener("click", () => {
  localStorage.setItem("vlbridge-api-key", $("api-key").value.trim());
  $("key-box").hidden = true;
  checkReady();
});

checkReady();
