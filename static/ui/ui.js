// mailpanel UI: small enhancements only; every page works without this file.
// Copy buttons, confirmations, "working…" feedback on long forms, live dashboard status.
(function () {
  "use strict";

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy failed")); }
    });
  }

  function setupCopy(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.hidden = false;
      if (button.dataset.ready) { return; }
      button.dataset.ready = "1";
      var label = button.textContent;
      button.addEventListener("click", function () {
        copyText(button.getAttribute("data-copy")).then(function () {
          button.textContent = "Copied";
        }, function () {
          button.textContent = "Select and copy by hand";
        });
        window.setTimeout(function () { button.textContent = label; }, 2000);
      });
    });
  }

  function setupForms() {
    document.querySelectorAll("form").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var question = form.getAttribute("data-confirm");
        if (question && !window.confirm(question)) {
          event.preventDefault();
          return;
        }
        if ((form.getAttribute("method") || "get").toLowerCase() !== "post") { return; }
        var busy = form.getAttribute("data-busy");
        var button = form.querySelector("button[type=submit]");
        if (button) {
          // After this event: a disabled button would not be submitted with the form.
          window.setTimeout(function () {
            button.disabled = true;
            if (busy) { button.textContent = busy; }
          }, 0);
        }
        if (busy) {
          form.setAttribute("aria-busy", "true");
          var note = document.createElement("p");
          note.className = "busy";
          note.setAttribute("role", "status");
          note.textContent = busy;
          form.appendChild(note);
        }
      });
    });
  }

  function setupLive() {
    var box = document.querySelector("[data-live]");
    if (!box || !window.fetch) { return; }
    var url = box.getAttribute("data-live");
    function refresh() {
      if (document.visibilityState !== "visible") { return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (!response.ok || response.redirected) { return null; }
          return response.text();
        })
        .then(function (html) {
          if (html === null || html === undefined) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.querySelector("main") || doc.body;
          box.replaceChildren.apply(box, Array.prototype.slice.call(fresh.childNodes));
          setupCopy(box);
        })
        .catch(function () { /* keep the last status */ });
    }
    window.setInterval(refresh, 10000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupCopy(document);
    setupForms();
    setupLive();
  });
})();
