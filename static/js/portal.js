// Portal behaviour without inline scripts (CSP script-src 'self'): SLA countdowns, select-all, resolution form.
(function () {
  "use strict";

  function fmt(seconds) {
    var sign = seconds < 0 ? "-" : "";
    var s = Math.abs(seconds);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    if (h >= 48) return sign + Math.floor(h / 24) + "d " + (h % 24) + "h";
    return sign + h + "h " + (m < 10 ? "0" : "") + m + "m";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var left = Math.round((Date.parse(el.dataset.deadline) - now) / 1000);
      el.textContent = left < 0 ? "breached " + fmt(-left) + " ago" : fmt(left) + " left";
      el.classList.remove("sla-ok", "sla-amber", "sla-red", "sla-breached");
      el.classList.add(left <= 0 ? "sla-breached" : left <= 3600 ? "sla-red" : left <= 14400 ? "sla-amber" : "sla-ok");
    });
  }

  function resolutionFields() {
    var select = document.getElementById("id_resolution");
    if (!select) return;
    var show = function () {
      var value = select.value;
      document.querySelectorAll("[data-for-resolution]").forEach(function (el) {
        el.hidden = el.dataset.forResolution.split(" ").indexOf(value) < 0;
      });
      var codes = document.getElementById("id_reason_code");
      if (codes) {
        Array.prototype.forEach.call(codes.options, function (opt) {
          var allowed = opt.dataset.resolutions;
          opt.hidden = !!allowed && allowed.split(" ").indexOf(value) < 0;
        });
        var current = codes.options[codes.selectedIndex];
        if (current && current.hidden) codes.value = "";
      }
    };
    select.addEventListener("change", show);
    show();
  }

  document.addEventListener("change", function (ev) {
    if (ev.target && ev.target.id === "select-all") {
      document.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = ev.target.checked; });
    }
  });
  document.addEventListener("DOMContentLoaded", function () { tick(); resolutionFields(); });
  document.addEventListener("htmx:afterSwap", tick);
  setInterval(tick, 30000);
})();
