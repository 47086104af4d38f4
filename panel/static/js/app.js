// Shared by every page: times in the reader's local time zone, focus on error summaries.
// Loaded with `defer`; no inline script anywhere (strict CSP).
"use strict";

(() => {
  const formatter = new Intl.DateTimeFormat(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });

  /** Rewrite every <time data-epoch-ms> under `root` in local time (ISO stays in datetime). */
  function localiseTimes(root) {
    for (const node of root.querySelectorAll("time[data-epoch-ms]")) {
      const ms = Number(node.dataset.epochMs);
      if (!Number.isFinite(ms) || node.dataset.localised === "1") continue;
      node.textContent = formatter.format(new Date(ms));
      node.title = node.getAttribute("datetime") || "";
      node.dataset.localised = "1";
    }
  }

  /** A <time> element for epoch milliseconds, already in local time. */
  function timeElement(ms) {
    const node = document.createElement("time");
    node.dataset.epochMs = String(ms);
    node.setAttribute("datetime", new Date(ms).toISOString());
    node.textContent = new Date(ms).toISOString();
    localiseTimes(wrap(node));
    return node;
  }

  function wrap(node) {
    const holder = document.createElement("span");
    holder.append(node);
    return holder;
  }

  window.Provision = { localiseTimes, timeElement };

  document.addEventListener("DOMContentLoaded", () => {
    localiseTimes(document);
    const summary = document.getElementById("error-summary");
    if (summary) summary.focus();
  });
})();
