// The live page of a fleetshard run: a snapshot, then deltas, over server-sent events.
// Every string from the run is put into the page with textContent (never parsed as HTML).
(function () {
  "use strict";
  var token = new URLSearchParams(location.search).get("token");
  var MAX_TAIL = 500;
  var state = null;
  var events = null;
  var tailSource = null;
  var tailKey = null;
  var tailLines = [];
  var blocks = {};
  var rows = {};
  var pending = false;

  function url(path) {
    return token ? path + (path.indexOf("?") < 0 ? "?" : "&") + "token=" + encodeURIComponent(token) : path;
  }
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }
  function dur(s) {
    if (s === null || s === undefined || !isFinite(s)) { return "–"; }
    if (s < 10) { return s.toFixed(1) + "s"; }
    var t = Math.round(s);
    if (t < 60) { return t + "s"; }
    var m = Math.floor(t / 60), sec = t % 60;
    if (m < 60) { return m + "m " + (sec < 10 ? "0" : "") + sec + "s"; }
    var h = Math.floor(m / 60); m = m % 60;
    return h + "h " + (m < 10 ? "0" : "") + m + "m";
  }
  function outcomeClass(outcome) {
    if (!outcome) { return "running"; }
    if (outcome === "passed") { return "passed"; }
    if (outcome === "tests-failed") { return "failed"; }
    if (outcome === "infra-failed" || outcome === "timed-out") { return "infra"; }
    if (outcome === "cancelled") { return "cancelled"; }
    return "other";
  }

  function apply(d) {
    if (d.t === "run" || d.t === "progress") { state[d.t] = d.v; }
    else if (d.t === "machine") { state.machines[d.k] = d.v; }
    else if (d.t === "attempt") { state.attempts[d.k] = d.v; }
    else if (d.t === "failure") { state.failures[d.k] = d.v; }
    else if (d.t === "notice") { state.notices.push(d.v); if (state.notices.length > 50) { state.notices.shift(); } }
    state.seq = d.seq;
  }

  function connect() {
    if (events) { events.close(); }
    events = new EventSource(url("events"));
    events.addEventListener("snapshot", function (e) {
      state = JSON.parse(e.data);
      blocks = {}; rows = {}; clear($("timeline"));
      schedule();
    });
    events.addEventListener("delta", function (e) {
      var d = JSON.parse(e.data);
      if (!state || d.seq <= state.seq) { return; }
      if (d.seq !== state.seq + 1) { state = null; connect(); return; }   // missed one: start from a snapshot
      apply(d);
      schedule();
    });
    events.addEventListener("report", function () {
      events.close();
      if (tailSource) { tailSource.close(); }
      location.reload();                                // the page is now the run's report
    });
  }

  function schedule() {
    if (!pending) { pending = true; setTimeout(function () { pending = false; render(); }, 80); }
  }

  function render() {
    if (!state) { return; }
    renderHead();
    renderTimeline();
    renderMachines();
    renderFailures();
    renderNotices();
  }

  function renderHead() {
    var run = state.run, p = state.progress;
    var head = $("head");
    var phase = run.phase;
    var verdict = phase === "finished" ? (run.exit_code === 0 ? "passed" : run.exit_code === 1 ? "tests failed"
      : run.exit_code === 130 ? "interrupted" : "infrastructure failure") : phase;
    head.className = phase !== "finished" ? "running" : run.exit_code === 0 ? "ok" : run.exit_code === 1 ? "fail"
      : run.exit_code === 130 ? "cancelled" : "infra";
    $("title").textContent = "fleetshard · run " + (run.run_id || "…") + " · " + verdict;
    $("subtitle").textContent = (run.strategy ? run.strategy + " strategy · " : "") + p.total + " shards on " +
      Object.keys(state.machines).length + " machines";
    document.title = "fleetshard " + (run.run_id || "") + ": " + verdict;
    $("bar-done").style.width = (100 * (p.fraction || 0)).toFixed(1) + "%";
    var stats = $("stats"); clear(stats);
    [["done", p.done + "/" + p.total], ["passed", p.passed], ["failed", p.failed], ["flaky", p.flaky],
     ["not run", p.not_run], ["running", p.running], ["retries", p.retries]].forEach(function (kv) {
      var span = el("span", "stat-" + kv[0].replace(" ", "-"), kv[0] + ": " + kv[1]);
      stats.appendChild(span);
    });
    var times = $("times"); clear(times);
    [["elapsed", dur(p.elapsed)], ["ETA", p.eta === null ? "?" : dur(p.eta)],
     ["expected makespan", dur(p.expected_makespan)], ["lower bound", dur(p.lower_bound)]].forEach(function (kv) {
      times.appendChild(el("span", null, kv[0] + ": " + kv[1]));
    });
  }

  function span() {
    var s = Math.max(state.progress.elapsed || 0, state.run.expected_makespan || 0, 1);
    Object.keys(state.attempts).forEach(function (k) {
      var a = state.attempts[k];
      if (a.end !== null && a.end > s) { s = a.end; }
    });
    return s * 1.02;
  }

  var STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];
  function tickLabel(s) {
    if (s <= 0) { return "0"; }
    if (s < 60) { return "+" + s + "s"; }
    var m = Math.floor(s / 60), sec = s % 60;
    if (m < 60) { return "+" + m + "m" + (sec ? " " + sec + "s" : ""); }
    return "+" + Math.floor(m / 60) + "h" + (m % 60 ? " " + (m % 60) + "m" : "");
  }
  function renderAxis(box, total) {
    var axis = box.querySelector(".axis");
    if (!axis) { axis = el("div", "axis"); box.insertBefore(axis, box.firstChild); }
    clear(axis);
    var step = STEPS[STEPS.length - 1];
    for (var i = 0; i < STEPS.length; i++) { if (total / STEPS[i] <= 10) { step = STEPS[i]; break; } }
    for (var t = 0; t <= total; t += step) {
      var tick = el("span", "tick", tickLabel(t));
      tick.style.left = (100 * t / total) + "%";
      axis.appendChild(tick);
    }
  }

  function renderTimeline() {
    var box = $("timeline"), total = span(), now = state.progress.elapsed || 0;
    renderAxis(box, total);
    Object.keys(state.machines).forEach(function (name) {
      var m = state.machines[name], row = rows[name];
      if (!row) {
        row = { root: el("div", "row"), label: el("div", "machine-label"), lane: el("div", "lane") };
        row.root.appendChild(row.label); row.root.appendChild(row.lane);
        row.root.setAttribute("data-machine", name);
        row.lower = el("div", "mark lower"); row.expected = el("div", "mark");
        row.lane.appendChild(row.lower); row.lane.appendChild(row.expected);
        box.appendChild(row.root); rows[name] = row;
      }
      clear(row.label);
      row.label.appendChild(document.createTextNode(name));
      var bad = ["lost", "unhealthy", "unreachable", "drained"].indexOf(m.status) >= 0;
      row.label.className = "machine-label" + (bad ? " bad" : "");
      row.label.title = name + ": " + m.status + (m.reason ? " (" + m.reason + ")" : "");
      row.label.appendChild(el("small", null, m.status + " · " + m.slots + " slot" + (m.slots === 1 ? "" : "s")));
      row.lane.style.height = (Math.max(1, m.lanes) * 24 + 4) + "px";
      var lb = state.run.lower_bound, ex = state.run.expected_makespan;
      row.lower.hidden = !lb; row.expected.hidden = !ex;
      if (lb) { row.lower.style.left = (100 * lb / total) + "%"; row.lower.title = "lower bound " + dur(lb); }
      if (ex) { row.expected.style.left = (100 * ex / total) + "%"; row.expected.title = "expected makespan " + dur(ex); }
    });
    Object.keys(state.attempts).forEach(function (key) {
      var a = state.attempts[key], row = rows[a.machine];
      if (!row) { return; }
      var b = blocks[key];
      if (!b) {
        b = el("div", "block");
        b.setAttribute("data-key", key);
        b.setAttribute("data-shard", a.shard);
        b.addEventListener("click", function () { openTail(key); });
        row.lane.appendChild(b); blocks[key] = b;
      }
      var end = a.end === null ? now : a.end;
      var cls = "block " + outcomeClass(a.outcome) + (a.attempt > 1 ? " retry" : "") + (key === tailKey ? " selected" : "");
      if (b.className !== cls) { b.className = cls; }
      b.style.left = (100 * a.start / total) + "%";
      b.style.width = Math.max(0.3, 100 * (end - a.start) / total) + "%";
      b.style.top = ((a.lane || 0) * 24 + 3) + "px";
      b.textContent = a.shard + (a.attempt > 1 ? " #" + a.attempt : "");
      b.title = a.shard + " attempt " + a.attempt + " on " + a.machine + (a.outcome ? ": " + a.outcome : ": running") +
        " (" + dur(end - a.start) + ")" + (a.files && a.files.length ? "\n" + a.files.join("\n") : "") +
        (a.reason ? "\n" + a.reason : "");
    });
  }

  function cell(row, text, cls) { row.appendChild(el("td", cls || null, text)); }

  function renderMachines() {
    var body = $("machines").tBodies[0]; clear(body);
    Object.keys(state.machines).forEach(function (name) {
      var m = state.machines[name], h = m.health || {}, tr = el("tr");
      tr.setAttribute("data-machine", name);
      cell(tr, name);
      var st = el("td", "status-" + m.status, m.status + (m.reason ? ": " + m.reason : ""));
      tr.appendChild(st);
      cell(tr, m.slots, "num"); cell(tr, Number(m.speed).toFixed(2), "num"); cell(tr, m.running, "num");
      cell(tr, m.passed, "num"); cell(tr, m.failed, "num");
      cell(tr, h.load1 === undefined || h.load1 === null ? "–" : h.load1, "num");
      cell(tr, h.mem_used_pct === undefined || h.mem_used_pct === null ? "–" : Math.round(h.mem_used_pct) + "%", "num");
      cell(tr, h.disk_free_pct === undefined || h.disk_free_pct === null ? "–" : Math.round(h.disk_free_pct) + "%", "num");
      cell(tr, h.latency_ms === undefined || h.latency_ms === null ? "–" : Number(h.latency_ms).toFixed(1) + " ms", "num");
      body.appendChild(tr);
    });
  }

  function renderFailures() {
    var box = $("failures"), keys = Object.keys(state.failures);
    clear(box);
    if (!keys.length) { box.appendChild(el("p", "muted", "none so far")); return; }
    keys.forEach(function (key) {
      var f = state.failures[key], div = el("div", "failure");
      div.setAttribute("data-key", key);
      var h3 = el("h3");
      h3.appendChild(el("span", "tag " + f.kind, f.kind === "tests" ? "tests failed" : f.outcome));
      h3.appendChild(document.createTextNode(" " + f.shard + " on " + f.machine + ", attempt " + f.attempt));
      div.appendChild(h3);
      if (f.reason) { div.appendChild(el("p", null, f.reason)); }
      if (f.files && f.files.length) { div.appendChild(el("p", "muted", "files: " + f.files.join(", "))); }
      if (f.tests && f.tests.length) {
        var ul = el("ul", "tests");
        f.tests.forEach(function (t) {
          var li = el("li");
          li.appendChild(el("code", "test-name", (t.classname ? t.classname + "::" : "") + t.name));
          if (t.message) { li.appendChild(document.createTextNode(" " + t.message)); }
          ul.appendChild(li);
        });
        if (f.tests_more) { ul.appendChild(el("li", "muted", "… and " + f.tests_more + " more")); }
        div.appendChild(ul);
      }
      if (f.tail && f.tail.length) { div.appendChild(el("pre", null, f.tail.join("\n"))); }
      box.appendChild(div);
    });
  }

  function renderNotices() {
    var ul = $("notices"); clear(ul);
    state.notices.forEach(function (n) {
      ul.appendChild(el("li", n.level, (n.machine ? n.machine + ": " : "") + n.text));
    });
  }

  function showTail() {
    $("tail").textContent = tailLines.length ? tailLines.join("\n") : "(no output yet)";
  }

  function openTail(key) {
    if (tailSource) { tailSource.close(); tailSource = null; }
    tailKey = key; tailLines = [];
    var a = state && state.attempts[key];
    $("tail-box").hidden = false;
    $("tail-title").textContent = "Output of " + (a ? a.shard + " attempt " + a.attempt + " on " + a.machine : key);
    showTail();
    var source = new EventSource(url("tail/" + encodeURIComponent(key)));
    tailSource = source;
    source.addEventListener("lines", function (e) { tailLines = JSON.parse(e.data); showTail(); });
    source.addEventListener("line", function (e) {
      tailLines.push(JSON.parse(e.data));
      if (tailLines.length > MAX_TAIL) { tailLines.shift(); }
      showTail();
    });
    source.addEventListener("end", function (e) {
      var outcome = JSON.parse(e.data);
      source.close();
      if (tailSource === source) { tailSource = null; }
      tailLines.push("— " + (outcome ? "ended: " + outcome : "no output kept for this attempt"));
      showTail();
    });
    schedule();
  }

  connect();
})();
