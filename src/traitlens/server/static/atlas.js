// traitlens serve: the atlas page. Browse the classes of an atlas, open a class, open a "why A, not B" pair.
// Every text is set with textContent (class names come from the data); colours through the CSSOM (the CSP
// forbids inline style attributes). The page state lives in the URL hash: #atlas=NAME&class=I&pair=J.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { atlas: null, name: null, cls: null, pair: null };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(v, digits = 3) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %"; }

// White at lift 1, orange above, blue below (log2 scale, saturating at 8×); grey when undefined.
function liftColour(lift) {
  if (lift === null || lift === undefined) return "#eeeeee";
  if (lift <= 0) return "#9ab8e0";
  const t = Math.max(-1, Math.min(1, Math.log2(lift) / 3));
  const end = t > 0 ? [255, 166, 0] : [67, 113, 171];
  const rgb = end.map((e) => Math.round(255 + (e - 255) * Math.abs(t)));
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

async function getJSON(url) {
  const res = await fetch(url);
  let body = null;
  try { body = await res.json(); } catch (err) { body = null; }
  if (!res.ok) throw new Error(`${res.status}: ${body && body.detail ? body.detail : res.statusText}`);
  return body;
}

function showError(err) {
  const box = $("atlas-error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

function linkButton(text, onClick) {
  const b = el("button", text, "link");
  b.type = "button";
  b.addEventListener("click", () => { Promise.resolve(onClick()).catch(showError); });
  return b;
}

function setHash() {
  const parts = [`atlas=${encodeURIComponent(state.name)}`];
  if (state.cls !== null) parts.push(`class=${state.cls}`);
  if (state.pair !== null) parts.push(`pair=${state.pair}`);
  history.replaceState(null, "", "#" + parts.join("&"));
}

function readHash() {
  const out = {};
  for (const kv of location.hash.replace(/^#/, "").split("&")) {
    const [k, v] = kv.split("=");
    if (k) out[k] = decodeURIComponent(v || "");
  }
  return out;
}

function figure(src, caption) {
  const f = el("figure");
  const img = el("img");
  img.src = src;
  img.alt = caption;
  f.append(img, el("figcaption", caption));
  return f;
}

function partTable(table, parts, shares, lift, area, expected, top) {
  const head = table.tHead, body = table.tBodies[0];
  head.replaceChildren();
  body.replaceChildren();
  const hr = el("tr");
  for (const h of ["part", "share of evidence", ...(area ? ["share of area"] : []), "lift"]) hr.append(el("th", h));
  head.append(hr);
  for (const p of [...parts, "background"]) {
    const tr = el("tr", null, p === "background" ? "background" : "");
    const name = el("td", p);
    if (expected && expected.includes(p)) name.classList.add("expected");
    if (p === top) name.classList.add("top");
    tr.append(name, el("td", fmt(shares[p])));
    if (area) tr.append(el("td", fmt(area[p])));
    const lc = el("td", fmt(lift[p], 2));
    lc.style.backgroundColor = liftColour(lift[p]);
    tr.append(lc);
    body.append(tr);
  }
  table.hidden = parts.length === 0;
}

function renderClasses() {
  const at = state.atlas, table = $("atlas-classes");
  const head = ["class", "images", "accuracy", ...(at.parts.length ? ["top part"] : []),
    ...(at.hit_fraction !== null ? ["found"] : []), "most confused with"];
  const hr = el("tr");
  for (const h of head) hr.append(el("th", h));
  table.tHead.replaceChildren(hr);
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const c of at.classes) {
    const tr = el("tr", null, "class-row");
    tr.dataset.index = c.index;
    const name = el("td");
    name.append(linkButton(c.name, () => openClass(c.index)));
    tr.append(name, el("td", c.n), el("td", pct(c.accuracy)));
    if (at.parts.length) {
      const top = el("td", c.top_part || "–");
      top.style.backgroundColor = liftColour(c.top_part ? c.lift[c.top_part] : null);
      tr.append(top);
    }
    if (at.hit_fraction !== null) {
      tr.append(el("td", c.hit === null ? "–" : c.hit ? "yes" : "no", c.hit ? "hit" : "miss"));
    }
    const conf = el("td");
    c.confused.forEach((p, i) => {
      if (i) conf.append(", ");
      conf.append(linkButton(`${p.name} (${p.count})`, () => openPair(c.index, p.other)));
    });
    tr.append(conf);
    body.append(tr);
  }
}

async function loadAtlas(name) {
  state.name = name;
  state.atlas = await getJSON(`/api/atlases/${encodeURIComponent(name)}`);
  const at = state.atlas;
  let text = `${at.model} · ${at.method}: ${at.n_images} images of ${at.n_classes} classes, accuracy ${pct(at.accuracy)}.`;
  if (at.hit_fraction !== null) {
    const n = Math.round(at.hit_fraction * at.n_hit_classes);
    text += ` Top-lift part is a discriminative part for ${n} of ${at.n_hit_classes} classes (${pct(at.hit_fraction)}).`;
  }
  $("atlas-summary").textContent = text;
  renderClasses();
  $("class-panel").hidden = true;
  $("pair-panel").hidden = true;
  state.cls = null;
  state.pair = null;
}

async function openClass(index) {
  const c = await getJSON(`/api/atlases/${encodeURIComponent(state.name)}/classes/${index}`);
  state.cls = index;
  state.pair = null;
  for (const tr of document.querySelectorAll("#atlas-classes tr.class-row")) {
    tr.classList.toggle("selected", Number(tr.dataset.index) === index);
  }
  $("class-title").textContent = c.name;
  let info = `${c.n_correct} of ${c.n} images classified correctly (${pct(c.accuracy)}).`;
  if (c.expected) info += ` Discriminative parts: ${c.expected.join(", ") || "none"}; top part ${c.top_part || "–"}`
    + (c.hit === null ? "." : c.hit ? ": found." : ": not found.");
  $("class-info").textContent = info;
  partTable($("class-parts"), c.parts, c.shares, c.lift, c.area, c.expected, c.top_part);
  const cards = $("class-exemplars");
  cards.replaceChildren();
  for (const e of c.exemplars) {
    const card = el("div", null, "cards exemplar");
    card.append(figure(e.image, e.name), figure(e.map, `${c.method}: ${c.name}`));
    e.heads.forEach((h, k) => card.append(figure(h.image, `#${k + 1}: head ${h.head}`)));
    cards.append(card);
  }
  if (!c.exemplars.length) cards.append(el("p", "No correctly classified image."));
  const pairs = $("class-pairs");
  pairs.replaceChildren();
  for (const p of c.pairs) {
    const li = el("li");
    li.append(linkButton(`Why ${c.name}, not ${p.name}`, () => openPair(c.index, p.other)),
      ` — predicted as ${p.name} ${p.count} times (${pct(p.rate)})`);
    pairs.append(li);
  }
  $("class-panel").hidden = false;
  $("pair-panel").hidden = true;
  setHash();
}

async function openPair(a, b) {
  if (state.cls !== a) await openClass(a);
  const p = await getJSON(`/api/atlases/${encodeURIComponent(state.name)}/pairs/${a}/${b}`);
  state.pair = b;
  $("pair-title").textContent = `Why ${p.a_name}, not ${p.b_name}`;
  let info = `${p.count} of ${p.n} images of ${p.a_name} predicted as ${p.b_name}; mean probability ${fmt(p.mean_prob)}.`;
  if (!p.contrast) info += " The method is not class-specific: no contrast maps.";
  else if (p.parts.length) info += ` Share of the positive contrast per part over ${p.n_contrast} images.`;
  if (p.expected) info += ` Parts where the classes differ: ${p.expected.join(", ") || "none"}.`;
  $("pair-info").textContent = info;
  partTable($("pair-parts"), p.contrast ? p.parts : [], p.shares, p.lift, null, p.expected, p.top_part);
  const maps = $("pair-maps");
  maps.replaceChildren(...p.maps.map((m) => figure(m.image, `${m.name}: ${p.a_name} − ${p.b_name}`)));
  $("pair-panel").hidden = false;
  setHash();
}

async function start() {
  try {
    const list = await getJSON("/api/atlases");
    $("atlas-state").textContent = `${list.length} atlas${list.length === 1 ? "" : "es"}`;
    $("atlas-state").classList.add("ok");
    if (!list.length) {
      showError("No atlas is served: make one with `traitlens atlas --out DIR`, then `traitlens serve --atlas DIR`.");
      return;
    }
    const select = $("atlas-select");
    for (const a of list) select.append(new Option(`${a.name} (${a.model}, ${a.method})`, a.name));
    select.addEventListener("change", () => loadAtlas(select.value).then(setHash).catch(showError));
    const want = readHash();
    const name = list.some((a) => a.name === want.atlas) ? want.atlas : list[0].name;
    select.value = name;
    await loadAtlas(name);
    if (want.class !== undefined && want.atlas === name) {
      if (want.pair !== undefined) await openPair(Number(want.class), Number(want.pair));
      else await openClass(Number(want.class));
    } else {
      setHash();
    }
  } catch (err) {
    showError(err);
  }
}

document.addEventListener("DOMContentLoaded", () => { start(); });
