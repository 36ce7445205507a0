// Progressive enhancement of the console: charts from the JSON the server rendered into
// each canvas's data-chart attribute, and copy-to-clipboard buttons. The pages work without it (tables carry
// every number); no inline script anywhere, so the CSP allows only this file.
(function () {
  "use strict";

  var UNITS = {
    usd: function (v) { return "$" + Number(v).toLocaleString(undefined, { maximumFractionDigits: 4 }); },
    ms: function (v) { return Number(v).toLocaleString(undefined, { maximumFractionDigits: 0 }) + " ms"; },
    percent: function (v) { return Number(v).toFixed(1) + "%"; },
    count: function (v) { return Number(v).toLocaleString(); }
  };
  var COLORS = ["#0172ad", "#d93526", "#2a9d8f", "#e9a100", "#7b5ea7"];

  function drawCharts(root) {
    if (typeof window.Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) { return; }
      var spec = JSON.parse(canvas.dataset.chart);
      var format = UNITS[spec.unit] || UNITS.count;
      canvas.dataset.drawn = "1";
      new window.Chart(canvas, {
        type: spec.kind,
        data: {
          labels: spec.labels,
          datasets: spec.series.map(function (series, index) {
            var color = COLORS[index % COLORS.length];
            return {
              label: series.label,
              data: series.data,
              borderColor: color,
              backgroundColor: spec.kind === "bar" ? color : color + "33",
              fill: spec.kind === "line" && spec.series.length === 1,
              tension: 0.25,
              pointRadius: spec.labels.length > 40 ? 1 : 2,
              spanGaps: false
            };
          })
        },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          animation: false,
          interaction: { mode: "index", intersect: false },
          plugins: {
            legend: { display: spec.series.length > 1, position: "bottom" },
            tooltip: { callbacks: { label: function (item) {
              return item.dataset.label + ": " + (item.parsed.y === null ? "—" : format(item.parsed.y));
            } } }
          },
          scales: {
            x: { ticks: { maxRotation: 0, autoSkip: true, maxTicksLimit: 8 } },
            y: { beginAtZero: true, ticks: { callback: function (value) { return format(value); } } }
          }
        }
      });
    });
  }

  function wireCopyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      if (button.dataset.wired) { return; }
      button.dataset.wired = "1";
      button.addEventListener("click", function () {
        var target = document.getElementById(button.dataset.copy);
        if (!target || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(target.textContent.trim()).then(function () {
          button.textContent = "Copied";
        });
      });
    });
  }

  function enhance() {
    drawCharts(document);
    wireCopyButtons(document);
  }

  document.addEventListener("DOMContentLoaded", enhance);
  document.addEventListener("htmx:afterSettle", enhance);
})();
