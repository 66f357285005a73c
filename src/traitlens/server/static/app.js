// traitlens serve: the page. Plain JS, no build step; talks to the JSON API only.
// Server text is always inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, file: null, seq: 0, concepts: [] };

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

function currentModel() {
  return state.info.models.find((m) => m.name === $("model").value) || state.info.models[0];
}

function fillModels() {
  const select = $("model");
  select.replaceChildren(...state.info.models.map((m) => option(m.name, m.name)));
  select.value = state.info.default_model;
}

function fillMethods() {
  // Only the methods the server says run on this loaded model (its /api/info entry); never a guess here.
  const model = currentModel();
  const select = $("method");
  const previous = select.value;
  const fits = state.info.methods.filter((m) => model.methods.includes(m.name));
  select.replaceChildren(...fits.map((m) => option(m.name, m.name + (m.signed ? " (signed)" : ""))));
  if (model.methods.includes(previous)) select.value = previous;
  else if (model.methods.includes("cdam")) select.value = "cdam";
  select.disabled = fits.length === 0;
  if (!fits.length) $("method-info").textContent = `no registered method runs on ${model.name}`;
  describeMethod();
}

function describeMethod() {
  const method = state.info.methods.find((m) => m.name === $("method").value);
  if (!method) return;
  const tags = [method.signed ? "signed" : "non-negative", method.class_specific ? "class-specific" : "class-agnostic",
    method.needs_grad ? "gradients" : "no gradients"];
  if (method.concept) tags.push("takes concepts");
  $("method-info").textContent = `${method.summary} — ${tags.join(", ")}. Cost: ${method.cost}.`;
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
  $("topk").max = String(Math.min(state.info.limits.max_targets, model.num_classes || 10));
  $("model-info").textContent = `${model.family}, ${model.num_classes ?? "?"} classes, input ` +
    `${model.input_size.join("×")} px`;
  const conceptOption = $("target-kind").querySelector('option[value="concept"]');
  conceptOption.disabled = !state.info.concepts_available || concepts.length === 0;
  updateTargetKind();
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

function figure(src, caption, className) {
  const img = el("img", { src, alt: caption, className });
  return el("figure", {}, [img, el("figcaption", { text: caption })]);
}

function pct(p) {
  return p === null || p === undefined ? "" : `${(100 * p).toFixed(1)} %`;
}

function renderLegend(signed) {
  const ticks = signed ? ["against", "0", "for"] : ["low", "", "high"];
  $("legend").replaceChildren(
    el("span", { className: signed ? "bar signed" : "bar sequential" }),
    el("span", { className: "ticks" }, ticks.map((t) => el("span", { text: t }))));
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
  $("overlays").replaceChildren(...result.targets.map((t, k) => {
    const caption = t.prob === null ? `concept: ${t.name}` : `${t.name} · ${pct(t.prob)}`;
    const fig = figure(t.overlay, caption + (t.degenerate ? " (constant map)" : ""), "overlay");
    fig.firstChild.dataset.k = String(k);
    return fig;
  }));
  renderLegend(result.signed);

  const contrast = result.contrast;
  $("contrast-panel").hidden = !contrast;
  if (contrast) {
    $("contrast-title").textContent = `Why ${contrast.a}, not ${contrast.b}`;
    $("contrast-out").replaceChildren(
      figure(contrast.overlay, `${contrast.a} − ${contrast.b} (max |Δ| ${contrast.max_abs.toPrecision(3)})`,
        "contrast"));
  }

  const withHeads = result.targets.filter((t) => t.heads && t.heads.length);
  $("heads-panel").hidden = withHeads.length === 0;
  $("heads").replaceChildren(...withHeads.map((t) => el("div", { className: "head-row" }, [
    el("h3", { text: t.name }),
    el("div", { className: "heads" }, t.heads.map((src, r) => figure(src, `head ${r}`, "head"))),
  ])));

  $("shape").textContent = `maps ${result.map_shape.join("×")} · token grid ${result.patch_map_shape.join("×")}` +
    (result.head_maps_shape ? ` · heads ${result.head_maps_shape.join("×")}` : "") +
    ` · model input ${result.input_size.join("×")} px · ${result.seconds.toFixed(2)} s`;
}

async function runExplain(event) {
  if (event) event.preventDefault();
  if (!state.file || !state.info) return;
  const seq = ++state.seq;
  const form = new FormData();
  form.append("image", state.file);
  form.append("model", $("model").value);
  form.append("method", $("method").value);
  form.append("target", targetValue());
  if ($("contrast").value) form.append("contrast", $("contrast").value);
  $("status").textContent = "explaining…";
  $("explain-btn").disabled = true;
  try {
    const response = await fetch("/api/explain", { method: "POST", body: form });
    if (seq !== state.seq) return; // a newer request superseded this one
    if (!response.ok) {
      showError(await readError(response));
      $("status").textContent = "";
      return;
    }
    const result = await response.json();
    showError("");
    render(result);
    $("status").textContent = "";
  } catch (err) {
    if (seq === state.seq) showError(`request failed: ${err}`);
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
  $("model").addEventListener("change", () => { fillMethods(); fillTargets(); runExplain(); });
  $("method").addEventListener("change", () => { describeMethod(); runExplain(); });
  $("target-kind").addEventListener("change", () => { updateTargetKind(); runExplain(); });
  for (const id of ["topk", "target-class", "target-concept", "contrast"]) {
    $(id).addEventListener("change", () => runExplain());
  }
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
