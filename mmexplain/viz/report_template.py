"""The stylesheet and script of the HTML report (:mod:`mmexplain.viz.report`).

Everything the page needs is here: no network request, no CDN, no web font. The script
reads the report's JSON (``<script type="application/json" class="mmx-data">``), builds
the page with ``createElement`` / ``textContent`` only (user text never goes through
``innerHTML``), decodes each section's uint8 maps from base64 and draws them with a jet
colour map over the image on a ``<canvas>``.

State is exposed on each canvas for tests and scripts: ``data-section``, ``data-ready``
(the image has loaded and the first map is drawn), ``data-method``, ``data-word-index`` /
``data-word`` (caption sections), ``data-answer-index`` / ``data-answer`` /
``data-counterfactual`` (answer sections) and ``data-opacity``.
"""

from __future__ import annotations

__all__ = ["CSS", "SCRIPT"]

CSS = """
.mmx-page { margin: 0; background: #eef1f6; }
.mmx-report { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1d2330; max-width: 1120px; margin: 0 auto; padding: 12px 18px 24px; box-sizing: border-box; }
.mmx-report *, .mmx-report *::before, .mmx-report *::after { box-sizing: border-box; }
.mmx-report h1.mmx-title { font-size: 22px; font-weight: 650; margin: 8px 0 4px; }
.mmx-report .mmx-lead { color: #56607a; font-size: 13px; margin: 0 0 10px; }
.mmx-section { display: flex; flex-wrap: wrap; gap: 22px; align-items: flex-start; background: #fff;
  border: 1px solid #d9dee8; border-radius: 10px; padding: 18px 20px; margin: 14px 0; outline: none; }
.mmx-section:focus-visible { box-shadow: 0 0 0 3px #9db4f0; }
.mmx-figure { display: flex; flex-direction: column; gap: 10px; flex: 0 0 auto; }
.mmx-stage { display: flex; gap: 8px; align-items: stretch; }
.mmx-canvas { display: block; border-radius: 6px; background: #20242c; }
.mmx-cbar { display: flex; gap: 4px; }
.mmx-cbar canvas { display: block; width: 14px; border-radius: 3px; border: 1px solid #c5ccd8; }
.mmx-ticks { position: relative; width: 30px; font-size: 11px; color: #56607a; }
.mmx-ticks span { position: absolute; left: 0; transform: translateY(-50%); white-space: nowrap; }
.mmx-controls { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 14px; font-size: 13px; color: #3b4457; }
.mmx-controls label { display: flex; align-items: center; gap: 8px; }
.mmx-controls input[type=range] { width: 150px; }
.mmx-panel { flex: 1 1 320px; min-width: 280px; display: flex; flex-direction: column; gap: 14px; }
.mmx-kicker { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: #6b7590; margin: 0; }
.mmx-heading { font-size: 19px; font-weight: 600; margin: 2px 0 0; overflow-wrap: anywhere; }
.mmx-words, .mmx-answers, .mmx-toggle { display: flex; flex-wrap: wrap; gap: 6px; }
.mmx-chip { font: inherit; font-size: 17px; color: #1d2330; background: #f5f7fb; border: 1px solid #ccd3df;
  border-radius: 7px; padding: 5px 9px 4px; cursor: pointer; display: inline-flex; flex-direction: column;
  align-items: stretch; gap: 3px; line-height: 1.15; min-width: 44px; text-align: center; }
.mmx-chip:hover, .mmx-chip.mmx-preview { border-color: #2f5bd3; background: #e9efff; }
.mmx-chip small { font-size: 11px; color: #5d6780; }
.mmx-chip .mmx-bar { height: 3px; border-radius: 2px; background: #dde2ec; overflow: hidden; }
.mmx-chip .mmx-bar i { display: block; height: 100%; background: #2f5bd3; }
.mmx-chip.mmx-selected { background: #2f5bd3; border-color: #2f5bd3; color: #fff; }
.mmx-chip.mmx-selected small { color: #e3e9ff; }
.mmx-chip.mmx-selected .mmx-bar { background: rgba(255, 255, 255, .35); }
.mmx-chip.mmx-selected .mmx-bar i { background: #fff; }
.mmx-chip.mmx-whole { font-style: italic; }
.mmx-chip.mmx-small { font-size: 13px; padding: 4px 10px; }
.mmx-info { border-left: 4px solid #2f5bd3; background: #f5f7fb; border-radius: 0 8px 8px 0; padding: 10px 14px; }
.mmx-info .mmx-name { font-size: 20px; font-weight: 650; overflow-wrap: anywhere; }
.mmx-info .mmx-prob { font-size: 14px; color: #3b4457; margin-top: 2px; }
.mmx-info .mmx-desc { font-size: 13.5px; color: #2a3142; margin: 8px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.mmx-info .mmx-note { font-size: 12.5px; color: #6b7590; margin: 6px 0 0; }
.mmx-question { font-size: 17px; line-height: 1.9; overflow-wrap: anywhere; }
.mmx-question .mmx-q { font-weight: 650; margin-right: 6px; }
.mmx-token { padding: 2px 5px; border-radius: 4px; margin-right: 2px; }
.mmx-legend { font-size: 12px; color: #56607a; display: flex; gap: 12px; flex-wrap: wrap; align-items: center; }
.mmx-legend span { display: inline-flex; align-items: center; gap: 5px; }
.mmx-legend i { display: inline-block; width: 14px; height: 10px; border-radius: 2px; }
.mmx-row { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
.mmx-label { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: #6b7590; }
.mmx-hint { font-size: 12px; color: #6b7590; margin: 0; }
.mmx-static .mmx-panel { flex: 1 1 100%; }
.mmx-text, .mmx-list { font-size: 14px; line-height: 1.5; color: #2a3142; margin: 0; }
.mmx-list { padding-left: 20px; }
.mmx-plot { display: block; max-width: 100%; height: auto; border-radius: 6px; }
.mmx-hint kbd { font: inherit; border: 1px solid #ccd3df; border-bottom-width: 2px; border-radius: 4px; padding: 0 4px; background: #fff; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var RID = __RID__;
  var me = document.currentScript, root = null;
  if (me && me.parentNode && me.parentNode.getAttribute && me.parentNode.getAttribute("data-mmx-root") === RID) {
    root = me.parentNode;
  } else {
    var all = document.querySelectorAll('[data-mmx-root="' + RID + '"]');
    for (var r = 0; r < all.length && !root; r++) if (!all[r].hasAttribute("data-mmx-bound")) root = all[r];
  }
  if (!root || root.hasAttribute("data-mmx-bound")) return;
  root.setAttribute("data-mmx-bound", "true");
  var report = JSON.parse(root.querySelector("script.mmx-data").textContent);
  var BOX = 480;  // the long side of the image on the page, CSS pixels

  // matplotlib's "jet" (its segment data), as a 256-entry lookup table
  var JET = [
    [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
    [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
    [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]]
  ];
  function segment(points, x) {
    for (var i = 1; i < points.length; i++) {
      if (x <= points[i][0]) {
        var a = points[i - 1], b = points[i];
        return a[1] + (b[1] - a[1]) * (x - a[0]) / (b[0] - a[0]);
      }
    }
    return points[points.length - 1][1];
  }
  var LUT = new Uint8ClampedArray(256 * 3);
  for (var v = 0; v < 256; v++) for (var c = 0; c < 3; c++) LUT[3 * v + c] = Math.round(255 * segment(JET[c], v / 255));

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function decode(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function fmt(p) {
    if (p >= 0.995) return p.toFixed(3);
    if (p >= 0.01) return p.toFixed(2);
    return p.toExponential(1);
  }
  function chip(label, p, extra) {
    var b = el("button", "mmx-chip" + (extra ? " " + extra : ""));
    b.type = "button";
    b.appendChild(el("span", null, label));
    if (p !== null && p !== undefined) {
      var bar = el("span", "mmx-bar"), fill = el("i");
      fill.style.width = Math.max(2, Math.round(100 * p)) + "%";
      bar.appendChild(fill);
      b.appendChild(bar);
      b.appendChild(el("small", null, "p = " + fmt(p)));
    }
    return b;
  }

  // ------------------------------------------------------------------ the image and its map
  function Figure(sec, index) {
    var W = sec.width, H = sec.height, scale = BOX / Math.max(W, H);
    var dw = Math.round(W * scale), dh = Math.round(H * scale), dpr = window.devicePixelRatio || 1;
    var mw = sec.map_width, mh = sec.map_height;
    this.node = el("div", "mmx-figure");
    var stage = el("div", "mmx-stage");
    var canvas = el("canvas", "mmx-canvas");
    canvas.width = Math.round(dw * dpr);
    canvas.height = Math.round(dh * dpr);
    canvas.style.width = dw + "px";
    canvas.style.height = dh + "px";
    canvas.setAttribute("data-section", String(index));
    canvas.setAttribute("role", "img");
    stage.appendChild(canvas);
    // colour bar: 1 at the top, 0 at the bottom
    var cbar = el("div", "mmx-cbar"), bar = el("canvas"), ticks = el("div", "mmx-ticks");
    bar.width = 1; bar.height = 256; bar.style.height = dh + "px";
    var bctx = bar.getContext("2d"), strip = bctx.createImageData(1, 256);
    for (var y = 0; y < 256; y++) {
      var q = 255 - y;
      strip.data[4 * y] = LUT[3 * q]; strip.data[4 * y + 1] = LUT[3 * q + 1]; strip.data[4 * y + 2] = LUT[3 * q + 2];
      strip.data[4 * y + 3] = 255;
    }
    bctx.putImageData(strip, 0, 0);
    ticks.style.height = dh + "px";
    [["1", 0], ["0.5", 50], ["0", 100]].forEach(function (t) {
      var s = el("span", null, t[0]);
      s.style.top = t[1] + "%";
      ticks.appendChild(s);
    });
    cbar.appendChild(bar);
    cbar.appendChild(ticks);
    stage.appendChild(cbar);
    this.node.appendChild(stage);
    var controls = el("div", "mmx-controls"), label = el("label", null, "map opacity");
    var slider = el("input"), shown = el("span", null, "50%");
    slider.type = "range"; slider.min = "0"; slider.max = "100"; slider.value = "50";
    slider.className = "mmx-opacity";
    label.appendChild(slider);
    label.appendChild(shown);
    controls.appendChild(label);
    this.node.appendChild(controls);
    this.controls = controls;
    this.canvas = canvas;

    var ctx = canvas.getContext("2d");
    var layer = document.createElement("canvas");
    layer.width = mw; layer.height = mh;
    var lctx = layer.getContext("2d"), pixels = lctx.createImageData(mw, mh);
    var img = new Image(), loaded = false, hasMap = false, opacity = 0.5;
    function redraw() {
      if (!loaded) return;
      ctx.globalAlpha = 1;
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.imageSmoothingEnabled = scale < 3;  // small images stay crisp, pixel by pixel
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      if (hasMap) {
        ctx.imageSmoothingEnabled = true;
        ctx.imageSmoothingQuality = "high";
        ctx.globalAlpha = opacity;
        ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
        ctx.globalAlpha = 1;
      }
      canvas.setAttribute("data-ready", "true");
    }
    // bytes: uint8 maps; offset: where this map starts; rgb: 3 bytes a pixel (an image), else 1 (a map)
    this.setMap = function (bytes, offset, rgb) {
      hasMap = bytes !== null;
      cbar.style.visibility = hasMap && !rgb ? "visible" : "hidden";  // an RGB image has no colour scale
      if (hasMap) {
        var d = pixels.data, n = mw * mh;
        for (var i = 0; i < n; i++) {
          if (rgb) {
            d[4 * i] = bytes[offset + 3 * i]; d[4 * i + 1] = bytes[offset + 3 * i + 1]; d[4 * i + 2] = bytes[offset + 3 * i + 2];
          } else {
            var k = 3 * bytes[offset + i];
            d[4 * i] = LUT[k]; d[4 * i + 1] = LUT[k + 1]; d[4 * i + 2] = LUT[k + 2];
          }
          d[4 * i + 3] = 255;
        }
        lctx.putImageData(pixels, 0, 0);
      }
      redraw();
    };
    slider.addEventListener("input", function () {
      opacity = Number(slider.value) / 100;
      shown.textContent = slider.value + "%";
      canvas.setAttribute("data-opacity", String(opacity));
      redraw();
    });
    canvas.setAttribute("data-opacity", "0.5");
    img.onload = function () { loaded = true; redraw(); };
    img.src = sec.image;
  }

  function header(panel, kicker, title) {
    panel.appendChild(el("p", "mmx-kicker", kicker));
    if (title) panel.appendChild(el("h2", "mmx-heading", title));
  }
  function labelled(name, node) {
    var row = el("div", "mmx-row");
    row.appendChild(el("span", "mmx-label", name));
    row.appendChild(node);
    return row;
  }
  function info() {
    var box = el("div", "mmx-info");
    box.name = el("div", "mmx-name");
    box.prob = el("div", "mmx-prob");
    box.desc = el("p", "mmx-desc");
    box.note = el("p", "mmx-note");
    box.appendChild(box.name); box.appendChild(box.prob); box.appendChild(box.desc); box.appendChild(box.note);
    box.set = function (name, prob, desc, note) {
      box.name.textContent = name;
      box.prob.textContent = prob || "";
      box.desc.textContent = desc || "";
      box.desc.style.display = desc ? "" : "none";
      box.note.textContent = note || "";
      box.note.style.display = note ? "" : "none";
    };
    return box;
  }
  function hint(panel, what) {
    var p = el("p", "mmx-hint");
    p.appendChild(document.createTextNode("Point at " + what + " to see its map; click to keep it; "));
    p.appendChild(el("kbd", null, "\u2190")); p.appendChild(document.createTextNode(" "));
    p.appendChild(el("kbd", null, "\u2192"));
    p.appendChild(document.createTextNode(" step through them."));
    panel.appendChild(p);
  }
  function toggleGroup(names, pick) {
    var box = el("div", "mmx-toggle"), buttons = [];
    names.forEach(function (name, i) {
      var b = chip(name, null, "mmx-small");
      b.addEventListener("click", function () { pick(i); });
      box.appendChild(b);
      buttons.push(b);
    });
    box.mark = function (j) {
      buttons.forEach(function (b, i) {
        b.classList.toggle("mmx-selected", i === j);
        b.setAttribute("aria-pressed", String(i === j));
      });
    };
    return box;
  }

  // ------------------------------------------------------------------ caption sections
  function CaptionSection(sec, index) {
    var node = el("section", "mmx-section"), fig = new Figure(sec, index), canvas = fig.canvas;
    node.setAttribute("data-kind", "caption");
    node.tabIndex = 0;
    var panel = el("div", "mmx-panel");
    header(panel, "Caption", sec.title);
    var T = sec.words.length, N = T + 1;  // the words, then the whole caption
    var methods = sec.methods.map(function (m) {
      return { name: m.name, rgb: m.kind === "rgb", count: m.count, bytes: decode(m.maps) };
    });
    var size = sec.map_width * sec.map_height, method = 0, selected = sec.start, chips = [];
    var toggle = null;
    if (methods.length > 1) {
      toggle = toggleGroup(methods.map(function (m) { return m.name; }), function (i) { method = i; active = api; show(selected); });
      toggle.classList.add("mmx-methods");
      panel.appendChild(labelled("Method", toggle));
    }
    var words = el("div", "mmx-words");
    for (var i = 0; i < N; i++) {
      var b = i < T ? chip(sec.words[i], sec.probabilities[i]) : chip("whole caption", sec.caption_probability, "mmx-whole");
      (function (i, b) {
        b.addEventListener("mouseenter", function () { show(i, true); });
        b.addEventListener("mouseleave", function () { show(selected); });
        b.addEventListener("focus", function () { active = api; });
        b.addEventListener("click", function () { select(i); });
      })(i, b);
      chips.push(b);
      words.appendChild(b);
    }
    panel.appendChild(words);
    var box = info();
    panel.appendChild(box);
    hint(panel, "a word");
    node.appendChild(fig.node);
    node.appendChild(panel);

    function show(i, preview) {
      var m = methods[method], has = i < m.count;
      fig.setMap(has ? m.bytes : null, i * size * (m.rgb ? 3 : 1), m.rgb);
      canvas.setAttribute("data-method", m.name);
      canvas.setAttribute("data-word-index", String(i));
      canvas.setAttribute("data-word", i < T ? sec.words[i] : "");
      chips.forEach(function (c, j) {
        c.classList.toggle("mmx-selected", j === selected);
        c.classList.toggle("mmx-preview", !!preview && j === i && j !== selected);
        c.setAttribute("aria-pressed", String(j === selected));
      });
      if (toggle) toggle.mark(method);
      var note = has ? "" : "No " + m.name + " map for the whole caption.";
      if (i < T) {
        box.set("\u201c" + sec.words[i] + "\u201d  (word " + (i + 1) + " of " + T + ", " + m.name + ")",
                "p(word | image, previous words) = " + fmt(sec.probabilities[i]), sec.descriptions[i], note);
      } else {
        box.set("Whole caption (" + m.name + ")", "p(caption | image) = " + fmt(sec.caption_probability),
                sec.descriptions[T], note);
      }
    }
    function select(i) { selected = ((i % N) + N) % N; active = api; show(selected); }
    var api = { node: node, step: function (d) { select(selected + d); } };
    node.addEventListener("mousedown", function () { active = api; });
    show(selected);
    return api;
  }

  // ------------------------------------------------------------------ answer sections
  function AnswerSection(sec, index) {
    var node = el("section", "mmx-section"), fig = new Figure(sec, index), canvas = fig.canvas;
    node.setAttribute("data-kind", "answer");
    node.tabIndex = 0;
    var panel = el("div", "mmx-panel");
    header(panel, "Visual question answering", sec.title);
    var K = sec.answers.length, size = sec.map_width * sec.map_height;
    var methods = (sec.methods || [{ name: "Grad-CAM", maps: sec.maps, counterfactuals: sec.counterfactuals }]).map(function (m) {
      return { name: m.name, maps: decode(m.maps), counter: decode(m.counterfactuals) };
    });
    var method = 0, selected = 0, cf = false, chips = [], tokens = [];
    var question = el("div", "mmx-question");
    question.appendChild(el("span", "mmx-q", "Q:"));
    sec.tokens.forEach(function (t) {
      var s = el("span", "mmx-token", t);
      tokens.push(s);
      question.appendChild(s);
      question.appendChild(document.createTextNode(" "));
    });
    if (!sec.tokens.length) question.appendChild(document.createTextNode(sec.question));
    panel.appendChild(question);
    if (sec.attributions) {
      var legend = el("div", "mmx-legend");
      legend.setAttribute("title", "each question word's gradient \u00d7 embedding for the selected answer");
      legend.appendChild(el("span", null, "Question words:"));
      [["#2a9d3f", "for the answer"], ["#d62728", "against it"]].forEach(function (x) {
        var s = el("span"), sw = el("i");
        sw.style.background = x[0];
        s.appendChild(sw); s.appendChild(document.createTextNode(x[1]));
        legend.appendChild(s);
      });
      panel.appendChild(legend);
    }
    var answers = el("div", "mmx-answers");
    sec.answers.forEach(function (a, i) {
      var p = sec.probabilities ? sec.probabilities[i] : null;
      var b = chip((K > 1 ? (i + 1) + ". " : "") + a, p);
      if (!sec.probabilities) b.appendChild(el("small", null, "score " + sec.scores[i].toFixed(2)));
      b.addEventListener("mouseenter", function () { show(i, true); });
      b.addEventListener("mouseleave", function () { show(selected); });
      b.addEventListener("focus", function () { active = api; });
      b.addEventListener("click", function () { select(i); });
      chips.push(b);
      answers.appendChild(b);
    });
    panel.appendChild(answers);
    var mtoggle = null;
    if (methods.length > 1) {
      mtoggle = toggleGroup(methods.map(function (m) { return m.name; }), function (i) { method = i; active = api; show(selected); });
      mtoggle.classList.add("mmx-methods");
      panel.appendChild(labelled("Method", mtoggle));
    }
    var toggle = toggleGroup(["evidence for the answer", "counterfactual"], function (j) { cf = j === 1; active = api; show(selected); });
    toggle.classList.add("mmx-cf");
    panel.appendChild(labelled("Map", toggle));
    var box = info();
    panel.appendChild(box);
    hint(panel, "an answer");
    node.appendChild(fig.node);
    node.appendChild(panel);

    function colour(i) {
      if (!sec.attributions) return;
      var row = sec.attributions[i], top = 0;
      row.forEach(function (x) { top = Math.max(top, Math.abs(x)); });
      tokens.forEach(function (s, j) {
        var x = top > 0 ? row[j] / top : 0, a = Math.abs(x) * 0.75;
        s.style.background = x >= 0 ? "rgba(42, 157, 63, " + a + ")" : "rgba(214, 39, 40, " + a + ")";
        s.style.color = a > 0.45 ? "#fff" : "";
        s.setAttribute("title", row[j].toPrecision(3));
      });
    }
    function show(i, preview) {
      var m = methods[method];
      fig.setMap(cf ? m.counter : m.maps, i * size, false);
      canvas.setAttribute("data-method", m.name);
      canvas.setAttribute("data-answer-index", String(i));
      canvas.setAttribute("data-answer", sec.answers[i]);
      canvas.setAttribute("data-counterfactual", String(cf));
      chips.forEach(function (c, j) {
        c.classList.toggle("mmx-selected", j === selected);
        c.classList.toggle("mmx-preview", !!preview && j === i && j !== selected);
        c.setAttribute("aria-pressed", String(j === selected));
      });
      toggle.mark(cf ? 1 : 0);
      if (mtoggle) mtoggle.mark(method);
      colour(i);
      var p = sec.probabilities ? "p(answer | image, question) = " + fmt(sec.probabilities[i]) : "score = " + sec.scores[i].toFixed(3);
      var name = (cf ? "Against \u201c" + sec.answers[i] + "\u201d (counterfactual)" : "A: " + sec.answers[i]) +
                 (methods.length > 1 ? "  (" + m.name + ")" : "");
      var note = cf ? "Regions whose removal would raise the answer's score (negated gradients)." : "";
      box.set(name, p, sec.descriptions[i], note);
    }
    function select(i) { selected = ((i % K) + K) % K; active = api; show(selected); }
    var api = { node: node, step: function (d) { select(selected + d); } };
    node.addEventListener("mousedown", function () { active = api; });
    show(0);
    return api;
  }

  // ------------------------------------------------------------------ static sections (text + a figure)
  function FigureSection(sec) {
    var node = el("section", "mmx-section mmx-static");
    node.setAttribute("data-kind", "figure");
    var panel = el("div", "mmx-panel");
    header(panel, sec.kicker, sec.title);
    sec.paragraphs.forEach(function (t) { panel.appendChild(el("p", "mmx-text", t)); });
    if (sec.items.length) {
      var list = el("ul", "mmx-list");
      sec.items.forEach(function (t) { list.appendChild(el("li", null, t)); });
      panel.appendChild(list);
    }
    if (sec.image) {
      var img = el("img", "mmx-plot");
      img.src = sec.image; img.alt = sec.title;
      panel.appendChild(img);
    }
    node.appendChild(panel);
    return { node: node, step: function () {} };
  }

  var sections = [], active = null;
  report.sections.forEach(function (sec, i) {
    var s = sec.kind === "caption" ? CaptionSection(sec, i) : sec.kind === "answer" ? AnswerSection(sec, i) : FigureSection(sec);
    root.appendChild(s.node);
    sections.push(s);
  });
  active = sections[0] || null;
  function onKey(e, api) {
    if (!api || e.altKey || e.ctrlKey || e.metaKey) return;
    var t = e.target && e.target.tagName;
    if (t === "INPUT" || t === "TEXTAREA" || t === "SELECT") return;
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      api.step(e.key === "ArrowRight" ? 1 : -1);
      e.preventDefault();
      e.stopPropagation();
    }
  }
  sections.forEach(function (s) { s.node.addEventListener("keydown", function (e) { onKey(e, s); }); });
  if (root.getAttribute("data-standalone") === "true") {
    document.addEventListener("keydown", function (e) {
      if (e.target === document.body || e.target === document.documentElement) onKey(e, active);
    });
  }
})();
"""
