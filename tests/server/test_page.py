"""The page's script (static/app.js) under Node with a minimal DOM: the methods it offers come from the server.

Skipped where no `node` binary is installed; the full browser test is test_browser.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from traitlens.server.routes import static_dir

from .helpers import TinyConv

NODE = shutil.which("node") or shutil.which("nodejs")

# A DOM just large enough for app.js: elements by id, <select> value rules, events, fetch of /api/info.
HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const [script, infoFile] = process.argv.slice(2);
const info = JSON.parse(fs.readFileSync(infoFile, "utf8"));
class El {
  constructor(tag) { this.tagName = tag.toUpperCase(); this.children = []; this.attrs = {}; this.textContent = "";
    this.hidden = false; this.disabled = false; this.dataset = {}; this.style = {}; this.listeners = {};
    this._value = undefined; this.classList = { add() {}, remove() {} }; }
  setAttribute(k, v) { this.attrs[k] = String(v); if (k === "value") this._value = String(v); }
  appendChild(c) { this.children.push(c); return c; }
  replaceChildren(...cs) { this.children = cs; if (this.tagName === "SELECT") this._value = undefined; }
  get firstChild() { return this.children[0]; }
  cloneNode() { const n = new El(this.tagName); Object.assign(n.attrs, this.attrs); n._value = this._value;
    n.textContent = this.textContent; n.children = this.children.map((c) => c.cloneNode()); return n; }
  options() { const out = []; const walk = (n) => { for (const c of n.children) {
    if (c.tagName === "OPTION") out.push(c); walk(c); } }; walk(this); return out; }
  get value() {
    if (this.tagName !== "SELECT") return this._value ?? "";
    const opts = this.options();
    if (this._value === undefined) return opts.length ? opts[0].value : "";
    return opts.some((o) => o.value === this._value) ? this._value : "";
  }
  set value(v) { this._value = String(v); }
  querySelector(sel) {
    const want = sel.match(/value="(.*)"/)[1];
    return this.options().find((o) => o.value === want) || null;
  }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  fire(type) { for (const fn of this.listeners[type] || []) fn({ preventDefault() {} }); }
}
const byId = {};
const SELECTS = ["model", "method", "target-kind", "target-class", "target-concept", "contrast"];
const docListeners = {};
const document = {
  getElementById(id) { return byId[id] ||= new El(SELECTS.includes(id) ? "select" : "div"); },
  createElement(tag) { return new El(tag); },
  addEventListener(type, fn) { docListeners[type] = fn; },
};
for (const kind of ["top1", "topk", "class", "concept"]) {
  const o = new El("option"); o.setAttribute("value", kind); document.getElementById("target-kind").appendChild(o);
}
const fetch = async (url) => ({ ok: url === "/api/info", json: async () => info, status: 200, statusText: "OK" });
const ctx = vm.createContext({ document, fetch, console, URL: { createObjectURL() { return "blob:x"; } } });
vm.runInContext(fs.readFileSync(script, "utf8"), ctx);
docListeners.DOMContentLoaded();
const seen = [];
const snap = () => {
  const m = byId.method;
  seen.push({ model: byId.model.value, offered: m.options().map((o) => o.value), selected: m.value,
    disabled: m.disabled });
};
setTimeout(() => {
  snap();
  for (const arg of process.argv.slice(4)) {
    if (arg.startsWith("method=")) { byId.method.value = arg.slice(7); byId.method.fire("change"); continue; }
    byId.model.value = arg; byId.model.fire("change"); snap();
  }
  console.log(JSON.stringify(seen));
}, 50);
"""



@pytest.mark.skipif(NODE is None, reason="no node binary to run the page's script")
def test_switching_models_offers_the_methods_the_server_lists_for_that_model(make_client, micro_model, tmp_path):
    from traitlens.backbones import create_preset
    from traitlens.models import PromptCAM

    promptcam = PromptCAM(create_preset("traitlens-vit-micro", 0), 3).eval()
    client = make_client(models={"micro": micro_model, "conv": TinyConv(), "pc": promptcam})
    info = client.get("/api/info").json()
    listed = {m["name"]: m["methods"] for m in info["models"]}
    assert listed["micro"] != listed["conv"]
    info_file = tmp_path / "info.json"
    info_file.write_text(json.dumps(info))
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    out = subprocess.run([NODE, str(harness), str(static_dir() / "app.js"), str(info_file), "conv", "micro",
                          "method=raw_attention", "pc"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    first, on_conv, back, on_pc = json.loads(out.stdout)
    assert first["model"] == "micro" and first["offered"] == listed["micro"] and first["selected"] == "cdam"
    # After the switch only the conv model's own methods are offered (no "other families" to pick from).
    assert on_conv["model"] == "conv" and on_conv["offered"] == listed["conv"]
    assert on_conv["selected"] in listed["conv"] and not on_conv["disabled"]
    # Back: the choice is kept when the model runs it (gradcam runs on both), else the default.
    kept = on_conv["selected"] if on_conv["selected"] in listed["micro"] else "cdam"
    assert back["offered"] == listed["micro"] and back["selected"] == kept
    # To an interpretable model that cannot run raw attention: its own native maps, not a post-hoc method.
    assert "raw_attention" not in listed["pc"] and on_pc["selected"] == "native"
    assert on_pc["offered"] == listed["pc"] and "native" in listed["pc"]
