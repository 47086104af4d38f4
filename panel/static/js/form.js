// The install form: `visible_if` applied live. A hidden field's wrapper gets `hidden` and its
// controls `disabled`, so the browser neither submits nor requires them (the server applies
// the same rule with core.validation, so this is comfort, not enforcement).
"use strict";

(() => {
  const form = document.getElementById("install-form");
  if (!form) return;

  const wrappers = new Map(); // field name -> wrapper element
  for (const node of form.querySelectorAll("[data-field]")) {
    wrappers.set(node.dataset.field, node);
  }

  const INTEGER = /^-?[0-9]+$/;
  const NUMBER = /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/;

  /** The field's current value, normalised like core.validation does, or null. */
  function currentValue(wrapper) {
    const type = wrapper.dataset.type;
    if (type === "boolean") {
      const box = wrapper.querySelector('input[type="checkbox"]');
      return box && box.checked ? "true" : "false";
    }
    if (type === "multiselect" || type === "password") return null;
    const control = wrapper.querySelector("input, select, textarea");
    if (!control) return null;
    const raw = control.value;
    if (raw === "") return null;
    if (type === "integer" || type === "port") {
      return INTEGER.test(raw) ? String(BigInt(raw)) : null;
    }
    if (type === "number") {
      if (!NUMBER.test(raw)) return null;
      const text = String(Number(raw));
      return text.includes("e") ? raw : text === "-0" ? "0" : text;
    }
    if (type === "hostname") return raw.toLowerCase();
    return raw;
  }

  function rules(wrapper) {
    try {
      return JSON.parse(wrapper.dataset.visibleIf || "{}");
    } catch {
      return {};
    }
  }

  function apply() {
    const memo = new Map();
    const visible = (name) => {
      if (memo.has(name)) return memo.get(name);
      memo.set(name, false); // cycles are refused when the manifest loads
      const wrapper = wrappers.get(name);
      let shown = Boolean(wrapper);
      if (wrapper) {
        for (const [other, wanted] of Object.entries(rules(wrapper))) {
          const otherWrapper = wrappers.get(other);
          if (!otherWrapper || !visible(other) || !wanted.includes(currentValue(otherWrapper))) {
            shown = false;
            break;
          }
        }
      }
      memo.set(name, shown);
      return shown;
    };
    for (const [name, wrapper] of wrappers) {
      if (!wrapper.dataset.visibleIf) continue;
      const shown = visible(name);
      wrapper.hidden = !shown;
      for (const control of wrapper.querySelectorAll("input, select, textarea")) {
        control.disabled = !shown;
      }
    }
  }

  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  apply();
})();
