// Tugboat UI: live pages from the event stream, and log follow. No framework, no downloads.
// A page names the events it cares about in <body data-events="...">; when one arrives, the
// page is fetched again and every element marked data-live is replaced by its new version.
(function () {
  "use strict";
  var KINDS = ["job.created", "job.changed", "job.deleted", "job.paused", "job.resumed",
    "run.fired", "run.placed", "run.started", "run.waiting", "run.retried", "run.finished",
    "run.misfired", "agent.joined", "agent.lost", "agent.drained", "agent.undrained",
    "service.created", "service.changed", "service.deleted", "service.scaled", "replica.placed",
    "replica.started", "replica.healthy", "replica.unhealthy", "replica.stopped", "replica.replaced",
    "operation.progress", "operation.finished", "release.started", "release.stage", "release.braked",
    "release.resumed", "release.retried", "release.failed", "release.succeeded", "release.revoked",
    "lagged"];
  var filter = document.body.getAttribute("data-events");
  var pending = null;

  function refresh() {
    pending = null;
    fetch(location.href, { headers: { "X-Tug-Live": "1" } }).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (!html) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      document.querySelectorAll("[data-live]").forEach(function (el) {
        var fresh = el.id && doc.getElementById(el.id);
        if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
      });
      document.body.setAttribute("data-refreshed", String(Date.now()));
    }).catch(function () {});
  }

  function soon() {
    if (pending === null) pending = setTimeout(refresh, 250);
  }

  if (filter !== null && filter !== "" && window.EventSource) {
    var es = new EventSource("/api/v1/events?" + filter);
    KINDS.forEach(function (k) { es.addEventListener(k, soon); });
    es.addEventListener("open", function () { document.body.setAttribute("data-live-connected", "1"); });
  }
  // Relative times ("in 3m") go stale without events; redraw now and then (a page may name its
  // own period in <body data-poll="ms">).
  var poll = parseInt(document.body.getAttribute("data-poll"), 10);
  if (document.querySelector("[data-live]")) setInterval(soon, poll > 0 ? poll : 30000);

  // The job form: the schedule's next fires as one types, from the preview API.
  var sched = document.getElementById("schedule");
  var zone = document.getElementById("tz");
  var list = document.getElementById("preview");
  var problem = document.getElementById("preview-error");
  var typing = null;
  function preview() {
    typing = null;
    var expr = sched.value.trim();
    if (expr === "") { list.innerHTML = ""; problem.hidden = true; return; }
    var q = "expr=" + encodeURIComponent(expr) + "&count=5";
    if (zone.value.trim() !== "") q += "&tz=" + encodeURIComponent(zone.value.trim());
    var asked = sched.value + "\n" + zone.value;
    fetch("/api/v1/schedule/preview?" + q).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    }).then(function (x) {
      if (asked !== sched.value + "\n" + zone.value) return; // typed on meanwhile
      list.innerHTML = "";
      if (!x.ok) {
        problem.textContent = (x.body.error && x.body.error.message) || "the schedule cannot be previewed";
        problem.hidden = false;
        return;
      }
      problem.hidden = true;
      if (x.body.details.length === 0) { problem.textContent = "it never fires after now"; problem.hidden = false; }
      x.body.details.forEach(function (f) {
        var li = document.createElement("li");
        li.textContent = f.at;
        if (f.dst_adjusted) {
          var b = document.createElement("span");
          b.className = "badge";
          b.textContent = "DST moved";
          li.appendChild(document.createTextNode(" "));
          li.appendChild(b);
        }
        list.appendChild(li);
      });
      list.setAttribute("data-previewed", asked);
    }).catch(function () {});
  }
  function typed() {
    if (typing !== null) clearTimeout(typing);
    typing = setTimeout(preview, 250);
  }
  if (sched && zone && list && problem && window.fetch) {
    sched.addEventListener("input", typed);
    zone.addEventListener("input", typed);
  }

  var log = document.getElementById("log");
  var follow = log && log.getAttribute("data-follow");
  if (follow && window.fetch && window.TextDecoder) {
    fetch(follow).then(function (r) {
      if (!r.ok || !r.body) return;
      var reader = r.body.getReader();
      var dec = new TextDecoder();
      (function pump() {
        reader.read().then(function (x) {
          if (x.done) { log.setAttribute("data-ended", "1"); soon(); return; }
          var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          log.textContent += dec.decode(x.value, { stream: true });
          if (atEnd) log.scrollTop = log.scrollHeight;
          pump();
        });
      })();
    });
  }
})();
