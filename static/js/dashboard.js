// Dashboard charts: read the JSON the server rendered with json_script, draw with the vendored Chart.js, and redraw
// after each htmx refresh. No inline scripts (CSP script-src 'self').
(function () {
  "use strict";
  var charts = {};

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas || typeof Chart === "undefined") return;
    if (charts[id]) charts[id].destroy();
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    charts[id] = new Chart(canvas, config);
  }

  function render() {
    var node = document.getElementById("dashboard-data");
    if (!node) return;
    var data = JSON.parse(node.textContent);
    draw("chart-series", {
      type: "line",
      data: {
        labels: data.series.labels,
        datasets: [
          { label: "in", data: data.series.in, borderColor: "#2f5bd3", backgroundColor: "#2f5bd3", tension: 0.2 },
          { label: "out", data: data.series.out, borderColor: "#1f8a4c", backgroundColor: "#1f8a4c", tension: 0.2 }
        ]
      }
    });
    draw("chart-reasons", {
      type: "bar",
      data: { labels: data.reasons.labels, datasets: [{ label: "escalations", data: data.reasons.counts, backgroundColor: "#c27c00" }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } } }
    });
    draw("chart-queues", {
      type: "bar",
      data: {
        labels: data.queues.labels,
        datasets: [
          { label: "open", data: data.queues.open, backgroundColor: "#2f5bd3" },
          { label: "unclaimed", data: data.queues.unclaimed, backgroundColor: "#c2372f" }
        ]
      }
    });
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSwap", function (ev) {
    if (ev.detail && ev.detail.target && ev.detail.target.id === "dashboard") render();
  });
})();
