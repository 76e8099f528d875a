// batteryledger web page: plain DOM, no build step, no third-party code. Talks to the read-only /v1 API
// of the server that served it. Data from the ledger is only ever inserted as text (never as HTML).
"use strict";

(function () {
  const API = "v1";
  const ELEMENT_NAMES = { li: "Lithium", ni: "Nickel", co: "Cobalt", mn: "Manganese", graphite: "Graphite" };
  const ELEMENT_SYMBOLS = { li: "Li", ni: "Ni", co: "Co", mn: "Mn" };
  // The summary's named shares shown under each bar (they overlap; the bar does not).
  const NAMED_SHARES = [
    ["us_extracted", "US extracted"],
    ["us_processed", "US processed"],
    ["fta_or_us_extracted", "US/FTA extracted"],
    ["fta_or_us_processed", "US/FTA processed"],
    ["north_america_processed", "North America processed"],
    ["recycled", "Recycled"],
    ["recycled_pre_consumer", "Recycled pre-consumer"],
    ["recycled_post_consumer", "Recycled post-consumer"],
    ["qualifying_30d", "30D qualifying"],
    ["feoc_touched", "FEOC-touched"],
    ["unknown", "Unknown"],
  ];
  const kgFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 });

  const $ = (id) => document.getElementById(id);
  let current = null; // the batch on show

  // -- helpers ----------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function pct(x) {
    return (x * 100).toFixed(1) + "%";
  }

  function kg(x) {
    return kgFormat.format(Number(x)) + " kg";
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path, asText) {
    let resp;
    try {
      resp = await fetch(API + path, { headers: { Accept: asText ? "text/plain" : "application/json" } });
    } catch (err) {
      throw new ApiError(0, "the ledger server is not answering (" + err.message + ")");
    }
    if (!resp.ok) {
      let detail = resp.status + " " + resp.statusText;
      try {
        const problem = await resp.json();
        if (problem && problem.detail) detail = problem.detail;
      } catch (_) {
        /* not a problem document: keep the status line */
      }
      throw new ApiError(resp.status, detail);
    }
    return asText ? resp.text() : resp.json();
  }

  function say(text, isError) {
    const m = $("message");
    m.textContent = text;
    m.classList.toggle("error", Boolean(isError));
  }

  function batchLink(id) {
    const a = el("a", { href: "?batch=" + encodeURIComponent(id), class: "batch-link", text: id });
    a.addEventListener("click", (ev) => {
      if (ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
      ev.preventDefault();
      $("batch-input").value = id;
      navigate(id);
    });
    return a;
  }

  // -- ledger-wide panels -------------------------------------------------------------------------
  async function loadStatus() {
    try {
      const s = await api("/status");
      $("ledger-status").textContent =
        s.origin + " · " + s.entries + " entries · " + s.batches + " batches · " + s.facilities +
        " facilities · head " + s.head.slice(0, 16) + "…";
      renderRejections(s.rejections || {});
    } catch (err) {
      $("ledger-status").textContent = "Ledger status unavailable: " + err.message;
      renderRejections(null, err.message);
    }
  }

  function renderRejections(counts, error) {
    const body = $("rejections").tBodies[0];
    body.replaceChildren();
    if (counts === null) {
      body.append(el("tr", {}, el("td", { colspan: 2, text: "Unavailable: " + error })));
      return;
    }
    const reasons = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
    if (reasons.length === 0) {
      body.append(el("tr", {}, el("td", { colspan: 2, text: "No rejected events." })));
      return;
    }
    let total = 0;
    for (const r of reasons) {
      total += counts[r];
      const link = el("a", { href: API + "/rejections?reason=" + encodeURIComponent(r) }, el("code", { text: r }));
      body.append(el("tr", { "data-reason": r }, el("td", {}, link), el("td", { class: "num", text: counts[r] })));
    }
    body.append(el("tr", { class: "total" }, el("th", { scope: "row", text: "Total" }), el("td", { class: "num", text: total })));
  }

  async function loadCheckpoint() {
    const pre = $("checkpoint");
    try {
      pre.textContent = await api("/checkpoint", true);
    } catch (err) {
      pre.textContent = err.status === 404 ? "No checkpoint has been signed yet." : "Unavailable: " + err.message;
    }
  }

  // -- one batch ------------------------------------------------------------------------------------
  function renderFacts(b) {
    const dl = $("batch-facts");
    dl.replaceChildren();
    const rows = [
      ["Batch", b.batch_id],
      ["Material", b.material],
      ["Made by", b.facility_id + " (" + b.country + ")" + (b.feoc ? " · FEOC" : "")],
      ["Event", b.kind + " at " + b.time + ", entry " + b.seq],
      ["Mass", kg(b.kg) + " (" + kg(b.available_kg) + " not yet consumed)"],
      ["Value", b.value_usd === null ? "not declared" : "USD " + Number(b.value_usd).toLocaleString("en-US")],
      [
        "Held by",
        Object.entries(b.custody.holders)
          .filter(([, q]) => Number(q) > 0)
          .map(([f, q]) => f + ": " + kg(q))
          .join(", ") || "nobody (all consumed or shipped)",
      ],
    ];
    for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  }

  function renderProvenance(bd) {
    const labels = Object.fromEntries(bd.categories.map((c) => [c.key, c]));
    const present = new Set();
    for (const e of Object.values(bd.elements)) for (const s of e.segments) present.add(s.category);

    const legend = $("legend");
    legend.replaceChildren();
    for (const c of bd.categories) {
      if (!present.has(c.key)) continue;
      legend.append(el("li", { title: c.description }, el("span", { class: "swatch seg-" + c.key, "aria-hidden": "true" }), c.label));
    }

    const missing = bd.missing_parents.length
      ? " Parents not in the ledger (counted as unknown): " + bd.missing_parents.join(", ") + "."
      : "";
    $("provenance-meta").textContent =
      "Mass balance over " + bd.ancestors + " ancestor batches; FTA countries per the rule pack: " +
      bd.fta_countries.join(", ") + "." + missing;
    $("provenance-json").href = API + "/batches/" + encodeURIComponent(bd.batch_id) + "/provenance";

    const box = $("provenance");
    box.replaceChildren();
    const names = Object.keys(bd.elements);
    if (names.length === 0) {
      box.append(el("p", { text: "This batch declares no contained Li, Ni, Co, Mn or graphite." }));
      return;
    }
    for (const name of names) {
      const e = bd.elements[name];
      const title = (ELEMENT_NAMES[name] || name) + (ELEMENT_SYMBOLS[name] ? " (" + ELEMENT_SYMBOLS[name] + ")" : "");
      const described = e.segments.map((s) => labels[s.category].label + " " + pct(s.share)).join(", ");
      const bar = el("div", { class: "bar", role: "img", "aria-label": title + ": " + described });
      for (const s of e.segments) {
        const seg = el("span", {
          class: "seg seg-" + s.category,
          "data-category": s.category,
          title: labels[s.category].label + ": " + pct(s.share) + " (" + kg(s.kg) + ")",
        });
        seg.style.width = (s.share * 100).toFixed(3) + "%";
        if (s.share >= 0.09) seg.textContent = pct(s.share);
        bar.append(seg);
      }
      const legendText = el(
        "p",
        { class: "seg-text" },
        ...e.segments.flatMap((s, i) => [
          i ? " · " : "",
          el("span", { class: "swatch seg-" + s.category, "aria-hidden": "true" }),
          labels[s.category].label + " " + pct(s.share) + " (" + kg(s.kg) + ")",
        ]),
      );
      const shares = el("dl", { class: "shares" });
      for (const [key, label] of NAMED_SHARES) {
        if (!(key in e.shares)) continue;
        shares.append(el("div", {}, el("dt", { text: label }), el("dd", { text: pct(e.shares[key]) })));
      }
      box.append(
        el(
          "article",
          { class: "element-row", "data-element": name, "aria-labelledby": "element-" + name },
          el("h3", { id: "element-" + name }, title, " ", el("span", { class: "muted", text: kg(e.contained_kg) + " contained" })),
          bar,
          legendText,
          shares,
        ),
      );
    }
  }

  function lineageOptions() {
    const form = $("lineage-form");
    return { direction: form.elements.direction.value, depth: form.elements.depth.value };
  }

  async function loadLineage(batchId) {
    const { direction, depth } = lineageOptions();
    const box = $("lineage");
    box.replaceChildren(el("p", { class: "muted", text: "Loading lineage…" }));
    try {
      const data = await api(
        "/batches/" + encodeURIComponent(batchId) + "/lineage?direction=" + direction + "&depth=" + depth,
      );
      if (current !== batchId) return; // another search started meanwhile
      renderLineage(data);
    } catch (err) {
      box.replaceChildren(el("p", { class: "error", text: "Lineage unavailable: " + err.message }));
    }
  }

  function renderLineage(data) {
    const up = data.direction === "up";
    const next = new Map(); // node -> edges leading further out
    const info = new Map(); // batch id -> {material, facility, country}
    for (const e of data.edges) {
      const from = up ? e.child : e.parent;
      if (!next.has(from)) next.set(from, []);
      next.get(from).push(e);
      info.set(e.parent, { material: e.parent_material, facility: e.parent_facility, country: e.parent_country });
      info.set(e.child, { material: e.child_material, facility: e.child_facility, country: e.child_country });
    }
    const expanded = new Set();

    function describe(id) {
      const i = info.get(id);
      if (!i) return "";
      const parts = [];
      if (i.material) parts.push(i.material);
      if (i.facility) parts.push(i.facility + (i.country ? " (" + i.country + ")" : ""));
      return parts.join(" · ");
    }

    function branch(id) {
      const edges = next.get(id) || [];
      if (!edges.length) return null;
      const ul = el("ul", {});
      for (const e of edges) {
        const other = up ? e.parent : e.child;
        const li = el(
          "li",
          { "data-batch": other },
          batchLink(other),
          " ",
          el("span", { class: "muted", text: describe(other) }),
          " ",
          el("span", { class: "edge-kg", text: (up ? "consumed " : "fed ") + kg(e.kg) }),
        );
        if (expanded.has(other) && next.has(other)) {
          li.append(" ", el("span", { class: "muted", text: "(branches shown above)" }));
        } else {
          expanded.add(other);
          const sub = branch(other);
          if (sub) li.append(sub);
        }
        ul.append(li);
      }
      return ul;
    }

    const box = $("lineage");
    box.replaceChildren();
    if (!data.edges.length) {
      box.append(el("p", { text: up ? data.batch_id + " has no parent batches in the ledger." : data.batch_id + " has not gone into any other batch yet." }));
      return;
    }
    expanded.add(data.batch_id);
    const root = el(
      "ul",
      { class: "tree", "aria-label": (up ? "Ancestors of " : "Descendants of ") + data.batch_id },
      el("li", {}, el("strong", { text: data.batch_id }), " ", el("span", { class: "muted", text: describe(data.batch_id) }), branch(data.batch_id)),
    );
    box.append(root);
    if (data.truncated) box.append(el("p", { class: "muted", text: "Only the nearest edges are shown." }));
  }

  async function search(batchId) {
    current = batchId;
    say("Looking up " + batchId + "…");
    try {
      const path = "/batches/" + encodeURIComponent(batchId);
      const [facts, breakdown] = await Promise.all([api(path), api(path + "/provenance/breakdown")]);
      if (current !== batchId) return;
      renderFacts(facts);
      renderProvenance(breakdown);
      for (const id of ["batch-section", "provenance-section", "lineage-section"]) $(id).hidden = false;
      say("Showing " + batchId + ".");
      document.title = batchId + " · batteryledger";
      await loadLineage(batchId);
    } catch (err) {
      if (current !== batchId) return;
      for (const id of ["batch-section", "provenance-section", "lineage-section"]) $(id).hidden = true;
      say(err.status === 404 || err.status === 422 ? err.message : "Could not load " + batchId + ": " + err.message, true);
    }
  }

  function navigate(batchId) {
    const url = new URL(window.location.href);
    url.searchParams.set("batch", batchId);
    window.history.pushState({ batch: batchId }, "", url);
    search(batchId);
  }

  function fromUrl() {
    const params = new URLSearchParams(window.location.search);
    const batchId = (params.get("batch") || "").trim();
    const direction = params.get("direction");
    if (direction === "up" || direction === "down") $("lineage-form").elements.direction.value = direction;
    if (batchId) {
      $("batch-input").value = batchId;
      search(batchId);
    }
  }

  function start() {
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const batchId = $("batch-input").value.trim();
      if (!batchId) {
        say("Enter a batch id.", true);
        $("batch-input").focus();
        return;
      }
      navigate(batchId);
    });
    $("lineage-form").addEventListener("change", () => {
      if (current) loadLineage(current);
    });
    window.addEventListener("popstate", fromUrl);
    loadStatus();
    loadCheckpoint();
    fromUrl();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
