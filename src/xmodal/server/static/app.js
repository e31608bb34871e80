// xmodal search page: plain JS, no external resources (works offline).
const $ = (id) => document.getElementById(id);

async function loadInfo() {
  try {
    const info = await (await fetch("/info")).json();
    $("info").textContent = `${info.items} items · model ${info.model} · engine ${info.engine}`;
    if (!info.rerank) { $("rerank").disabled = true; $("rerank-label").title = "start the server with --rerank MODEL"; }
  } catch (e) { $("info").textContent = "server not reachable"; }
}

function card(hit, rank) {
  const div = document.createElement("div");
  div.className = "card";
  const img = document.createElement("img");
  img.src = hit.thumbnail; img.alt = hit.id; img.loading = "lazy";
  const score = document.createElement("div");
  score.className = "score"; score.textContent = `#${rank} · ${hit.score.toFixed(3)}`;
  const id = document.createElement("div");
  id.className = "id"; id.textContent = hit.id;
  const link = document.createElement("a");
  link.href = hit.url; link.target = "_blank"; link.appendChild(img);
  div.append(link, score, id);
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
  form.append("rerank", $("rerank").checked ? "true" : "false");
  $("status").textContent = "searching…";
  const t0 = performance.now();
  try {
    const resp = await fetch("/search", { method: "POST", body: form });
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
