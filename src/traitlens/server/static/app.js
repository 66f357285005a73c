// traitlens serve: the page. Plain JS, no build step; talks to the JSON API only.
// Server text is always inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_COMPARE = 2;
const state = { info: null, file: null, seq: 0, concepts: [], examples: [], compare: [] };

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.appendChild(child);
  return node;
}

function option(value, label) {
  return el("option", { value: String(value), text: label });
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function readError(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return `${response.status}: ${body.detail}`;
    if (Array.isArray(body.detail)) {
      return `${response.status}: ` + body.detail.map((d) => `${(d.loc || []).join(".")} ${d.msg}`).join("; ");
    }
  } catch (_err) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

// -- choices: model, methods, targets ------------------------------------------------------------------------------

function currentModel() {
  return state.info.models.find((m) => m.name === $("model").value) || state.info.models[0];
}

function methodInfo(name) {
  return state.info.methods.find((m) => m.name === name);
}

function modelLabel(m) {
  // The served name (never a path) with what it is.
  const classes = m.num_classes === null ? "" : `, ${m.num_classes} classes`;
  return `${m.name} — ${m.architecture}${classes}`;
}

function fillModels() {
  const select = $("model");
  select.replaceChildren(...state.info.models.map((m) => option(m.name, modelLabel(m))));
  select.value = state.info.default_model;
}

function offeredMethods() {
  // Only the methods the server says run on this loaded model (its /api/info entry); for a concept target only
  // those that take concepts. Never a guess here.
  const model = currentModel();
  const concept = $("target-kind").value === "concept";
  return state.info.methods.filter((m) => model.methods.includes(m.name) && (!concept || m.concept));
}

function fillMethods() {
  const model = currentModel();
  const select = $("method");
  const previous = select.value;
  const fits = offeredMethods();
  const names = fits.map((m) => m.name);
  select.replaceChildren(...fits.map((m) => option(m.name, m.name + (m.signed ? " (signed)" : ""))));
  // A method the new model cannot run is never kept: the first request after a switch must run. Otherwise an
  // interpretable model's own maps first, then CDAM, then the first listed.
  if (names.includes(previous)) select.value = previous;
  else if (names.includes("native")) select.value = "native";
  else if (names.includes("cdam")) select.value = "cdam";
  select.disabled = fits.length === 0;
  if (!fits.length) $("method-info").textContent = `no registered method runs on ${model.name}`;
  describeMethod();
  fillCompare();
}

function describeMethod() {
  const method = methodInfo($("method").value);
  if (!method) return;
  const tags = [method.signed ? "signed" : "non-negative", method.class_specific ? "class-specific" : "class-agnostic",
    method.needs_grad ? "gradients" : "no gradients"];
  if (method.concept) tags.push("takes concepts");
  $("method-info").textContent = `${method.summary} — ${tags.join(", ")}. Cost: ${method.cost}.`;
  updateContrast();
}

function fillCompare() {
  // One checkbox per other offered method; the ticked ones that still run are kept.
  const primary = $("method").value;
  const names = offeredMethods().map((m) => m.name).filter((n) => n !== primary);
  const kept = state.compare.filter((c) => c.checked).map((c) => c.value).filter((n) => names.includes(n));
  state.compare = names.map((name) => {
    const box = el("input", { type: "checkbox", value: name, id: `compare-${name}` });
    box.checked = kept.includes(name);
    box.addEventListener("change", () => { limitCompare(); runExplain(); });
    return box;
  });
  $("compare").replaceChildren(...state.compare.map((box) => el("label", { className: "check", for: box.id },
    [box, el("span", { text: box.value })])));
  limitCompare();
}

function limitCompare() {
  const ticked = state.compare.filter((c) => c.checked).length;
  for (const box of state.compare) box.disabled = !box.checked && ticked >= MAX_COMPARE;
}

function comparedMethods() {
  return state.compare.filter((c) => c.checked).map((c) => c.value);
}

function updateContrast() {
  // "Why A, not B" needs a class-specific method; otherwise it is off (the server would refuse it).
  const method = methodInfo($("method").value);
  const ok = Boolean(method && method.class_specific);
  $("contrast").disabled = !ok;
  if (!ok) $("contrast").value = "";
}

function fillTargets() {
  const model = currentModel();
  const classes = (model.class_names || Array.from({ length: model.num_classes || 0 }, (_, i) => `class ${i}`))
    .map((name, i) => option(i, `${i}: ${name}`));
  $("target-class").replaceChildren(...classes.map((o) => o.cloneNode(true)));
  const concepts = state.concepts.filter((c) => c.model === model.name);
  $("target-concept").replaceChildren(...concepts.map((c) => option(`concept:${c.id}`, `${c.name} (${c.n_images} images)`)));
  const contrast = [option("", "— no contrast —"), ...classes];
  if (concepts.length) {
    contrast.push(el("optgroup", { label: "concepts" },
      concepts.map((c) => option(`concept:${c.id}`, c.name))));
  }
  $("contrast").replaceChildren(...contrast);
  // k never above what the new model has (the server refuses topk:3 on a 2-class model).
  const kMax = Math.max(1, Math.min(state.info.limits.max_targets, model.num_classes || 10));
  $("topk").max = String(kMax);
  const k = parseInt($("topk").value, 10);
  if (!(k >= 1)) $("topk").value = "1";
  else if (k > kMax) $("topk").value = String(kMax);
  $("model-info").textContent = `${model.architecture} (${model.family}), ${model.num_classes ?? "?"} classes, ` +
    `input ${model.input_size.join("×")} px`;
  const conceptOption = $("target-kind").querySelector('option[value="concept"]');
  conceptOption.disabled = !state.info.concepts_available || concepts.length === 0;
  if (conceptOption.disabled && $("target-kind").value === "concept") $("target-kind").value = "top1";
  updateTargetKind();
  updateContrast();
}

function updateTargetKind() {
  const kind = $("target-kind").value;
  $("topk").hidden = kind !== "topk";
  $("target-class").hidden = kind !== "class";
  $("target-concept").hidden = kind !== "concept";
}

function targetValue() {
  switch ($("target-kind").value) {
    case "topk": return `topk:${$("topk").value}`;
    case "class": return $("target-class").value;
    case "concept": return $("target-concept").value || "top1";
    default: return "top1";
  }
}

async function loadInfo() {
  const response = await fetch("/api/info");
  if (!response.ok) throw new Error(await readError(response));
  state.info = await response.json();
  state.concepts = state.info.concepts;
  fillModels();
  fillMethods();
  fillTargets();
  $("server-state").textContent = `traitlens ${state.info.version}`;
  $("server-state").classList.add("ok");
  if (!state.info.concepts_available) {
    $("concept-panel").hidden = true;
  }
  loadExamples();
}

// -- images: upload, drop, examples ------------------------------------------------------------------------------

async function loadExamples() {
  const response = await fetch("/api/examples");
  if (!response.ok) return; // examples are a convenience: the page works without them
  state.examples = await response.json();
  $("examples").replaceChildren(...state.examples.map((ex) => {
    const title = ex.label ? `${ex.name}: ${ex.label} (${ex.source})` : `${ex.name} (${ex.source})`;
    const button = el("button", { type: "button", className: "example", title, "data-id": ex.id },
      [el("img", { src: ex.url, alt: ex.name }), el("span", { text: ex.name })]);
    button.addEventListener("click", () => pickExample(ex));
    return button;
  }));
  $("examples-box").hidden = state.examples.length === 0;
}

async function pickExample(ex) {
  const response = await fetch(ex.url);
  if (!response.ok) {
    showError(await readError(response));
    return;
  }
  const blob = await response.blob();
  const ext = (blob.type.split("/")[1] || "png").replace("jpeg", "jpg");
  setFile(new File([blob], `${ex.name}.${ext}`, { type: blob.type }));
}

function setFile(file) {
  if (!file) return;
  state.file = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = file.name;
  $("explain-btn").disabled = false;
  runExplain();
}

// -- rendering ------------------------------------------------------------------------------------------------------

function pct(p) {
  return p === null || p === undefined ? "" : `${(100 * p).toFixed(1)} %`;
}

function fmt(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(2);
  return String(Number(v.toPrecision(3)));
}

function opacity() {
  return Number($("opacity").value) / 100;
}

function colorbar(scale, words) {
  // The bar of one colour scale with its numbers: low end, 0 (where it lies inside), high end.
  const ticks = [scale.lo];
  if (scale.lo < 0 && scale.hi > 0) ticks.push(0);
  if (scale.hi !== scale.lo) ticks.push(scale.hi);
  const span = scale.hi - scale.lo;
  const tickEls = ticks.map((v) => {
    const tick = el("span", { className: "tick", text: fmt(v), "data-value": String(v) });
    tick.style.left = `${span > 0 ? (100 * (v - scale.lo)) / span : 0}%`;
    return tick;
  });
  const children = [el("span", { className: scale.signed ? "bar signed" : "bar sequential" }),
    el("span", { className: "ticks" }, tickEls)];
  if (words) {
    children.push(el("span", { className: "words" }, words.map((w) => el("span", { text: w }))));
  }
  children.push(el("span", { className: "range", text: `values ${fmt(scale.min)} … ${fmt(scale.max)}` }));
  return el("div", { className: "colorbar" }, children);
}

function layered(base, heat, alt, className) {
  const heatImg = el("img", { src: heat, alt, className: "heat" });
  return el("div", { className: `layered ${className || ""}` }, [el("img", { src: base, alt: "", className: "base" }),
    heatImg]);
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function downloadPng(stack, filename) {
  // The overlay as shown: the image, then the map at the slider's opacity, at the images' own size.
  const base = stack.querySelector("img.base");
  const heat = stack.querySelector("img.heat");
  const canvas = el("canvas");
  canvas.width = base.naturalWidth;
  canvas.height = base.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(base, 0, 0);
  ctx.globalAlpha = opacity();
  ctx.drawImage(heat, 0, 0);
  canvas.toBlob((blob) => saveBlob(blob, filename), "image/png");
}

function safeName(text) {
  return String(text).replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^-+|-+$/g, "") || "map";
}

function cell(result, t, k) {
  const caption = t.prob === null ? `concept: ${t.name}` : `${t.name} · ${pct(t.prob)}`;
  const stack = layered(result.image, t.heat, `${result.method} map for ${t.name}`);
  stack.dataset.k = String(k);
  const button = el("button", { type: "button", className: "small png-dl", text: "↓ PNG",
    title: "download this overlay as PNG (at the current opacity)" });
  button.addEventListener("click", () => downloadPng(stack,
    `${safeName(result.model)}_${safeName(result.method)}_${safeName(t.name)}.png`));
  return el("figure", { className: "cell" }, [stack,
    el("figcaption", { text: caption + (t.degenerate ? " (constant map)" : "") }), button]);
}

function column(result) {
  const head = el("div", { className: "col-head" }, [
    el("h3", { text: result.method }),
    el("a", { className: "small npz-dl", href: result.download, download: "", text: "↓ npz",
      title: "the raw maps of this method as .npz (traitlens.explain.Explanation.load reads it)" }),
  ]);
  return el("div", { className: "method-col", "data-method": result.method }, [head,
    colorbar(result.scale, result.signed ? ["against", "for"] : ["low", "high"]),
    ...result.targets.map((t, k) => cell(result, t, k))]);
}

function errorColumn(method, message) {
  return el("div", { className: "method-col failed", "data-method": method }, [
    el("div", { className: "col-head" }, [el("h3", { text: method })]),
    el("p", { className: "error", text: message })]);
}

function clearResult() {
  // Nothing of an earlier result stays on the page (no stale maps under an error).
  $("output").hidden = true;
  for (const id of ["predictions", "maps", "contrast-out", "heads", "heads-bar"]) $(id).replaceChildren();
  $("contrast-panel").hidden = true;
  $("heads-panel").hidden = true;
  $("method-name").textContent = "";
  $("shape").textContent = "";
}

function render(result) {
  $("output").hidden = false;
  $("method-name").textContent = `${result.method} on ${result.model}`;
  $("predictions").replaceChildren(...result.predictions.map((p) => {
    const bar = el("span", { className: "fill" });
    bar.style.width = `${Math.max(1, Math.round(100 * p.prob))}%`;
    return el("li", {}, [
      el("span", { className: "label", text: p.name ?? `class ${p.index}` }),
      el("span", { className: "meter" }, [bar]),
      el("span", { className: "value", text: pct(p.prob) }),
    ]);
  }));
  $("maps").replaceChildren(column(result));

  const contrast = result.contrast;
  $("contrast-panel").hidden = !contrast;
  if (contrast) {
    $("contrast-title").textContent = `Why ${contrast.a}, not ${contrast.b}`;
    const stack = layered(result.image, contrast.heat, `${contrast.a} minus ${contrast.b}`, "contrast");
    const button = el("button", { type: "button", className: "small png-dl", text: "↓ PNG" });
    button.addEventListener("click", () => downloadPng(stack,
      `${safeName(result.method)}_${safeName(contrast.a)}_not_${safeName(contrast.b)}.png`));
    $("contrast-out").replaceChildren(el("figure", { className: "cell" }, [stack,
      el("figcaption", { text: `${contrast.a} − ${contrast.b} (max |Δ| ${fmt(contrast.max_abs)})` }), button]),
    colorbar(contrast.scale, [`for ${contrast.b}`, `for ${contrast.a}`]));
  }

  const withHeads = result.targets.filter((t) => t.head_heat && t.head_heat.length);
  $("heads-panel").hidden = withHeads.length === 0;
  $("heads-method").textContent = withHeads.length ? `(${result.method}; one colour bar for all heads)` : "";
  $("heads-bar").replaceChildren(...(withHeads.length && result.head_scale ? [colorbar(result.head_scale)] : []));
  $("heads").replaceChildren(...withHeads.map((t) => el("div", { className: "head-row" }, [
    el("h3", { text: t.name }),
    el("div", { className: "heads" }, t.head_heat.map((src, r) => el("figure", {}, [
      layered(result.head_image, src, `head ${r}`, "head"), el("figcaption", { text: `head ${r}` })]))),
  ])));

  $("shape").textContent = `maps ${result.map_shape.join("×")} · token grid ${result.patch_map_shape.join("×")}` +
    (result.head_maps_shape ? ` · heads ${result.head_maps_shape.join("×")}` : "") +
    ` · model input ${result.input_size.join("×")} px · ${result.seconds.toFixed(2)} s`;
}

// -- requests -------------------------------------------------------------------------------------------------------

async function requestExplain(method, withContrast) {
  const form = new FormData();
  form.append("image", state.file);
  form.append("model", $("model").value);
  form.append("method", method);
  form.append("target", targetValue());
  if (withContrast && $("contrast").value && !$("contrast").disabled) form.append("contrast", $("contrast").value);
  const response = await fetch("/api/explain", { method: "POST", body: form });
  if (!response.ok) return { ok: false, error: await readError(response) };
  return { ok: true, result: await response.json() };
}

async function runExplain(event) {
  if (event) event.preventDefault();
  if (!state.file || !state.info) return;
  const seq = ++state.seq;
  const methods = [$("method").value, ...comparedMethods()];
  $("status").textContent = "explaining…";
  $("explain-btn").disabled = true;
  try {
    const first = await requestExplain(methods[0], true);
    if (seq !== state.seq) return; // a newer request superseded this one
    if (!first.ok) {
      clearResult();
      showError(first.error);
      $("status").textContent = "";
      return;
    }
    showError("");
    render(first.result);
    // Side by side: the other methods on the same image and target, one after the other (one pool slot each).
    for (const method of methods.slice(1)) {
      $("status").textContent = `explaining… (${method})`;
      const next = await requestExplain(method, false);
      if (seq !== state.seq) return;
      $("maps").appendChild(next.ok ? column(next.result) : errorColumn(method, next.error));
    }
    $("status").textContent = "";
  } catch (err) {
    if (seq === state.seq) {
      clearResult();
      showError(`request failed: ${err}`);
      $("status").textContent = "";
    }
  } finally {
    if (seq === state.seq) $("explain-btn").disabled = !state.file;
  }
}

async function createConcept(event) {
  event.preventDefault();
  const files = $("concept-images").files;
  const name = $("concept-name").value.trim();
  if (!name || !files.length) {
    $("concept-status").textContent = "give a name and at least one image";
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("images", file);
  form.append("name", name);
  form.append("model", $("model").value);
  $("concept-status").textContent = "computing…";
  const response = await fetch("/api/concept", { method: "POST", body: form });
  if (!response.ok) {
    $("concept-status").textContent = await readError(response);
    return;
  }
  const concept = await response.json();
  state.concepts.push(concept);
  $("concept-status").textContent = `concept “${concept.name}” ready (${concept.n_images} images)`;
  fillTargets();
  $("target-kind").value = "concept";
  $("target-concept").value = `concept:${concept.id}`;
  updateTargetKind();
  fillMethods();
}

function setOpacity() {
  $("results").style.setProperty("--heat-opacity", String(opacity()));
  $("opacity-value").textContent = `${$("opacity").value} %`;
}

function wire() {
  $("image").addEventListener("change", () => setFile($("image").files[0]));
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("hover"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("hover"); });
  }
  drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
  $("model").addEventListener("change", () => { fillTargets(); fillMethods(); runExplain(); });
  $("method").addEventListener("change", () => { describeMethod(); fillCompare(); runExplain(); });
  $("target-kind").addEventListener("change", () => { updateTargetKind(); fillMethods(); runExplain(); });
  for (const id of ["topk", "target-class", "target-concept", "contrast"]) {
    $(id).addEventListener("change", () => runExplain());
  }
  $("opacity").addEventListener("input", setOpacity);
  $("explain-form").addEventListener("submit", runExplain);
  $("concept-form").addEventListener("submit", createConcept);
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  loadInfo().catch((err) => {
    showError(`cannot reach the server: ${err.message}`);
    $("server-state").textContent = "offline";
  });
});
