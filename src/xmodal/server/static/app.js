// xmodal search page: plain JS, no external resources (works offline).
const $ = (id) => document.getElementById(id);

// API key (server started with --api-key): asked for once, kept in this browser, sent as X-API-Key.
const apiKey = () => localStorage.getItem("xmodal-api-key") || "";
async function api(url, opts = {}) {
  const headers = new Headers(opts.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  const resp = await fetch(url, { ...opts, headers });
  if (resp.status === 401) $("key-form").hidden = false;
  return resp;
}
// images need the key too, so they are fetched and shown from blob: URLs
async function showImage(img, url) {
  const resp = await api(url);
  if (resp.ok) img.src = URL.createObjectURL(await resp.blob());
}
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("xmodal-api-key", $("api-key").value.trim());
  $("key-form").hidden = true;
  loadInfo();
});

async function loadInfo() {
  try {
    const resp = await api("/info");
    if (resp.status === 401) { $("info").textContent = "this server needs an API key"; return; }
    const info = await resp.json();
    $("info").textContent = `${info.items} items · model ${info.model} · engine ${info.engine}`;
    if (!info.rerank) { $("rerank").disabled = true; $("rerank-label").title = "start the server with --rerank MODEL"; }
    if (!info.lexical) {  // no texts indexed: only dense search is possible
      for (const o of $("mode").options) if (o.value !== "dense") { o.disabled = true; o.title = "index texts with xmodal index --texts"; }
    }
    if (info.kind === "texts") $("query").placeholder = "Search the texts, or choose an image to find matching texts";
  } catch (e) { $("info").textContent = "server not reachable"; }
}

const HIDDEN_FIELDS = new Set(["path", "signature", "text"]);  // shown elsewhere or internal
const MAX_FIELDS = 8;

function show(value) {
  if (Array.isArray(value)) return value.map(show).join(", ");
  if (value !== null && typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function metadataList(meta) {
  // text content only (never innerHTML): metadata comes from users' files
  const dl = document.createElement("dl");
  dl.className = "meta";
  const entries = Object.entries(meta || {}).filter(([k, v]) => !HIDDEN_FIELDS.has(k) && v !== null && v !== "");
  for (const [k, v] of entries.slice(0, MAX_FIELDS)) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = show(v); dd.title = show(v);
    dl.append(dt, dd);
  }
  if (entries.length > MAX_FIELDS) {
    const more = document.createElement("dd"); more.className = "more"; more.textContent = `+${entries.length - MAX_FIELDS} more`;
    dl.append(more);
  }
  return dl;
}

function card(hit, rank) {
  const div = document.createElement("div");
  div.className = "card";
  const score = document.createElement("div");
  score.className = "score"; score.textContent = `#${rank} · ${hit.score.toFixed(3)}`;
  const id = document.createElement("div");
  id.className = "id"; id.textContent = hit.id;
  if (hit.thumbnail) {
    const img = document.createElement("img");
    img.alt = hit.id; showImage(img, hit.thumbnail);
    const link = document.createElement("a");
    link.href = hit.url; link.appendChild(img);
    link.addEventListener("click", async (e) => {  // open the full image (fetched with the key)
      e.preventDefault();
      const resp = await api(hit.url);
      if (resp.ok) window.open(URL.createObjectURL(await resp.blob()), "_blank");
    });
    div.append(link);
  } else {  // a text collection: the hit is its text
    div.classList.add("text-card");
    const text = document.createElement("p");
    text.className = "text"; text.textContent = hit.text || "";
    div.append(text);
  }
  div.append(score, id, metadataList(hit.metadata));
  return div;
}

async function search(event) {
  event.preventDefault();
  $("error").textContent = "";
  const form = new FormData();
  const text = $("query").value.trim();
  const file = $("image").files[0];
  if (!text && !file) { $("error").textContent = "Type a query or choose an image."; return; }
  if (text) form.append("text", text);
  if (file) form.append("image", file);
  form.append("k", $("k").value);
  form.append("mode", $("mode").value);
  const where = $("where").value.trim();
  if (where) form.append("where", where);
  form.append("rerank", $("rerank").checked ? "true" : "false");
  $("status").textContent = "searching…";
  const t0 = performance.now();
  try {
    const resp = await api("/search", { method: "POST", body: form });
    const body = await resp.json();
    if (!resp.ok) { $("error").textContent = body.error || `error ${resp.status}`; $("status").textContent = ""; return; }
    const results = $("results");
    results.replaceChildren(...body.results.map((h, i) => card(h, i + 1)));
    const t = body.timings;
    const parts = Object.entries(t).filter(([k]) => k !== "total").map(([k, v]) => `${k} ${(1000 * v).toFixed(1)} ms`);
    $("status").textContent = `${body.results.length} results (${body.stage}) · server ${(1000 * t.total).toFixed(1)} ms [${parts.join(", ")}] · round trip ${(performance.now() - t0).toFixed(0)} ms`;
  } catch (e) {
    $("error").textContent = `request failed: ${e}`;
    $("status").textContent = "";
  }
}

$("search-form").addEventListener("submit", search);
loadInfo();
