/* edgeuq live view: no framework, no network access except this server's own /events (live mode). */
(function () {
  "use strict";
  var SPAN_S = 300, MAX_PTS = 3000, MAX_EVENTS = 60;
  var REASONS = {
    set_size: "conformal set is not one class",
    epistemic: "epistemic uncertainty (MI) above its threshold",
    density: "density score above its threshold (unfamiliar input)",
    nonfinite_input: "NaN burst (non-finite samples)",
    flatline_input: "flat signal (stuck or disconnected sensor)",
    clipped_input: "clipped signal (saturated sensor)",
    implausible_values: "implausible values (wrong sample format?)",
    error: "model error"
  };
  var STATUS = {
    stalled: "source stalled", closed: "producer disconnected", eof: "source ended",
    giving_up: "stream stopped after repeated stalls", restarted: "source re-opened"
  };
  var S = { info: {}, pts: [], events: [], nwin: 0, nabs: 0, nlate: 0, lastWall: 0, mode: "live",
            connected: false, drawPending: false, stats: null };
  var probe = window.edgeuq = { latency: [], draws: 0, decisions: 0, events: 0, ingest: null };

  function $(id) { return document.getElementById(id); }
  function txt(id, v) { var e = $(id); v = String(v); if (e.textContent !== v) e.textContent = v; }
  function num(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v, d) { return num(v) ? v.toFixed(d) : "—"; }
  function reasonText(r) { return REASONS[r] || String(r); }
  function tOf(r) { return num(r.time) ? r.time : (num(r.t_signal) ? r.t_signal : null); }
  function clock(r) {
    if (num(r.time)) { return new Date(r.time * 1000).toTimeString().slice(0, 8); }
    return num(r.t_signal) ? "t=" + r.t_signal.toFixed(1) + "s" : "";
  }

  function setInfo(info) {
    S.info = info || {};
    var i = S.info;
    txt("model", i.model || "—");
    txt("version", i.version || "—");
    var dg = $("digest");
    dg.textContent = i.digest ? i.digest.slice(0, 16) + "…" : "—";
    dg.title = i.digest || "";
    txt("slot", i.slot || (i.ota ? "—" : "not under OTA"));
    txt("ota", otaText(i.ota));
    txt("source", i.source || "—");
    var simulated = !!i.simulated;
    var mode = $("mode");
    mode.textContent = S.mode === "log" ? "log file" : (simulated ? "live · simulated" : "live");
    mode.className = "badge" + (S.mode === "log" ? " log" : (simulated ? " sim" : ""));
    scheduleDraw();
  }

  function otaText(o) {
    if (!o) { return "no update state (not started with --ota-root)"; }
    if (o.error) { return "error: " + o.error; }
    var p = o.pending;
    if (p) {
      return "on trial: release " + p.release + " in slot " + p.slot + ", " + (p.healthy || 0) + "/" +
        p.healthy_needed + " healthy windows, " + p.attempts_left + " boots left";
    }
    var cur = (o.slots || {})[o.current] || {};
    return "committed" + (cur.release != null ? ": release " + cur.release : "") +
      (o.good ? " (known-good slot " + o.good + ")" : "");
  }

  function addEvent(kind, r, text) {
    var last = S.events[S.events.length - 1];
    if (last && last.kind === kind && last.text === text && kind !== "alarm") {
      last.count += 1; last.when = clock(r);
    } else {
      S.events.push({ kind: kind, text: text, when: clock(r), count: 1 });
      if (S.events.length > MAX_EVENTS) { S.events.shift(); }
    }
    probe.events += 1;
    renderEvents();
  }

  function renderEvents() {
    var ul = $("events");
    while (ul.firstChild) { ul.removeChild(ul.firstChild); }
    for (var k = S.events.length - 1; k >= 0; k--) {
      var e = S.events[k], li = document.createElement("li");
      li.className = "ev-" + e.kind;
      var t = document.createElement("span"); t.className = "t"; t.textContent = e.when; li.appendChild(t);
      var b = document.createElement("span"); b.className = "kind"; b.textContent = e.kind; li.appendChild(b);
      li.appendChild(document.createTextNode(e.text + (e.count > 1 ? " (×" + e.count + ")" : "")));
      ul.appendChild(li);
    }
    if (!S.events.length) {
      var none = document.createElement("li"); none.className = "muted"; none.textContent = "none yet";
      ul.appendChild(none);
    }
  }

  function renderProbs(r) {
    var box = $("probs"), classes = S.info.classes || [], probs = r.probs;
    var rows = [];
    if (probs && probs.length === classes.length) {
      for (var i = 0; i < classes.length; i++) { rows.push([classes[i], probs[i], i === r.class_index]); }
    } else if (r["class"] != null && num(r.confidence)) {
      rows.push([r["class"], r.confidence, true]);
    }
    while (box.children.length > rows.length) { box.removeChild(box.lastChild); }
    for (var j = 0; j < rows.length; j++) {
      var el = box.children[j];
      if (!el) {
        el = document.createElement("div");
        el.innerHTML = '<span class="lab"></span><span class="track"><span class="fill" style="display:block"></span></span><span class="val"></span>';
        box.appendChild(el);
      }
      el.className = "bar" + (rows[j][2] ? " top" : "");
      el.children[0].textContent = rows[j][0];
      el.children[1].firstChild.style.width = (Math.max(0, Math.min(1, rows[j][1])) * 100).toFixed(1) + "%";
      el.children[2].textContent = (rows[j][1] * 100).toFixed(0) + "%";
    }
  }

  function decision(r, replay) {
    S.nwin += 1; probe.decisions += 1;
    if (r.abstain) { S.nabs += 1; }
    if (r.late) { S.nlate += 1; }
    var t = tOf(r);
    if (t != null) {
      S.pts.push({ t: t, total: r.total, alea: r.aleatoric, epi: r.epistemic, dens: r.density });
      if (S.pts.length > MAX_PTS) { S.pts.splice(0, S.pts.length - MAX_PTS); }
    }
    if (r.error) { addEvent("error", r, r.error); }
    if (r.abstain) {
      var why = (r.reasons || []).filter(function (x) { return x !== "error"; }).map(reasonText).join("; ");
      if (why) { addEvent("abstain", r, why); }
    }
    S.lastWall = Date.now();
    if (!replay || S.mode === "log") { showCurrent(r); }
  }

  function showCurrent(r) {
    var cls = $("cls");
    if (r.abstain) {
      cls.textContent = r["class"] != null ? "abstained (" + r["class"] + "?)" : "abstained";
      cls.className = "cls abst";
    } else {
      cls.textContent = r["class"] != null ? r["class"] : "—";
      cls.className = "cls";
    }
    txt("conf", r.confidence != null ? "confidence " + fmt(r.confidence * 100, 1) + " % · S = " + r.samples +
        " · total " + fmt(r.total, 3) + " · MI " + fmt(r.epistemic, 4) : "model not run");
    var ab = $("abstain");
    if (r.abstain) {
      ab.hidden = false;
      ab.textContent = "I don't know: " + (r.reasons || []).map(reasonText).join("; ") +
        (r.error ? " (" + r.error + ")" : "");
    } else { ab.hidden = true; }
    renderProbs(r);
    txt("set", r.set ? "{" + r.set.join(", ") + "}" : "—");
    txt("nwin", S.nwin); txt("nabs", S.nabs + (S.nwin ? " (" + (100 * S.nabs / S.nwin).toFixed(1) + " %)" : ""));
    txt("nlate", S.nlate);
    setBanner(null);
    scheduleDraw();
  }

  function setBanner(text) {
    var b = $("banner");
    if (text) { b.textContent = text; b.hidden = false; } else if (!b.hidden) { b.hidden = true; }
  }

  function stats(s) {
    S.stats = s;
    txt("p50", num(s.latency_p50_ms) ? s.latency_p50_ms.toFixed(1) + " ms" : "—");
    txt("p99", num(s.latency_p99_ms) ? s.latency_p99_ms.toFixed(1) + " ms" : "—");
    txt("rtf", num(s.real_time_factor) ? s.real_time_factor.toFixed(1) + "×" : "—");
  }

  function ingest(r, replay) {
    if (!r || typeof r !== "object") { return; }
    switch (r.type) {
      case "snapshot":
        S.pts = []; S.events = []; S.nwin = 0; S.nabs = 0; S.nlate = 0;
        setInfo(r.info);
        (r.history || []).forEach(function (h) { decision(h, true); });
        if (r.last) { showCurrent(r.last); }
        if (r.alarm) { alarm({ state: r.alarm }); }
        if (r.stats) { stats(r.stats); }
        renderEvents(); scheduleDraw();
        break;
      case "info": setInfo(r.info); break;
      case "decision": decision(r, replay); break;
      case "alarm":
        alarm(r);
        addEvent("alarm", r, (r.state === (S.info.normal || "normal") ? "cleared: " : "declared: ") + r.state +
          (r.rule ? " (" + r.rule + ")" : ""));
        break;
      case "status":
        addEvent("status", r, (STATUS[r.event] || r.event) + (r.message ? ": " + r.message : ""));
        if (!replay && S.mode !== "log") { setBanner((STATUS[r.event] || r.event) + (r.message ? ": " + r.message : "")); }
        break;
      case "error":
        addEvent("error", r, r.message || r.error || "error");
        break;
      case "stats": stats(r); break;
      case "summary":
        stats(r);
        if (S.mode === "log") { txt("nlate", r.late != null ? r.late : S.nlate); }
        break;
      default: break;
    }
  }
  probe.ingest = ingest;

  function alarm(r) {
    var a = $("alarm"), normal = S.info.normal || "normal";
    a.textContent = r.state === normal ? r.state : "ALARM: " + r.state;
    a.className = "alarm" + (r.state === normal ? "" : " on");
  }

  // ---- charts (own code: canvas 2D) ----
  function scheduleDraw() {
    if (S.drawPending) { return; }
    S.drawPending = true;
    var run = function () { S.drawPending = false; draw(); };
    if (window.requestAnimationFrame && !document.hidden) { window.requestAnimationFrame(run); } else { setTimeout(run, 50); }
  }

  function draw() {
    var t1, t0, pts = S.pts;
    if (S.mode === "log") {
      t0 = pts.length ? pts[0].t : 0; t1 = pts.length ? pts[pts.length - 1].t : 1;
      txt("span-label", "whole log");
    } else {
      t1 = Date.now() / 1000;
      var first = pts.length ? pts[0].t : t1;   // up to the last SPAN_S seconds, at least 30 s
      t0 = t1 - Math.min(SPAN_S, Math.max(30, t1 - first));
      var span = t1 - t0;
      txt("span-label", span >= 90 ? "last " + Math.round(span / 60) + " min" : "last " + Math.round(span) + " s");
    }
    if (!(t1 > t0)) { t1 = t0 + 1; }
    var thr = S.info.thresholds || {};
    chart($("chart-unc"), pts, t0, t1, [["total", "#2563eb"], ["alea", "#059669"], ["epi", "#dc2626"]],
          num(thr.epistemic) ? [[thr.epistemic, "#dc2626", "τ MI " + thr.epistemic.toPrecision(3)]] : [], true);
    chart($("chart-dens"), pts, t0, t1, [["dens", "#7c3aed"]],
          num(thr.density) ? [[thr.density, "#7c3aed", "τ dens " + thr.density.toPrecision(4)]] : [], false);
    probe.draws += 1;
  }

  function chart(cv, pts, t0, t1, series, lines, zeroBased) {
    var dpr = window.devicePixelRatio || 1, w = Math.max(100, cv.clientWidth), h = cv.clientHeight || 120;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
    }
    var g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    var lo = Infinity, hi = -Infinity, i, k, v, any = false;
    for (i = 0; i < pts.length; i++) {
      if (pts[i].t < t0) { continue; }
      for (k = 0; k < series.length; k++) {
        v = pts[i][series[k][0]];
        if (num(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); any = true; }
      }
    }
    for (k = 0; k < lines.length; k++) { lo = Math.min(lo, lines[k][0]); hi = Math.max(hi, lines[k][0]); }
    if (zeroBased) { lo = 0; }
    if (!(hi > lo)) { hi = (num(lo) ? lo : 0) + 1; lo = num(lo) ? lo : 0; }
    var pad = 0.08 * (hi - lo); hi += pad; if (!zeroBased) { lo -= pad; }
    var L = 34, R = 4, T = 6, B = 14, pw = w - L - R, ph = h - T - B;
    var X = function (t) { return L + (t - t0) / (t1 - t0) * pw; };
    var Y = function (y) { return T + (1 - (y - lo) / (hi - lo)) * ph; };
    g.strokeStyle = "#d1d5db"; g.lineWidth = 1; g.strokeRect(L, T, pw, ph);
    g.fillStyle = "#6b7280"; g.font = "10px sans-serif";
    g.fillText(hi.toPrecision(3), 2, T + 8); g.fillText(lo.toPrecision(3), 2, T + ph);
    var sp = t1 - t0;
    g.fillText(S.mode === "log" ? "start" : "−" + (sp >= 90 ? Math.round(sp / 60) + " min" : Math.round(sp) + " s"),
               L, h - 2);
    g.fillText(S.mode === "log" ? "end" : "now", w - R - 22, h - 2);
    for (k = 0; k < lines.length; k++) {
      g.setLineDash([5, 4]); g.strokeStyle = lines[k][1]; g.globalAlpha = 0.7;
      g.beginPath(); g.moveTo(L, Y(lines[k][0])); g.lineTo(L + pw, Y(lines[k][0])); g.stroke();
      g.setLineDash([]); g.globalAlpha = 1; g.fillStyle = lines[k][1];
      g.fillText(lines[k][2], L + 4, Math.max(T + 9, Y(lines[k][0]) - 3));
    }
    if (!any) {
      g.fillStyle = "#9ca3af"; g.fillText("no data yet", L + pw / 2 - 25, T + ph / 2); return;
    }
    var step = Math.max(1, Math.floor(pts.length / (pw * 2)));
    for (k = 0; k < series.length; k++) {
      g.strokeStyle = series[k][1]; g.lineWidth = 1.5; g.beginPath();
      var pen = false;
      for (i = 0; i < pts.length; i += step) {
        v = pts[i][series[k][0]];
        if (pts[i].t < t0 || !num(v)) { pen = false; continue; }
        if (pen) { g.lineTo(X(pts[i].t), Y(v)); } else { g.moveTo(X(pts[i].t), Y(v)); pen = true; }
      }
      g.stroke();
    }
  }

  // ---- wiring ----
  var embedded = null;
  try { embedded = JSON.parse($("embedded").textContent); } catch (e) { embedded = null; }
  if (embedded && embedded.mode === "log") {
    S.mode = "log";
    var c = $("conn"); c.textContent = "saved log"; c.className = "conn";
    setInfo(embedded.info || {});
    (embedded.records || []).forEach(function (r) { ingest(r, false); });
    txt("footer", "saved log: " + (embedded.title || "") + " · " + S.nwin + " windows · entropies in nats");
    window.addEventListener("resize", scheduleDraw);
    scheduleDraw();
    return;
  }
  var token = new URLSearchParams(window.location.search).get("token");
  var url = "events" + (token ? "?token=" + encodeURIComponent(token) : "");
  var es = new EventSource(url);
  es.onopen = function () { S.connected = true; var c = $("conn"); c.textContent = "live"; c.className = "conn on"; };
  es.onerror = function () {
    S.connected = false; var c = $("conn"); c.textContent = "reconnecting…"; c.className = "conn off";
  };
  es.onmessage = function (ev) {
    var r;
    try { r = JSON.parse(ev.data); } catch (e) { return; }
    ingest(r, false);
    if (r.type === "decision" && num(r.time)) {
      probe.latency.push(Date.now() / 1000 - r.time);
      if (probe.latency.length > 1000) { probe.latency.shift(); }
    }
  };
  setInterval(function () {
    if (S.mode !== "live") { return; }
    var hopS = S.info.hop_seconds || 1, quiet = (Date.now() - S.lastWall) / 1000;
    if (S.connected && S.lastWall && quiet > Math.max(3, 3 * hopS)) {
      setBanner("no decision for " + quiet.toFixed(0) + " s (source stalled?)");
    }
    scheduleDraw();
  }, 1000);
  window.addEventListener("resize", scheduleDraw);
})();
