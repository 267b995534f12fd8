// The search page. Everything the server sends (titles, queries, rewrites, errors) is written with
// textContent or as attribute values, never as HTML: a hostile product title or query stays text.
// The page's Content-Security-Policy allows scripts from this service only, as a second guard.
"use strict";
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function filters() {
  const f = {};
  if ($("category").value) f.category = $("category").value;
  if ($("colour").value) f.attributes = {colour: $("colour").value};
  if ($("price_max").value) f.price_max = Number($("price_max").value);
  return f;
}

// Only this service's own photo URLs are used as image sources.
function photoUrl(value) {
  return typeof value === "string" && /^\/products\/[^/]+\/image$/.test(value) ? value : null;
}

// What the shopper does with a result goes back to the service (POST /events), tied to the search
// that showed it: the stream job turns it into the product's online features.
let shown = {searchId: null};

function send(type, productId, position) {
  if (!shown.searchId) return;
  const event = {event_id: crypto.randomUUID(), type, search_id: shown.searchId, product_id: productId,
                 position, ts: new Date().toISOString()};
  // keepalive: the event is still sent when the click navigates away (the "similar products" link).
  fetch("/events", {method: "POST", headers: {"content-type": "application/json"}, keepalive: true,
                    body: JSON.stringify({events: [event]})}).catch(() => {});
}

function card(item, index) {
  const div = el("div", {class: "card"});
  div.dataset.productId = String(item.product_id);
  const position = index + 1;
  div.addEventListener("click", (e) => {
    if (!e.target.classList.contains("cart")) send("click", String(item.product_id), position);
  });
  const src = photoUrl(item.image);
  div.append(src ? el("img", {src, alt: ""}) : el("div", {class: "noimg", text: "no photo"}));
  div.append(el("h3", {text: String(item.title || item.product_id)}));
  const scores = el("div", {class: "scores"});
  const entries = Object.entries(item.scores || (item.score !== undefined ? {score: item.score} : {}));
  entries.forEach(([name, value], i) => {
    if (i) scores.append(el("br"));
    scores.append(document.createTextNode(`${name} ${Number(value).toFixed(3)}`));
  });
  div.append(scores);
  const link = el("a", {class: "similar", text: "similar products"});
  link.href = `?similar=${encodeURIComponent(item.product_id)}`;
  div.append(link);
  const cart = el("button", {class: "cart", type: "button", text: "add to cart"});
  cart.addEventListener("click", () => send("add_to_cart", String(item.product_id), position));
  div.append(cart);
  return div;
}

function show(items, ...meta) {
  $("grid").replaceChildren(...items.map(card));
  $("meta").replaceChildren(...meta);
  document.body.dataset.results = String(items.length);
}

async function call(url, init) {
  const response = await fetch(url, init);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function failed(error) {
  show([], el("span", {class: "error", text: `Error: ${error.message}`}));
}

async function search() {
  const text = $("q").value.trim();
  const photo = $("photo").files[0];
  let init;
  if (photo) {
    const form = new FormData();
    if (text) form.append("text", text);
    form.append("image", photo);
    form.append("filters", JSON.stringify(filters()));
    form.append("k", "24");
    init = {method: "POST", body: form};
  } else {
    init = {method: "POST", headers: {"content-type": "application/json"},
            body: JSON.stringify({text, filters: filters(), k: 24})};
  }
  try {
    const r = await call("/search", init);
    shown = {searchId: r.search_id};
    const stages = r.stages.map((s) => `${s.name} ${Number(s.ms).toFixed(1)} ms`).join(" · ");
    const rewrites = r.rewrites.length
      ? ` · rewrites: ${r.rewrites.map((w) => String(w.to || w.kind)).join(", ")}` : "";
    show(r.items,
      `${r.items.length} results for `, el("b", {text: r.query || "(photo)"}),
      ` in ${Number(r.total_ms).toFixed(1)} ms (${stages})${rewrites} · variant ${r.variant} · index ${r.versions.index}`,
      ...r.fallbacks.map((f) => el("span", {class: "flag", text: String(f)})));
  } catch (e) { failed(e); }
}

async function similar(id) {
  try {
    const r = await call("/recommend/similar", {method: "POST", headers: {"content-type": "application/json"},
                                                body: JSON.stringify({product_id: id, k: 24})});
    shown = {searchId: r.search_id};
    show(r.items, "Products similar to ", el("b", {text: id}));
  } catch (e) { failed(e); }
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
const params = new URLSearchParams(location.search);
if (params.get("similar")) similar(params.get("similar"));
else if (params.get("q")) { $("q").value = params.get("q"); search(); }
