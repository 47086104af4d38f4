// The job page, live: events and log lines arrive over Server-Sent Events from
// /api/jobs/<id>/stream and update the badge, the timeline and the log without a reload.
// The page was rendered with what existed then; the stream starts at the beginning, so what
// is already on the page is skipped (events by id, log lines by stream id). EventSource
// reconnects by itself and resends Last-Event-ID, so nothing is lost across a drop.
"use strict";

(() => {
  const root = document.getElementById("job");
  if (!root) return;

  const texts = JSON.parse(document.getElementById("job-texts")?.textContent || "{}");
  const TERMINAL = new Set(["succeeded", "failed"]);
  const SPECIAL_DETAIL = new Set(["inputs", "secret_fingerprints"]);
  const TIME_DETAIL = new Set(["next_retry_at", "expires_at"]);

  const $ = (id) => document.getElementById(id);
  const badge = $("job-badge");
  const live = $("job-live");
  const timeline = $("timeline");
  const log = $("log");
  const follow = $("log-follow");
  const countdown = $("retry-countdown");

  const seenEvents = new Set(
    [...timeline.querySelectorAll("[data-event-id]")].map((node) => node.dataset.eventId),
  );
  let lastLogId = log.dataset.lastId || "";
  let lastAttempt = log.dataset.lastAttempt === "" ? null : Number(log.dataset.lastAttempt);
  let state = root.dataset.state;

  const stateLabel = (name) => (texts.states && texts.states[name]) || name || "Unknown";

  /** Compare two stream ids ("ms-seq"); -1, 0 or 1. */
  function compareIds(a, b) {
    const [am, as] = a.split("-").map(BigInt);
    const [bm, bs] = b.split("-").map(BigInt);
    if (am !== bm) return am < bm ? -1 : 1;
    if (as !== bs) return as < bs ? -1 : 1;
    return 0;
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    node.append(...children.filter((child) => child !== null && child !== undefined));
    return node;
  }

  function badgeFor(name, small) {
    return el("span", {
      className: `badge badge-${name || "none"}${small ? " badge-sm" : ""}`,
      text: stateLabel(name),
    });
  }

  function shortValue(value) {
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (Array.isArray(value)) return value.map(shortValue).join(", ");
    if (value && typeof value === "object") {
      return Object.entries(value)
        .map(([k, v]) => `${k}: ${shortValue(v)}`)
        .join("; ");
    }
    const text = value === null || value === undefined ? "" : String(value);
    return text.startsWith("sha256:") && text.length > 23 ? `${text.slice(0, 19)}…` : text;
  }

  function eventItem(event) {
    const detail = event.detail || {};
    const head = el(
      "div",
      { className: "event-head" },
      el("span", { className: "event-trigger", text: event.trigger }),
      el(
        "span",
        { className: "event-transition" },
        event.src ? badgeFor(event.src, true) : el("span", { className: "muted", text: "new" }),
        " ",
        el("span", { "aria-hidden": "true", text: "→" }),
        el("span", { className: "visually-hidden", text: "to" }),
        " ",
        badgeFor(event.dst, true),
      ),
    );
    const meta = el(
      "p",
      { className: "event-meta" },
      window.Provision.timeElement(event.at),
      " · by ",
      el("code", { text: event.actor }),
    );
    if (event.attempt) meta.append(` · attempt ${event.attempt}`);
    const item = el("li", { className: "event", "data-event-id": event.event_id }, head, meta);

    const rows = [];
    for (const [key, value] of Object.entries(detail)) {
      if (SPECIAL_DETAIL.has(key)) continue;
      const dd = el("dd");
      if (TIME_DETAIL.has(key) && Number.isInteger(value)) dd.append(window.Provision.timeElement(value));
      else dd.textContent = shortValue(value);
      rows.push(el("div", {}, el("dt", { text: key }), dd));
    }
    const secrets = detail.secret_fingerprints;
    const secretNames = secrets && typeof secrets === "object" ? Object.keys(secrets) : [];
    if (secretNames.length) {
      const text = secretNames.map((name) => `${name} (set)`).join(", ");
      rows.push(el("div", {}, el("dt", { text: "secrets" }), el("dd", { text })));
    }
    if (rows.length) item.append(el("dl", { className: "event-detail" }, ...rows));

    if (event.trigger === "submit") {
      const inputs = detail.inputs && typeof detail.inputs === "object" ? detail.inputs : {};
      const body = el("tbody");
      for (const [name, value] of Object.entries(inputs)) {
        body.append(el("tr", {}, el("th", { scope: "row" }, el("code", { text: name })), el("td", { text: shortValue(value) || "(empty)" })));
      }
      for (const name of secretNames) {
        body.append(el("tr", {}, el("th", { scope: "row" }, el("code", { text: name })), el("td", { text: "(set)" })));
      }
      if (body.children.length) {
        item.append(
          el(
            "table",
            { className: "inputs-table" },
            el("caption", { text: "Inputs" }),
            el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Input" }), el("th", { scope: "col", text: "Value" }))),
            body,
          ),
        );
      }
    }
    item.append(integrityDetails(event));
    return item;
  }

  /** The fields that chain and sign the event, as the page renders them (_job.html). */
  function integrityDetails(event) {
    const row = (term, value) => el("div", {}, el("dt", { text: term }), el("dd", {}, value));
    return el(
      "details",
      { className: "event-integrity" },
      el("summary", { text: "Integrity" }),
      el(
        "dl",
        {},
        row("event", el("code", { text: event.event_id })),
        row("hash", el("code", { className: "digest", text: event.hash })),
        row("prev", event.prev ? el("code", { className: "digest", text: event.prev }) : el("span", { className: "muted", text: "(first event)" })),
        row("key", el("code", { text: event.kid })),
      ),
    );
  }

  // Events that arrive live were not part of the check made when the page was rendered.
  let liveEvents = 0;
  function noteLiveEvent() {
    const note = $("chain-new");
    if (!note) return;
    liveEvents += 1;
    note.textContent = `· ${liveEvents} newer (reload to verify)`;
    note.hidden = false;
  }

  function setHidden(id, hidden) {
    const node = $(id);
    if (node) node.hidden = hidden;
  }

  function updateStatus(event) {
    state = event.dst;
    root.dataset.state = state;
    badge.className = `badge badge-lg badge-${state}`;
    badge.textContent = stateLabel(state);
    const detail = event.detail || {};
    if (event.attempt) {
      $("job-attempt-number").textContent = String(event.attempt);
      setHidden("job-attempt", false);
    }
    setHidden("retry-info", state !== "retry_wait");
    if (state === "retry_wait") {
      $("retry-attempt").textContent = String(event.attempt);
      const when = $("retry-when");
      when.replaceChildren();
      if (Number.isInteger(detail.next_retry_at)) {
        when.append(window.Provision.timeElement(detail.next_retry_at));
        countdown.dataset.countdownTo = String(detail.next_retry_at);
      }
      tick();
    }
    setHidden("success-info", state !== "succeeded");
    setHidden("failure-info", state !== "failed");
    if (state === "failed") {
      const reason = detail.reason || "";
      const [what, hint] = (texts.reasons && texts.reasons[reason]) || texts.unknown_reason || ["", ""];
      $("failure-what").textContent = what;
      $("failure-hint").textContent = hint;
      $("failure-code").textContent = reason || "unknown";
      const exitCode = Number.isInteger(detail.exit_code) ? String(detail.exit_code) : "";
      $("failure-exit-code").textContent = exitCode;
      setHidden("failure-exit", exitCode === "");
    }
    if (TERMINAL.has(state)) {
      setHidden("cancel-requested", true);
      $("cancel-form")?.remove();
      live.textContent = "Finished";
    }
  }

  function addEvent(event) {
    if (!event || seenEvents.has(event.event_id)) return;
    seenEvents.add(event.event_id);
    timeline.append(eventItem(event));
    noteLiveEvent();
    updateStatus(event);
  }

  function addLogLine(line) {
    if (!line || (lastLogId && compareIds(line.id, lastLogId) <= 0)) return;
    lastLogId = line.id;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    const empty = $("log-empty");
    if (line.attempt !== lastAttempt) {
      lastAttempt = line.attempt;
      log.insertBefore(el("div", { className: "log-sep", role: "separator", text: `Attempt ${line.attempt}` }), empty);
    }
    const stderr = line.stream === "stderr";
    log.insertBefore(
      el(
        "div",
        { className: `log-line log-${stderr ? "stderr" : "stdout"}`, "data-id": line.id },
        el("span", { className: "log-stream", text: stderr ? "err" : "out" }),
        el("span", { className: "log-text", text: line.line }),
      ),
      empty,
    );
    if (empty) empty.hidden = true;
    if (follow.checked || atBottom) scrollLog();
  }

  let scrollPending = false;
  function scrollLog() {
    if (scrollPending) return;
    scrollPending = true;
    requestAnimationFrame(() => {
      scrollPending = false;
      log.scrollTop = log.scrollHeight;
    });
  }

  function tick() {
    const due = Number(countdown.dataset.countdownTo);
    if (state !== "retry_wait" || !Number.isFinite(due) || due <= 0) return;
    const seconds = Math.ceil((due - Date.now()) / 1000);
    countdown.textContent = seconds > 0 ? `in ${seconds} s` : "due now";
  }

  function parse(message) {
    try {
      return JSON.parse(message.data);
    } catch {
      return null;
    }
  }

  follow.addEventListener("change", () => {
    if (follow.checked) scrollLog();
  });
  if (follow.checked) scrollLog();
  tick();
  setInterval(tick, 1000);

  if (!("EventSource" in window)) {
    live.textContent = "Live updates unavailable: reload to refresh";
    return;
  }
  const source = new EventSource(root.dataset.streamUrl);
  source.addEventListener("open", () => {
    live.textContent = TERMINAL.has(state) ? "Finished" : "Live";
    live.classList.remove("live-lost");
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      live.textContent = "Disconnected: reload to refresh";
    } else {
      live.textContent = "Reconnecting…";
    }
    live.classList.add("live-lost");
  });
  source.addEventListener("event", (message) => addEvent(parse(message)));
  source.addEventListener("log", (message) => addLogLine(parse(message)));
})();
