// ivx report page: unpack the embedded plotly.js, draw every figure, and drive the drill-down.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("ivx-data").textContent);
  var state = { ready: false, drawn: 0, errors: [], point: null, prompt: null };
  window.ivxReport = { data: data, state: state, drill: drill, showPrompt: showPrompt };
  var status = document.getElementById("status");

  function say(text, cls) {
    status.textContent = text;
    status.className = "status " + (cls || "");
  }

  function loadPlotly() {
    if (window.Plotly) return Promise.resolve();
    if (typeof DecompressionStream === "undefined") {
      return Promise.reject(new Error("this browser has no DecompressionStream; open the report in a current browser"));
    }
    var text = document.getElementById("plotly-gz").textContent.trim();
    var bin = atob(text);
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(function (code) {
      var s = document.createElement("script");
      s.textContent = code;
      document.head.appendChild(s);
    });
  }

  function drawAll() {
    var jobs = data.figures.map(function (fig) {
      var box = document.getElementById("fig-" + fig.id);
      if (!box) return Promise.resolve();
      var div = box.querySelector(".plot");
      var layout = Object.assign({ margin: { t: 30, l: 110, r: 30, b: 70 }, hovermode: "closest" }, fig.layout);
      return Plotly.newPlot(div, fig.data, layout, { responsive: true, displaylogo: false }).then(function () {
        state.drawn += 1;
        if (fig.click === "grid") {
          div.on("plotly_click", function (ev) {
            var cd = ev.points && ev.points[0] ? ev.points[0].customdata : null;
            if (cd !== null && cd !== undefined) drill(cd);
          });
        }
      });
    });
    return Promise.all(jobs);
  }

  function axisValue(axis, row) {
    return data.rows.values[axis][data.rows.columns[axis][row]];
  }

  function rowsAt(index) {
    var entry = data.grid[index];
    var keys = data.axes.filter(function (a) { return a in entry; });
    var want = keys.map(function (a) { return JSON.stringify(entry[a]); });
    var out = [];
    for (var r = 0; r < data.rows.n; r++) {
      var ok = true;
      for (var k = 0; k < keys.length && ok; k++) ok = JSON.stringify(axisValue(keys[k], r)) === want[k];
      if (ok) out.push(r);
    }
    return out;
  }

  function fmt(v) {
    return typeof v === "number" ? Number(v.toPrecision(6)).toString() : "-";
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function where(index) {
    var entry = data.grid[index];
    return data.axes.filter(function (a) { return a in entry; })
      .map(function (a) { return a + "=" + JSON.stringify(entry[a]); }).join(", ");
  }

  function drill(index) {
    state.point = index;
    var rows = rowsAt(index);
    var metrics = data.rows.metrics;
    var head = "<tr><th>prompt</th>" + metrics.map(function (m) { return "<th>" + esc(m) + "</th>"; }).join("") + "</tr>";
    var body = rows.map(function (r) {
      var p = data.rows.columns.prompt_index[r];
      var cells = metrics.map(function (m) { return "<td>" + fmt(data.rows.columns[m][r]) + "</td>"; }).join("");
      return "<tr class='row' data-row='" + r + "' data-prompt='" + p + "'><td>" + p + "</td>" + cells + "</tr>";
    }).join("");
    document.getElementById("drill-where").textContent =
      where(index) + " — " + rows.length + " per-prompt rows (click a row to see its prompt)" +
      (data.rows_note ? "; " + data.rows_note : "");
    var box = document.getElementById("drill-table");
    box.innerHTML = "<table class='data' id='drill-rows'>" + head + body + "</table>";
    box.querySelectorAll("tr.row").forEach(function (tr) {
      tr.addEventListener("click", function () { showPrompt(Number(tr.dataset.prompt)); });
    });
    if (state.prompt !== null) showPrompt(state.prompt);
    document.getElementById("drill").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function patchedAt(prompt) {
    if (state.point === null) return [];
    var rows = rowsAt(state.point).filter(function (r) { return data.rows.columns.prompt_index[r] === prompt; });
    if (!rows.length) return [];
    var code = data.positions.codes[rows[0]];
    return code === null || code === undefined ? [] : data.positions.lists[code];
  }

  function showPrompt(index) {
    state.prompt = index;
    var view = document.getElementById("prompt-view");
    if (!view) return;
    document.getElementById("prompt-pick").value = String(index);
    var p = data.prompts.filter(function (q) { return q.prompt_index === index; })[0];
    if (!p) { view.innerHTML = ""; return; }
    var patched = patchedAt(index);
    var span = p.subject_span || [-1, -1];
    var toks = (p.tokens || []).map(function (t, i) {
      var cls = "tok" + (patched.indexOf(i) >= 0 ? " patched" : "") + (i >= span[0] && i < span[1] ? " subject" : "");
      return "<span class='" + cls + "' title='position " + i + "'>" + esc(t) + "</span>";
    }).join("");
    var clean = p.clean || {}, bad = p.corrupted || {};
    var probs = "target " + esc(JSON.stringify(p.target_tokens)) + (p.foil_tokens ? ", foil " + esc(JSON.stringify(p.foil_tokens)) : "") +
      " · clean p=" + fmt(clean.target_prob) + ", corrupted p=" + fmt(bad.target_prob) +
      (typeof clean.logit_diff === "number" ? " · logit diff clean " + fmt(clean.logit_diff) + ", corrupted " + fmt(bad.logit_diff) : "");
    var values = "";
    if (state.point !== null) {
      var rows = rowsAt(state.point).filter(function (r) { return data.rows.columns.prompt_index[r] === index; });
      values = rows.map(function (r) {
        return data.rows.metrics.map(function (m) { return m + " " + fmt(data.rows.columns[m][r]); }).join(", ");
      }).join("<br>");
      values = values ? "<div class='probs'>at " + esc(where(state.point)) + ": " + values + "</div>" : "";
    }
    view.innerHTML = "<div class='tokens' id='prompt-tokens'>" + toks + "</div><div class='probs'>" + probs + "</div>" + values;
    document.querySelectorAll("#drill-rows tr.row").forEach(function (tr) {
      tr.classList.toggle("picked", Number(tr.dataset.prompt) === index);
    });
  }

  var pick = document.getElementById("prompt-pick");  // absent when the run has no per-prompt rows
  if (pick) {
    pick.addEventListener("change", function (ev) {
      if (ev.target.value !== "") showPrompt(Number(ev.target.value));
    });
  }

  loadPlotly().then(drawAll).then(function () {
    state.ready = true;
    document.body.dataset.ready = "1";
    say("ready", "done");
  }).catch(function (err) {
    state.errors.push(String(err));
    say("figures could not be drawn: " + err, "error");
    console.error(err);
  });
})();
