/* ckanext-archiver: while a check of this resource is queued, running or
   waiting for its retry, ask archiver_resource_show every few seconds
   (every ten while a retry waits); once that state has changed (done,
   started, or a retry queued), replace the link status section with the
   one of the page as it is now. */
(function () {
  "use strict";
  var INTERVAL = 2000, MAX_POLLS = 450;
  var polls = 0;  // in all, whatever the refreshes

  function watch() {
    var section = document.getElementById("archiver-status");
    if (!section || !section.hasAttribute("data-archiver-pending")) { return; }
    var api = section.getAttribute("data-api-url");
    var id = section.getAttribute("data-resource-id");
    var shown = section.getAttribute("data-archiver-pending");
    var since = section.getAttribute("data-archiver-since") || "";
    var step = shown === "retry" ? INTERVAL * 5 : INTERVAL;

    function again(delay) {
      if (++polls < MAX_POLLS) { window.setTimeout(poll, delay); }
    }
    function refresh() {
      fetch(window.location.href, {credentials: "same-origin"})
        .then(function (r) { return r.text(); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("archiver-status");
          if (!fresh) { return; }
          section.replaceWith(document.importNode(fresh, true));
          watch();  // still on its way (started, or a retry queued): keep watching
        })
        .catch(function () { again(INTERVAL * 2); });
    }
    function poll() {
      fetch(api + "?id=" + encodeURIComponent(id), {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (body) {
          var now = body && body.success ? body.result : null;
          if (now && (!now.pending || now.pending !== shown ||
                      (now.queued_at || "") !== since)) { refresh(); }
          else { again(step); }
        })
        .catch(function () { again(INTERVAL * 2); });
    }
    again(step);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watch);
  } else {
    watch();
  }
})();
