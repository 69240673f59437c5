// imagend's dashboard: swap in server-rendered sections every second or so, and send the buttons'
// POSTs with the token the operator pasted. It never builds HTML from strings: every section comes
// from the server, escaped there; messages go in with textContent.
(function () {
  "use strict";
  var KEY = "imagend.token";
  var last = new WeakMap();

  function token() { return sessionStorage.getItem(KEY) || ""; }
  function headers() { var t = token(); return t ? { "Authorization": "Bearer " + t } : {}; }
  function say(text, bad) {
    var note = document.getElementById("note");
    if (!note) return;
    note.textContent = text;
    note.classList.toggle("bad", !!bad);
  }

  function refresh(section) {
    return fetch(section.dataset.src, { headers: headers(), cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) throw new Error("needs the token");
        return response.text();
      })
      .then(function (html) {
        if (last.get(section) !== html) {  // unchanged sections stay: no image reloads, no flicker
          section.innerHTML = html;
          last.set(section, html);
        }
        section.classList.remove("stale");
      })
      .catch(function () { section.classList.add("stale"); });
  }

  function refreshAll() {
    document.querySelectorAll("[data-src]").forEach(refresh);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-src]").forEach(function (section) {
      var every = parseInt(section.dataset.every, 10) || 1000;
      if (!section.children.length) refresh(section);
      setInterval(function () { if (!document.hidden) refresh(section); }, every);
    });
    var form = document.getElementById("token-form");
    var input = document.getElementById("token");
    if (form && input) {
      input.value = token();
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        sessionStorage.setItem(KEY, input.value.trim());
        say(input.value.trim() ? "Token kept for this tab." : "Token cleared.");
        // The read cookie, so that images and row pages opened by a link load on a non-loopback address;
        // clearing the token drops it from this browser.
        fetch("/session", { method: token() ? "POST" : "DELETE", headers: headers(), credentials: "same-origin" });
        refreshAll();
      });
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-post]");
    if (!button || button.disabled) return;
    if (!token()) { say("Paste the token (IMAGEND_HTTP_TOKEN) above first.", true); return; }
    button.disabled = true;
    fetch(button.dataset.post, { method: "POST", headers: headers(), credentials: "same-origin" })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (response.ok) say(button.dataset.done || "Done.");
          else say((body && body.error) || ("Refused: HTTP " + response.status), true);
        });
      })
      .catch(function () { say("The daemon did not answer.", true); })
      .then(function () { button.disabled = false; refreshAll(); });
  });
})();
