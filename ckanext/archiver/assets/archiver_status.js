/* ckanext-archiver: while a check of this resource is queued or running,
   ask archiver_resource_show every few seconds; once it is done, replace
   the link status section with the one of the page as it is now. */
(function () {
  "use strict";
  var INTERVAL = 2000, MAX_POLLS = 450;

  function watch() {
    var section = document.getElementById("archiver-status");
    if (!section || !section.hasAttribute("data-archiver-pending")) { return; }
    var api = section.getAttribute("data-api-url");
    var id = section.getAttribute("data-resource-id");
    var polls = 0;

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
          watch();  // a retry may be queued: keep watching
        })
        .catch(function () { again(INTERVAL * 2); });
    }
    function poll() {
      fetch(api + "?id=" + encodeURIComponent(id), {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (body) {
          if (body && body.success && !body.result.pending) { refresh(); }
          else { again(INTERVAL); }
        })
        .catch(function () { again(INTERVAL * 2); });
    }
    again(INTERVAL);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watch);
  } else {
    watch();
  }
})();
