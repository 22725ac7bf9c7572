// mxguard web: streams a check's results into the page as the probes
// finish (server-sent events). Without this script the form still works:
// /check renders the whole result once the check is done.
"use strict";

(function () {
  const form = document.getElementById("lookup");
  const input = document.getElementById("domain");
  const main = document.getElementById("result");
  let source = null;

  function show(html) {
    main.innerHTML = html;
  }

  function message(text) {
    const section = document.createElement("section");
    section.className = "error";
    section.setAttribute("role", "alert");
    const p = document.createElement("p");
    p.textContent = text;
    section.appendChild(p);
    main.replaceChildren(section);
  }

  function check(domain) {
    if (source) source.close();
    const pending = document.createElement("section");
    pending.id = "verdict";
    pending.className = "verdict pending";
    pending.dataset.verdict = "pending";
    const h = document.createElement("h2");
    h.textContent = "Looking up " + domain + "…";
    pending.appendChild(h);
    main.replaceChildren(pending);
    let finished = false;
    source = new EventSource("/events?domain=" + encodeURIComponent(domain));
    source.addEventListener("planned", (e) => show(e.data));
    source.addEventListener("probe", (e) => {
      const p = JSON.parse(e.data);
      const row = document.getElementById(p.id);
      if (row) row.outerHTML = p.html;
    });
    const end = (e) => {
      finished = true;
      source.close();
      show(e.data);
      main.focus();
    };
    source.addEventListener("result", end);
    source.addEventListener("failure", end);
    source.onerror = () => {
      if (!finished) {
        source.close();
        message("The connection to the server was lost before the check finished; try again.");
      }
    };
  }

  if (form && input && main && window.EventSource) {
    form.addEventListener("submit", (e) => {
      const domain = input.value.trim();
      if (!domain) return;
      e.preventDefault();
      history.pushState(null, "", "/check?domain=" + encodeURIComponent(domain));
      check(domain);
    });
  }

  // The outage panel: fetch the timeline into the panel.
  document.addEventListener("submit", (e) => {
    const f = e.target;
    if (!(f instanceof HTMLFormElement) || f.id !== "outage-form") return;
    const out = document.getElementById("outage-result");
    if (!out) return;
    e.preventDefault();
    const params = new URLSearchParams(new FormData(f));
    params.set("fragment", "1");
    out.textContent = "Simulating…";
    fetch("/simulate?" + params.toString())
      .then((r) => r.text())
      .then((html) => { out.innerHTML = html; })
      .catch(() => { out.textContent = "The simulation could not be fetched; try again."; });
  });
})();
