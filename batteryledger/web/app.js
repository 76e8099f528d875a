// batteryledger web page: plain DOM, no build step, no third-party code. Talks to the read-only /v1 API
// of the server that served it. Data from the ledger is only ever inserted as text (never as HTML).
"use strict";

(function () {
  const API = "v1";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ELEMENT_SYMBOLS = { li: "Li", ni: "Ni", co: "Co", mn: "Mn" };
  // The summary's named shares shown under each table (they overlap; the bar does not).
  const NAMED_SHARES = [
    ["us_extracted", "Mined in the US"],
    ["us_processed", "Processed in the US"],
    ["fta_or_us_extracted", "Mined in the US or an FTA country"],
    ["fta_or_us_processed", "Processed in the US or an FTA country"],
    ["north_america_processed", "Processed in North America"],
    ["recycled", "Recycled"],
    ["recycled_pre_consumer", "Recycled pre-consumer"],
    ["recycled_post_consumer", "Recycled post-consumer"],
    ["recycled_north_america", "Recycled in North America"],
    ["qualifying_30d", "Former 30D critical-mineral qualifying"],
    ["feoc_touched", "FEOC-touched"],
    ["unknown", "Unknown"],
  ];
  const ROLE_TEXT = {
    made: "Made",
    shipped: "Shipped",
    received: "Received",
    certified: "Supplier certification",
    consumed: "Consumed",
    corrected: "Correction",
  };
  const kgFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 });
  const kgWhole = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

  const $ = (id) => document.getElementById(id);
  let current = null; // the batch on show
  let nextCursor = null; // the batch list's next page
  let rejectionsBefore = null;

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

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  const pct = (x) => (x * 100).toFixed(1) + "%";
  const kg = (x) => kgFormat.format(Number(x)) + " kg";
  const kgShort = (x) => (Number(x) >= 1000 ? kgWhole.format(Number(x) / 1000) + " t" : kgWhole.format(Number(x)) + " kg");
  const day = (t) => String(t).slice(0, 10);
  const batchPath = (id) => "/batches/" + encodeURIComponent(id);

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // A credential (JWT or API key) for an API served with --auth: kept in this tab's sessionStorage only.
  const CREDENTIAL = "batteryledger.credential";
  function authHeader() {
    const c = sessionStorage.getItem(CREDENTIAL);
    return c ? { Authorization: "Bearer " + c } : {};
  }
  function setupCredential() {
    const form = document.getElementById("credential-form");
    if (!form) return;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = document.getElementById("credential-input").value.trim();
      if (v) sessionStorage.setItem(CREDENTIAL, v);
      window.location.reload();
    });
    document.getElementById("credential-clear").addEventListener("click", () => {
      sessionStorage.removeItem(CREDENTIAL);
      window.location.reload();
    });
    // Downloads are plain links; with a credential they are fetched with it and saved from memory.
    document.addEventListener("click", async (ev) => {
      const a = ev.target.closest && ev.target.closest("a[download]");
      if (!a || !sessionStorage.getItem(CREDENTIAL) || a.href.startsWith("blob:")) return;
      ev.preventDefault();
      const resp = await fetch(a.href, { headers: authHeader() });
      if (!resp.ok) return say("download refused: " + resp.status + " " + resp.statusText, true);
      const url = URL.createObjectURL(await resp.blob());
      const tmp = el("a", { href: url, download: a.getAttribute("download") || a.href.split("/").pop() });
      document.body.append(tmp);
      tmp.click();
      tmp.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }
  setupCredential();

  async function api(path, opts) {
    const o = opts || {};
    let resp;
    try {
      resp = await fetch(API + path, {
        method: o.method || "GET",
        body: o.body,
        headers: Object.assign({ Accept: o.text ? "text/plain" : "application/json" }, authHeader(), o.headers || {}),
      });
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
    return o.text ? resp.text() : resp.json();
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
      openBatch(id);
    });
    return a;
  }

  // -- screens ------------------------------------------------------------------------------------
  function showScreen(name) {
    for (const s of ["batch", "audit", "rejections"]) $("screen-" + s).hidden = s !== name;
    for (const a of document.querySelectorAll("nav a[data-screen]")) {
      if (a.dataset.screen === name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (name === "audit") loadExamples();
    if (name === "rejections") loadRejectionScreen();
  }

  // -- ledger-wide panels -------------------------------------------------------------------------
  let statusCache = null;
  async function loadStatus() {
    try {
      const s = await api("/status");
      statusCache = s;
      $("ledger-status").textContent =
        s.origin + " · " + s.entries + " entries · " + s.batches + " batches · " + s.facilities +
        " facilities · head " + s.head.slice(0, 16) + "…";
    } catch (err) {
      $("ledger-status").textContent = "Ledger status unavailable: " + err.message;
    }
  }

  // -- find ---------------------------------------------------------------------------------------
  function filters() {
    const q = new URLSearchParams();
    const prefix = $("batch-input").value.trim();
    if (prefix) q.set("prefix", prefix);
    for (const [id, key] of [["f-facility", "facility"], ["f-material", "material"], ["f-country", "country"], ["f-kind", "kind"]]) {
      const v = $(id).value.trim();
      if (v) q.set(key, v);
    }
    return q;
  }

  let suggestTimer = null;
  function suggest() {
    clearTimeout(suggestTimer);
    suggestTimer = setTimeout(async () => {
      const prefix = $("batch-input").value.trim();
      const list = $("batch-suggestions");
      if (!prefix) return list.replaceChildren();
      try {
        const page = await api("/batches?limit=10&prefix=" + encodeURIComponent(prefix));
        list.replaceChildren(...page.batches.map((b) => el("option", { value: b.batch_id, label: b.material + " · " + b.facility_id })));
      } catch (_) {
        list.replaceChildren();
      }
    }, 150);
  }

  async function listBatches(append) {
    const q = filters();
    q.set("limit", "25");
    if (append && nextCursor) q.set("cursor", nextCursor);
    try {
      const page = await api("/batches?" + q.toString());
      const body = $("results-table").tBodies[0];
      if (!append) body.replaceChildren();
      for (const b of page.batches) {
        body.append(
          el(
            "tr",
            { "data-batch": b.batch_id },
            el("td", {}, batchLink(b.batch_id)),
            el("td", { text: b.material }),
            el("td", { text: b.facility_id + " (" + b.country + ")" + (b.feoc ? " · FEOC" : "") }),
            el("td", { text: day(b.time) }),
            el("td", { class: "num", text: kg(b.kg) }),
          ),
        );
      }
      nextCursor = page.next_cursor;
      $("more-button").hidden = !nextCursor;
      $("results-caption").textContent = page.total + " batch" + (page.total === 1 ? "" : "es") + " match; showing " + body.rows.length + ".";
      $("results").hidden = false;
      say("");
    } catch (err) {
      say(err.message, true);
    }
  }

  // -- one batch ------------------------------------------------------------------------------------
  function renderFacts(b) {
    const dl = $("batch-facts");
    dl.replaceChildren();
    const rows = [
      ["Batch", b.batch_id],
      ["Material", b.material],
      ["Made by", b.facility_id + " in " + b.country + (b.feoc ? " · foreign entity of concern" : "")],
      ["Made", b.kind + " on " + day(b.time) + " (ledger entry " + b.seq + ")"],
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
    const transit = Object.entries(b.custody.in_transit).filter(([, q]) => Number(q) > 0);
    if (transit.length) rows.push(["In transit to", transit.map(([f, q]) => f + ": " + kg(q)).join(", ")]);
    if (b.external_feed.length) {
      rows.push([
        "Outside feed",
        b.external_feed
          .map((f) => kg(f.kg) + " " + f.description + " (" + (f.consumer === "pre" ? "pre" : "post") + "-consumer" + (f.origin_country ? ", from " + f.origin_country : "") + ")")
          .join("; ") + (b.external_feed_share === null ? "" : " — " + pct(b.external_feed_share) + " of its feed"),
      ]);
    }
    for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  }

  function sortableTable(headers, rows, caption) {
    // headers: [label, key, numeric]; rows: [{key: value, ...}] with `_cells` for display
    const table = el("table", { class: "origins" });
    if (caption) table.append(el("caption", { class: "visually-hidden", text: caption }));
    const head = el("tr");
    const body = el("tbody");
    let sortKey = null;
    let asc = false;
    function fill() {
      const sorted = rows.slice();
      if (sortKey !== null) {
        sorted.sort((a, b) => {
          const x = a[sortKey], y = b[sortKey];
          const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
      }
      body.replaceChildren(...sorted.map((r) => el("tr", {}, ...r._cells.map((c, i) => el("td", { class: headers[i][2] ? "num" : null }, c)))));
    }
    headers.forEach(([label, key, numeric]) => {
      const btn = el("button", { type: "button", class: "sort", text: label });
      const th = el("th", { scope: "col", class: numeric ? "num" : null, "aria-sort": "none" }, btn);
      btn.addEventListener("click", () => {
        asc = sortKey === key ? !asc : !numeric;
        sortKey = key;
        for (const other of head.children) other.setAttribute("aria-sort", "none");
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        fill();
      });
      head.append(th);
    });
    table.append(el("thead", {}, head), body);
    fill();
    return table;
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
      ? " Parents not in the ledger (their share counts as unknown): " + bd.missing_parents.join(", ") + "."
      : "";
    const basis = bd.ancestors === 0 ? "No ancestor batches: the origin is this batch's own step. "
      : "Computed over " + bd.ancestors + " ancestor batches. ";
    const recycled = bd.kind === "batch.recycled"
      ? " Recycling resets the origin: what this recycler recovered counts as recycled in its country; where it was mined before end of life no longer counts."
      : "";
    $("provenance-meta").textContent = basis + "FTA countries (rule pack): " + bd.fta_countries.join(", ") + "." + missing + recycled;
    $("provenance-json").href = API + batchPath(bd.batch_id) + "/provenance";

    const box = $("provenance");
    box.replaceChildren();
    const names = Object.keys(bd.elements);
    if (names.length === 0) {
      box.append(el("p", { text: "This batch declares no contained lithium, nickel, cobalt, manganese or graphite." }));
      return;
    }
    for (const name of names) {
      const e = bd.elements[name];
      const title = e.name + (ELEMENT_SYMBOLS[name] ? " (" + ELEMENT_SYMBOLS[name] + ")" : "");
      const described = e.origins.map((o) => o.label + " " + pct(o.share)).join("; ");
      const bar = el("div", { class: "bar", role: "img", "aria-label": title + ": " + described });
      for (const o of e.origins) {
        const seg = el("span", {
          class: "seg seg-" + o.category,
          "data-category": o.category,
          title: o.label + ": " + pct(o.share) + " (" + kg(o.kg) + ")",
        });
        seg.style.width = (o.share * 100).toFixed(3) + "%";
        if (o.share >= 0.12) seg.textContent = pct(o.share);
        bar.append(seg);
      }
      const rows = e.origins.map((o) => {
        const where = o.origin_text;
        const facilities = [...o.source_facilities, ...o.processing_facilities.filter((f) => !o.source_facilities.includes(f))];
        return {
          where, processed: o.processed_in || "", facilities: facilities.join(", "), feoc: o.feoc_touched ? 1 : 0,
          kg: o.kg, share: o.share,
          _cells: [
            el("span", {}, el("span", { class: "swatch seg-" + o.category, "aria-hidden": "true" }), where),
            o.processing_text,
            facilities.join(", ") || "—",
            o.feoc_touched ? el("strong", { class: "feoc-mark", text: "FEOC" }) : "no",
            kg(o.kg),
            pct(o.share),
          ],
        };
      });
      const table = sortableTable(
        [["Origin", "where", false], ["Last processing", "processed", false], ["Facilities", "facilities", false],
          ["FEOC-touched", "feoc", false], ["Mass", "kg", true], ["Share", "share", true]],
        rows,
        "Origins of " + title,
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
          table,
          el("details", {}, el("summary", { text: "Named shares (they overlap)" }), shares),
        ),
      );
    }
  }

  function timelineDetails(e) {
    const ev = e.event || {};
    if (e.kind === "batch.shipped") {
      const border = ev.from_country && ev.to_country && ev.from_country !== ev.to_country ? " · crosses " + ev.from_country + " → " + ev.to_country : "";
      return kg(ev.kg) + " to " + ev.to_facility_id + border + (ev.value_usd ? " · USD " + Number(ev.value_usd).toLocaleString("en-US") : "");
    }
    if (e.kind === "batch.received") return kg(ev.kg) + " received";
    if (e.kind === "supplier.certified") return ev.statement + (ev.reference ? " (" + ev.reference + ")" : "");
    if (e.kind === "correction") return ev.reason + ": " + ev.explanation;
    const outs = (ev.outputs || []).map((o) => o.batch_id + " " + kg(o.kg));
    const ins = (ev.inputs || []).map((i) => i.batch_id + " " + kg(i.kg));
    return (ins.length ? "from " + ins.join(", ") + "; " : "") + "made " + outs.join(", ");
  }

  function renderTimeline(data) {
    const body = $("timeline").tBodies[0];
    body.replaceChildren();
    for (const e of data.events) {
      body.append(
        el(
          "tr",
          { "data-role": e.role },
          el("td", { text: day(e.time) }),
          el("td", { text: (ROLE_TEXT[e.role] || e.role) + " (" + e.kind + ")" }),
          el("td", { text: e.facility_id }),
          el("td", { text: timelineDetails(e) }),
          el("td", {}, el("a", { href: e.entry_url, text: "entry " + e.seq }), " · ", el("a", { href: e.inclusion_proof_url, text: "proof" })),
        ),
      );
    }
  }

  // -- the flow graph (inline SVG) -----------------------------------------------------------------
  function lineageOptions() {
    const form = $("lineage-form");
    return { direction: form.elements.direction.value, depth: form.elements.depth.value };
  }

  async function loadGraph(batchId) {
    const { direction, depth } = lineageOptions();
    const q = "?direction=" + direction + "&depth=" + depth;
    $("graph-json").href = API + batchPath(batchId) + "/graph" + q;
    $("graph-dot").href = API + batchPath(batchId) + "/graph" + q + "&format=dot";
    const box = $("lineage");
    box.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
    try {
      const g = await api(batchPath(batchId) + "/graph" + q);
      if (current !== batchId) return;
      renderGraph(g);
    } catch (err) {
      box.replaceChildren(el("p", { class: "error", text: "Flow unavailable: " + err.message }));
    }
  }

  function renderGraph(g) {
    const box = $("lineage");
    box.replaceChildren();
    if (g.edges.length === 0) {
      box.append(el("p", { text: g.direction === "up" ? g.batch_id + " has no parent batches in the ledger (a mine lot, or its parents are missing)." : g.batch_id + " has not gone into any other batch yet." }));
      return;
    }
    const byId = Object.fromEntries(g.nodes.map((n) => [n.id, n]));
    const [w, h] = g.nodes[0].canvas;
    const pad = 8;
    const root = svg("svg", {
      viewBox: -pad + " " + -pad + " " + (w + 2 * pad) + " " + (h + 2 * pad),
      width: w + 2 * pad, height: h + 2 * pad, role: "img", class: "flow",
      "aria-label": (g.direction === "up" ? "Material flow into " : "Material flow out of ") + g.batch_id,
    });
    const maxKg = Math.max(...g.edges.map((e) => Number(e.kg)), 1);
    // bands first, boxes on top; each band leaves its source's right edge and enters its target's left
    const outY = {}, inY = {};
    for (const e of g.edges) {
      const s = byId[e.source], t = byId[e.target];
      if (!s || !t) continue;
      const sw = Math.max(2, 18 * Math.sqrt(Number(e.kg) / maxKg));
      const y1 = s.y + Math.min(s.h - 2, (outY[s.id] = (outY[s.id] || 4) ) ) + sw / 2;
      outY[s.id] += sw + 2;
      const y2 = t.y + Math.min(t.h - 2, (inY[t.id] = (inY[t.id] || 4))) + sw / 2;
      inY[t.id] += sw + 2;
      const x1 = s.x + s.w, x2 = t.x, mx = (x1 + x2) / 2;
      const path = svg("path", {
        d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2,
        class: "band" + (e.external ? " external" : "") + (s.feoc ? " feoc" : ""),
        "stroke-width": sw.toFixed(1),
      });
      path.append(svg("title", { text: e.source + " → " + e.target + ": " + kg(e.kg) }));
      root.append(path);
    }
    for (const n of g.nodes) {
      const cls = "node" + (n.external ? " external" : "") + (n.feoc ? " feoc" : "") + (n.missing ? " missing" : "") + (n.id === g.batch_id ? " focus" : "");
      const group = svg("g", { class: cls, "data-batch": n.id, transform: "translate(" + n.x + "," + n.y + ")" });
      group.append(svg("rect", { width: n.w, height: n.h, rx: 4 }));
      const line1 = n.external ? "Outside feed" : n.id;
      const line2 = n.external ? n.label : (n.material || "not in the ledger");
      const line3 = n.external ? (n.material + (n.country ? " · " + n.country : "") + " · " + kgShort(n.kg)) :
        (n.facility_id ? n.facility_id + " (" + n.country + ")" : "") + (n.kg ? " · " + kgShort(n.kg) : "") + (n.feoc ? " · FEOC" : "");
      const t = svg("text", { x: 6, y: 14, class: "label" });
      t.append(svg("tspan", { class: "id", text: clip(line1, 26) }));
      if (n.h >= 30) t.append(svg("tspan", { x: 6, dy: 13, text: clip(line2.replace(/_/g, " "), 28) }));
      if (n.h >= 44) t.append(svg("tspan", { x: 6, dy: 13, class: "small", text: clip(line3, 30) }));
      group.append(t);
      group.append(svg("title", { text: [n.external ? n.label : n.id, n.material, n.facility_id && n.facility_id + " (" + n.country + ")", n.kg && kg(n.kg), n.feoc && "foreign entity of concern"].filter(Boolean).join("\n") }));
      if (!n.external && !n.missing && n.id !== g.batch_id) {
        const link = svg("a", { href: "?batch=" + encodeURIComponent(n.id), class: "node-link" });
        link.addEventListener("click", (ev) => {
          if (ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
          ev.preventDefault();
          openBatch(n.id);
        });
        link.append(group);
        root.append(link);
      } else {
        root.append(group);
      }
    }
    box.append(root);
  }

  function clip(s, n) {
    s = String(s || "");
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  // -- the passport ---------------------------------------------------------------------------------
  function fieldValue(f, name) {
    if (f === undefined || f === null) return "—";
    let v = f.value;
    if (v && name === "manufacturerIdentification") return (v.legalEntity || "unregistered") + " (facility " + v.facilityId + ")";
    if (v && name === "manufacturingPlace") return v.country + " · facility " + v.facilityId;
    if (v && name === "criticalRawMaterials") return v.map((m) => m.material + " " + kg(m.mass)).join("; ");
    if (v === null || v === undefined) return "not recorded in the ledger";
    if (Array.isArray(v)) return v.map((x) => (typeof x === "object" ? Object.values(x).join(" ") : String(x))).join("; ");
    if (typeof v === "object") v = Object.entries(v).map(([k, x]) => k + ": " + x).join(", ");
    return String(v) + (f.unit ? " " + f.unit : "");
  }

  function entryLinks(f) {
    const span = el("span", { class: "entries small" });
    const list = (f && f.entries) || [];
    list.slice(0, 6).forEach((s, i) => span.append(i ? ", " : "", el("a", { href: API + "/entries/" + s, text: "#" + s })));
    if (list.length > 6) span.append(" and " + (list.length - 6) + " more");
    return span;
  }

  function renderPassport(p) {
    const box = $("passport-fields");
    box.replaceChildren();
    const gp = p.generalProductInformation, mc = p.materialComposition, perf = p.performance;
    const rows = [
      ["batteryPassportIdentifier", "Passport id", { value: p.batteryPassportIdentifier, entries: [] }],
      ["batteryIdentifier", "Battery (lot) id", gp.batteryIdentifier],
      ["manufacturerIdentification", "Manufacturer", gp.manufacturerIdentification],
      ["manufacturingPlace", "Place of manufacture", gp.manufacturingPlace],
      ["manufacturingDate", "Date of manufacture", gp.manufacturingDate],
      ["batteryMass", "Mass per unit", gp.batteryMass],
      ["units", "Units in the lot", gp.units],
      ["batteryChemistry", "Chemistry (cathode)", mc.batteryChemistry],
      ["ratedEnergy", "Rated energy (lot)", perf.ratedEnergy],
      ["originalPowerCapability", "Power capability (lot)", perf.originalPowerCapability],
      ["criticalRawMaterials", "Critical raw materials (lot)", mc.criticalRawMaterials],
    ];
    const table = el("table", { class: "passport-table" });
    const body = el("tbody");
    for (const [name, label, f] of rows) {
      body.append(el("tr", { "data-field": name }, el("th", { scope: "row" }, label, el("div", { class: "muted small", text: name })), el("td", { text: fieldValue(f, name) }), el("td", {}, entryLinks(f))));
    }
    for (const r of p.circularity.recycledContent) {
      const text = r.preConsumerShare.value === null ? "not tracked" : "pre-consumer " + r.preConsumerShare.value.toFixed(1) + "% · post-consumer " + r.postConsumerShare.value.toFixed(1) + "%";
      body.append(el("tr", { "data-field": "recycledContent-" + r.recycledMaterial }, el("th", { scope: "row" }, "Recycled " + r.recycledMaterial, el("div", { class: "muted small", text: "recycledContent" })), el("td", { text: text }), el("td", {}, entryLinks(r.preConsumerShare))));
    }
    table.append(body);
    const origins = el("details", {}, el("summary", { text: "Material origins (" + mc.materialOrigins.value.length + ")" }),
      el("ul", {}, ...mc.materialOrigins.value.map((o) => el("li", { text: o.material + ": " + o.origin + " — " + kg(o.mass) + " (" + o.share.toFixed(1) + "%)" }))));
    box.append(table, origins, el("p", { class: "muted small", text: "Not derivable from the ledger: " + p.notDerivable.join(", ") + "." }));
    $("passport-qr").src = API + batchPath(p.generalProductInformation.batteryIdentifier.value) + "/passport/qr.svg";
    $("passport-link").href = p.permalink;
    $("passport-json").href = API + batchPath(p.generalProductInformation.batteryIdentifier.value) + "/passport";
  }

  // -- opening a batch --------------------------------------------------------------------------------
  const BATCH_SECTIONS = ["batch-section", "provenance-section", "timeline-section", "lineage-section"];

  async function search(batchId, focusPassport) {
    current = batchId;
    showScreen("batch");
    say("Looking up " + batchId + "…");
    try {
      const path = batchPath(batchId);
      const [facts, breakdown, timeline] = await Promise.all([api(path), api(path + "/provenance/breakdown"), api(path + "/events")]);
      if (current !== batchId) return;
      renderFacts(facts);
      breakdown.kind = facts.kind;
      renderProvenance(breakdown);
      if (!new URLSearchParams(window.location.search).get("direction")) {
        // a mine lot has nothing upstream: show where it went instead
        $("lineage-form").elements.direction.value = facts.stage === "extraction" ? "down" : "up";
      }
      renderTimeline(timeline);
      for (const id of BATCH_SECTIONS) $(id).hidden = false;
      const hasPassport = ["cells.produced", "modules.assembled", "packs.assembled"].includes(facts.kind);
      $("passport-section").hidden = !hasPassport;
      $("passport-jump").hidden = !hasPassport;
      $("results").hidden = true;
      say("Showing " + batchId + ".");
      document.title = batchId + " · batteryledger";
      const jobs = [loadGraph(batchId)];
      if (hasPassport) jobs.push(api(path + "/passport").then((p) => current === batchId && renderPassport(p)));
      await Promise.all(jobs);
      if (focusPassport && hasPassport) $("passport-section").scrollIntoView();
    } catch (err) {
      if (current !== batchId) return;
      for (const id of [...BATCH_SECTIONS, "passport-section"]) $(id).hidden = true;
      say(err.status === 404 || err.status === 422 ? err.message : "Could not load " + batchId + ": " + err.message, true);
    }
  }

  function openBatch(batchId) {
    $("batch-input").value = batchId;
    const url = new URL(window.location.href);
    url.search = "?batch=" + encodeURIComponent(batchId);
    window.history.pushState({ batch: batchId }, "", url);
    search(batchId);
    window.scrollTo(0, 0);
  }

  // -- audits -----------------------------------------------------------------------------------------
  let examplesLoaded = false;
  async function loadExamples() {
    if (examplesLoaded) return;
    examplesLoaded = true;
    try {
      const data = await api("/audits/examples");
      $("audit-example").append(...data.examples.map((e) => el("option", { value: e.name, text: e.title + " (" + e.name + ")" })));
    } catch (err) {
      $("audit-message").textContent = "Examples unavailable: " + err.message;
    }
  }

  function blobUrl(text, type) {
    return URL.createObjectURL(new Blob([text], { type }));
  }

  async function runAudit() {
    const claim = $("audit-claim").value;
    const msg = $("audit-message");
    msg.classList.remove("error");
    if (!claim.trim()) {
      msg.textContent = "Paste a claim or choose an example first.";
      msg.classList.add("error");
      return;
    }
    msg.textContent = "Auditing…";
    try {
      const headers = { "Content-Type": "text/yaml" };
      const [result, report] = await Promise.all([
        api("/audits", { method: "POST", body: claim, headers }),
        api("/audits?format=html", { method: "POST", body: claim, headers, text: true }),
      ]);
      renderFinding(result, report);
      msg.textContent = "Audited against the ledger as it is now.";
    } catch (err) {
      $("audit-result").hidden = true;
      msg.textContent = err.message;
      msg.classList.add("error");
    }
  }

  function show(v) {
    if (v === null || v === undefined) return "";
    if (Array.isArray(v)) return v.join(", ");
    if (typeof v === "boolean") return v ? "yes" : "no";
    return String(v);
  }

  function renderFinding(r, report) {
    const status = $("audit-status");
    status.textContent = (r.claim && r.claim.title ? r.claim.title + ": " : "") + r.status.replace("_", " ").toUpperCase();
    status.className = "status status-" + r.status;
    const body = $("audit-requirements").tBodies[0];
    body.replaceChildren();
    const walk = (req, depth) => {
      const name = el("td", { text: req.name });
      name.style.paddingLeft = 0.4 + depth * 1.2 + "rem"; // CSSOM, allowed by the page's CSP
      body.append(el("tr", { "data-passed": String(req.passed) },
        name,
        el("td", { class: req.passed ? "pass" : "fail", text: req.passed === null ? "n/a" : req.passed ? "pass" : "fail" }),
        el("td", { class: "num", text: show(req.value) }),
        el("td", { class: "num", text: (req.comparison && req.threshold !== null ? req.comparison + " " : "") + show(req.threshold) + (req.threshold_year ? " (" + req.threshold_year + ")" : "") })));
      for (const c of req.children || []) walk(c, depth + 1);
    };
    for (const req of r.requirements || []) walk(req, 0);
    $("audit-html").href = blobUrl(report, "text/html");
    $("audit-json").href = blobUrl(JSON.stringify(r, null, 2), "application/json");
    const bundles = $("audit-bundles");
    bundles.replaceChildren(...(r.bundle_urls || []).flatMap((u, i) => [i ? " · " : "", el("a", { href: u, download: "", class: "bundle-link", text: "evidence bundle " + decodeURIComponent(u.split("/batches/")[1].replace(/\/bundle$/, "")) })]));
    $("audit-result").hidden = false;
  }

  // -- rejections -------------------------------------------------------------------------------------
  function renderRejectionCounts(counts) {
    const body = $("rejections").tBodies[0];
    body.replaceChildren();
    const reasons = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
    if (reasons.length === 0) {
      body.append(el("tr", {}, el("td", { colspan: 2, text: "No rejected events." })));
      return;
    }
    let total = 0;
    const select = $("rejection-reason");
    const keep = select.value;
    select.replaceChildren(el("option", { value: "", text: "all" }));
    for (const r of reasons) {
      total += counts[r];
      const link = el("a", { href: "?screen=rejections&reason=" + encodeURIComponent(r) }, el("code", { text: r }));
      link.addEventListener("click", (ev) => {
        ev.preventDefault();
        select.value = r;
        loadRejections(false);
      });
      body.append(el("tr", { "data-reason": r }, el("td", {}, link), el("td", { class: "num", text: counts[r] })));
      select.append(el("option", { value: r, text: r }));
    }
    select.value = keep;
    body.append(el("tr", { class: "total" }, el("th", { scope: "row", text: "Total" }), el("td", { class: "num", text: total })));
  }

  async function loadRejectionScreen() {
    try {
      const s = statusCache || (await api("/status"));
      renderRejectionCounts(s.rejections || {});
    } catch (err) {
      $("rejections").tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: 2, text: "Unavailable: " + err.message })));
    }
    try {
      $("checkpoint").textContent = await api("/checkpoint", { text: true });
    } catch (err) {
      $("checkpoint").textContent = err.status === 404 ? "No checkpoint has been signed yet." : "Unavailable: " + err.message;
    }
    const reason = new URLSearchParams(window.location.search).get("reason");
    if (reason) $("rejection-reason").value = reason;
    loadRejections(false);
  }

  async function loadRejections(append) {
    const reason = $("rejection-reason").value;
    const q = new URLSearchParams({ limit: "50" });
    if (reason) q.set("reason", reason);
    if (append && rejectionsBefore) q.set("before", rejectionsBefore);
    const body = $("rejection-list").tBodies[0];
    try {
      const page = await api("/rejections?" + q.toString());
      if (!append) body.replaceChildren();
      for (const r of page.rejections) {
        const open = el("a", { href: "#rejection-detail", text: String(r.id) });
        open.addEventListener("click", (ev) => {
          ev.preventDefault();
          showRejection(r.id);
        });
        body.append(el("tr", { "data-rejection": r.id }, el("td", { class: "num" }, open), el("td", {}, el("code", { text: r.reason })),
          el("td", { text: r.detail }), el("td", { class: "small", text: r.source }), el("td", { text: day(r.created_at) })));
      }
      if (!body.rows.length) body.append(el("tr", {}, el("td", { colspan: 5, text: "No rejected events." })));
      rejectionsBefore = page.next_before;
      $("rejections-more").hidden = !rejectionsBefore;
    } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "error", text: err.message })));
    }
  }

  async function showRejection(id) {
    const r = await api("/rejections/" + id);
    $("rejection-detail-heading").textContent = "Rejection " + r.id + ": " + r.reason;
    const dl = $("rejection-facts");
    dl.replaceChildren();
    for (const [k, v] of [["Reason", r.reason], ["Detail", r.detail], ["Source", r.source], ["Received", r.created_at], ["Event id", r.event_id || "none (not a valid event)"], ["Bytes", r.raw_size + " bytes, SHA-256 " + r.raw_sha256]]) {
      dl.append(el("dt", { text: k }), el("dd", { text: v }));
    }
    $("rejection-payload").textContent = r.raw_json !== null ? JSON.stringify(r.raw_json, null, 2) : r.raw_text !== null ? r.raw_text : "(not UTF-8) base64: " + r.raw_base64;
    $("rejection-detail").hidden = false;
    $("rejection-detail").scrollIntoView();
  }

  // -- routing ------------------------------------------------------------------------------------------
  function fromUrl() {
    const params = new URLSearchParams(window.location.search);
    const screen = params.get("screen");
    const batchId = (params.get("batch") || "").trim();
    const direction = params.get("direction");
    if (direction === "up" || direction === "down") $("lineage-form").elements.direction.value = direction;
    if (screen === "audit" || screen === "rejections") {
      showScreen(screen);
    } else if (batchId) {
      $("batch-input").value = batchId;
      search(batchId, params.get("view") === "passport");
    } else {
      showScreen("batch");
    }
  }

  function start() {
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const batchId = $("batch-input").value.trim();
      if (!batchId) {
        listBatches(false);
        return;
      }
      openBatch(batchId);
    });
    $("batch-input").addEventListener("input", suggest);
    $("list-button").addEventListener("click", () => listBatches(false));
    $("more-button").addEventListener("click", () => listBatches(true));
    $("lineage-form").addEventListener("change", () => {
      if (current) loadGraph(current);
    });
    for (const a of document.querySelectorAll("nav a[data-screen]")) {
      a.addEventListener("click", (ev) => {
        if (ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
        ev.preventDefault();
        window.history.pushState({}, "", a.getAttribute("href"));
        fromUrl();
      });
    }
    $("audit-example").addEventListener("change", async () => {
      const name = $("audit-example").value;
      if (!name) return;
      try {
        $("audit-claim").value = await api("/audits/examples/" + encodeURIComponent(name), { text: true });
      } catch (err) {
        $("audit-message").textContent = err.message;
      }
    });
    $("audit-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      runAudit();
    });
    $("rejection-reason").addEventListener("change", () => loadRejections(false));
    $("rejections-more").addEventListener("click", () => loadRejections(true));
    window.addEventListener("popstate", fromUrl);
    loadStatus();
    fromUrl();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
