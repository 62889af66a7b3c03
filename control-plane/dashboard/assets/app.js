// The Wardline dashboard. Every value from the replica is put into the page
// as text (textContent, attributes), never as markup, so that a name or an
// interface an agent reports cannot become script.
"use strict";

const VERDICTS = ["allowed", "audited", "dropped"];
// As app.css colours them (markers do not take the page's styles).
const COLOURS = { allowed: "#2e7d32", audited: "#c77700", dropped: "#c62828" };
const FLOW_FILTERS = ["verdict", "from", "to", "node", "port", "protocol", "policy", "reason", "since", "until", "last"];
const LIVE_EVERY_MS = 2000;

let generation = 0; // bumped by each view: a stale live refresh stops

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick" || k === "onsubmit" || k === "onchange") e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children.flat()) e.append(c instanceof Node ? c : String(c));
  return e;
}

class SignedOut extends Error {}

async function api(path, params) {
  const qs = params ? new URLSearchParams(params).toString() : "";
  const r = await fetch("/api/" + path + (qs ? "?" + qs : ""), { credentials: "same-origin", cache: "no-store" });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (r.status === 401) throw new SignedOut(body && body.error ? body.error : "signed out");
  if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
  return body;
}

function route() {
  const hash = location.hash.replace(/^#/, "");
  const q = hash.indexOf("?");
  const view = (q < 0 ? hash : hash.slice(0, q)) || "matrix";
  const params = new URLSearchParams(q < 0 ? "" : hash.slice(q + 1));
  return { view, params };
}

function go(view, params) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== undefined && v !== null) qs.set(k, v);
  const s = qs.toString();
  location.hash = view + (s ? "?" + s : "");
}

function verdictCell(v) {
  return el("td", { class: "verdict " + v }, v);
}

function num(n) {
  return el("td", { class: "num" }, Number(n).toLocaleString("en"));
}

function table(head, rows, attrs) {
  return el("div", { class: "scroll" },
    el("table", attrs || {}, el("thead", {}, el("tr", {}, head.map(h => el("th", {}, h)))), el("tbody", {}, rows)));
}

function sinceSelect(current, onchange) {
  const choices = [["15m", "15 minutes"], ["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]];
  return el("label", {}, "since",
    el("select", { name: "since", onchange }, choices.map(([v, t]) => el("option", { value: v, selected: v === current }, t))));
}

function flowLink(params, text, cls) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) qs.set(k, v);
  return el("a", { href: "#flows?" + qs.toString(), class: cls, "data-verdict": params.verdict }, text);
}

// The segment-to-segment matrix: connections by verdict; a number opens
// the flows behind it.
async function matrixView(main, params) {
  const since = params.get("since") || "1h";
  const m = await api("matrix", { since });
  const names = new Set(m.segments.map(s => s.name));
  for (const c of m.cells) { names.add(c.srcSegment); names.add(c.dstSegment); }
  const segs = [...names].sort();
  const counts = new Map();
  for (const c of m.cells) counts.set(c.srcSegment + "\u0000" + c.dstSegment + "\u0000" + c.verdict, c.connections);
  const rows = segs.map(src => el("tr", {}, el("th", {}, src), segs.map(dst => {
    const cell = el("td", { "data-src": src, "data-dst": dst });
    for (const v of VERDICTS) {
      const n = counts.get(src + "\u0000" + dst + "\u0000" + v);
      if (n) cell.append(flowLink({ from: src, to: dst, verdict: v, since }, n.toLocaleString("en") + " " + v, v));
    }
    return cell;
  })));
  main.append(
    el("h2", {}, "Segment matrix: connections from (rows) to (columns)"),
    el("form", { class: "filters" }, sinceSelect(since, e => go("matrix", { since: e.target.value }))),
    el("p", { class: "legend" }, VERDICTS.map(v => el("span", { class: v }, v))),
    table(["from \\ to", ...segs], rows, { class: "matrix" }),
    el("p", { class: "note" }, m.connections.toLocaleString("en") + " connections. Select a number to see its flows."));
}

// The flow table with the filters of `wardctl observe`; live refreshes it.
async function flowsView(main, params) {
  const my = generation;
  const form = el("form", { class: "filters" });
  const field = (name, label, placeholder) =>
    el("label", {}, label, el("input", { name, value: params.get(name) || "", placeholder, size: 14 }));
  form.append(
    el("label", {}, "verdict", el("select", { name: "verdict" },
      ["", ...VERDICTS].map(v => el("option", { value: v, selected: (params.get("verdict") || "") === v }, v || "any")))),
    field("from", "from", "segment, address, CIDR"),
    field("to", "to", "segment, address, CIDR"),
    field("port", "port", "443"),
    field("protocol", "protocol", "tcp"),
    field("policy", "policy", ""),
    field("node", "node", ""),
    field("since", "since", "1h or RFC 3339"),
    field("last", "rows", "200"),
    el("label", {}, "live", el("input", { type: "checkbox", name: "live", checked: params.get("live") === "1" })),
    el("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", e => {
    e.preventDefault();
    const p = {};
    for (const k of FLOW_FILTERS) { const i = form.elements.namedItem(k); if (i && i.value) p[k] = i.value.trim(); }
    if (form.elements.namedItem("live").checked) p.live = "1";
    go("flows", p);
  });
  const out = el("div", {});
  main.append(el("h2", {}, "Flows"), form, out);
  const query = {};
  for (const k of FLOW_FILTERS) if (params.get(k)) query[k] = params.get(k);
  const render = async () => {
    const r = await api("flows", query);
    const flows = r.flows.slice().reverse(); // newest first
    const rows = flows.map(f => el("tr", { "data-verdict": f.verdict, "data-policy": f.policy || "", "data-kind": f.kind },
      el("td", { title: f.time }, f.time.replace("T", " ").replace(/(\.\d{1,3})\d*Z$/, "$1").replace(/Z$/, "")),
      el("td", {}, f.node),
      el("td", {}, f.kind),
      el("td", {}, f.src + (f.sport ? ":" + f.sport : "")),
      el("td", {}, f.srcSegment),
      el("td", {}, f.dst + (f.dport ? ":" + f.dport : "")),
      el("td", {}, f.dstSegment),
      el("td", {}, f.protocol),
      verdictCell(f.verdict),
      el("td", {}, f.reason),
      el("td", {}, f.policy || ""),
      el("td", {}, f.vlan ? String(f.vlan) : ""),
      num(f.packets), num(f.bytes)));
    out.replaceChildren(
      table(["time", "node", "kind", "source", "segment", "destination", "segment", "proto", "verdict", "reason", "policy", "vlan", "packets", "bytes"], rows, { id: "flows" }),
      el("p", { class: "note", id: "flow-count" }, flows.length + " records (newest first, at most " + r.last + ")" +
        (params.get("live") === "1" ? "; live: refreshed every 2 s" : "")));
    ready();
  };
  await render();
  if (params.get("live") === "1") {
    const tick = async () => {
      if (my !== generation) return;
      try { await render(); } catch (e) { fail(e); return; }
      setTimeout(tick, LIVE_EVERY_MS);
    };
    setTimeout(tick, LIVE_EVERY_MS);
  }
}

// Sources of dropped connections, by connections: lateral movement tries
// many destinations and ports.
async function topView(main, params) {
  const since = params.get("since") || "1h";
  const r = await api("top", { by: "sources", verdict: "dropped", since, limit: "25" });
  const rows = r.entries.map(e => el("tr", { "data-src": e.src },
    el("td", {}, flowLink({ from: e.src, verdict: "dropped", since }, e.src)),
    el("td", {}, e.srcSegment),
    num(e.connections), num(e.destinations), el("td", {}, e.lastSeen)));
  main.append(
    el("h2", {}, "Top sources of dropped connections"),
    el("form", { class: "filters" }, sinceSelect(since, e => go("top", { since: e.target.value }))),
    table(["source", "segment", "dropped connections", "destinations and ports", "last seen"], rows, { id: "top" }),
    el("p", { class: "note" }, r.records.toLocaleString("en") + " records ranked" + (r.partial ? " (partial: more sources than are ranked at once)" : "") + "."));
}

// The segments on a circle and the connections between them, each pair
// coloured by verdict: one line for each verdict seen between them.
async function mapView(main, params) {
  const since = params.get("since") || "1h";
  const m = await api("matrix", { since });
  const mode = new Map(m.segments.map(s => [s.name, s.mode]));
  const names = new Set(m.segments.map(s => s.name));
  for (const c of m.cells) { names.add(c.srcSegment); names.add(c.dstSegment); }
  const segs = [...names].sort();
  const W = 900, H = 620, R = Math.min(W, H) / 2 - 70;
  const pos = new Map(segs.map((s, i) => {
    const a = (2 * Math.PI * i) / Math.max(segs.length, 1) - Math.PI / 2;
    return [s, { x: W / 2 + R * Math.cos(a), y: H / 2 + R * Math.sin(a) }];
  }));
  const pairs = new Map();
  for (const c of m.cells) {
    const k = c.srcSegment + "\u0000" + c.dstSegment;
    const p = pairs.get(k) || { src: c.srcSegment, dst: c.dstSegment, allowed: 0, audited: 0, dropped: 0 };
    p[c.verdict] = (p[c.verdict] || 0) + c.connections;
    pairs.set(k, p);
  }
  const root = svg("svg", { class: "map", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "segment map" },
    svg("defs", {}, VERDICTS.map(v => svg("marker", { id: "arrow-" + v, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: COLOURS[v] })))));
  for (const p of pairs.values()) {
    const a = pos.get(p.src), b = pos.get(p.dst);
    // One line per verdict seen, side by side, so that a pair with both
    // allowed and dropped connections shows both.
    VERDICTS.filter(v => p[v]).forEach((v, i, seen) => {
      const width = 1.5 + Math.log2(1 + p[v]);
      const title = svg("title", {}, `${p.src} → ${p.dst}: ${p[v]} ${v}`);
      let shape;
      if (p.src === p.dst) {
        const r = 40 + 12 * i;
        shape = svg("path", { d: `M${a.x - 12},${a.y - 30} C${a.x - r},${a.y - 2.4 * r} ${a.x + r},${a.y - 2.4 * r} ${a.x + 12},${a.y - 30}`, fill: "none", class: v, "stroke-width": width, "marker-end": `url(#arrow-${v})` });
      } else {
        // Shortened to the circles' edges, and set off to the right of
        // the direction of travel, so that both directions show.
        const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
        const ux = dx / len, uy = dy / len, off = 6 + 7 * (i - (seen.length - 1) / 2) + (seen.length > 1 ? 4 : 0);
        const ox = -uy * off, oy = ux * off;
        shape = svg("line", { x1: a.x + ux * 36 + ox, y1: a.y + uy * 36 + oy, x2: b.x - ux * 40 + ox, y2: b.y - uy * 40 + oy, class: v, "stroke-width": width, "marker-end": `url(#arrow-${v})` });
      }
      root.append(svg("g", { class: "edge", "data-src": p.src, "data-dst": p.dst, "data-verdict": v }, shape, title));
    });
  }
  for (const s of segs) {
    const { x, y } = pos.get(s);
    root.append(svg("g", { class: "node", "data-segment": s },
      svg("circle", { cx: x, cy: y, r: 34, class: "segment " + (mode.get(s) || "") }),
      svg("text", { x, y: y - 2 }, s),
      svg("text", { x, y: y + 13, class: "mode" }, mode.get(s) || "")));
  }
  main.append(
    el("h2", {}, "Segment map"),
    el("form", { class: "filters" }, sinceSelect(since, e => go("map", { since: e.target.value }))),
    el("p", { class: "legend" }, VERDICTS.map(v => el("span", { class: v }, v)), el("span", {}, "dashed: monitor mode")),
    root);
}

// Each agent: connected, the revision it acknowledged against the one in
// force, and how far behind.
async function agentsView(main) {
  const r = await api("agents");
  const rows = r.agents.map(a => el("tr", { "data-node": a.node, "data-connected": String(a.connected) },
    el("td", {}, a.node),
    el("td", { class: a.connected ? "good" : "bad" }, a.connected ? "connected" : "DISCONNECTED"),
    el("td", {}, a.admission),
    num(a.ackedRevision),
    el("td", { class: a.behind ? "bad" : "" }, a.ackedRevision >= r.revision ? "current" : (r.revision - a.ackedRevision) + " behind"),
    el("td", {}, a.lastHeartbeat),
    el("td", {}, a.replica),
    el("td", {}, a.addresses.join(" ")),
    el("td", { class: a.error ? "bad" : "" }, a.error || a.leftOut || a.certificate.warning || "")));
  main.append(
    el("h2", {}, "Agents: revision " + r.revision + " in force (replica " + r.replica + ")"),
    table(["node", "state", "admission", "acknowledged", "lag", "last heartbeat", "replica", "addresses", "problem"], rows, { id: "agents" }));
}

async function inventoryView(main, params) {
  const form = el("form", { class: "filters" },
    el("label", {}, "address", el("input", { name: "address", value: params.get("address") || "", placeholder: "address or CIDR" })),
    el("label", {}, "segment", el("input", { name: "segment", value: params.get("segment") || "" })),
    el("label", {}, "new only", el("input", { type: "checkbox", name: "new", checked: params.get("new") === "true" })),
    el("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", e => {
    e.preventDefault();
    go("inventory", {
      address: form.elements.namedItem("address").value.trim(),
      segment: form.elements.namedItem("segment").value.trim(),
      new: form.elements.namedItem("new").checked ? "true" : "",
    });
  });
  const q = {};
  for (const k of ["address", "segment", "new"]) if (params.get(k)) q[k] = params.get(k);
  const r = await api("inventory", q);
  const rows = r.devices.map(d => el("tr", { "data-address": d.address, "data-new": d.new ? "true" : "false" },
    el("td", {}, d.address),
    el("td", {}, d.mac || ""),
    el("td", {}, d.vlan ? String(d.vlan) : ""),
    el("td", {}, d.segment),
    el("td", {}, d.node),
    el("td", {}, d.firstSeen),
    el("td", {}, d.lastSeen),
    num(d.connections), num(d.dropped),
    el("td", {}, d.peers.join(" ") + (d.morePeers ? " …" : "")),
    el("td", {}, d.ports.map(p => p.protocol + "/" + p.port + (p.serves ? " (serves)" : "")).join(" ") + (d.morePorts ? " …" : "")),
    el("td", { class: d.new ? "bad" : "" }, d.new ? "NEW: " + d.new.reason : "")));
  main.append(
    el("h2", {}, "Device inventory"), form,
    table(["address", "MAC", "VLAN", "segment", "node", "first seen", "last seen", "connections", "dropped", "peers", "ports", "new"], rows, { id: "inventory" }),
    el("p", { class: "note" }, r.known.toLocaleString("en") + " devices known" + (r.refusedFull ? "; " + r.refusedFull + " not recorded (inventory full)" : "") + "."));
}

// Emergency access open now or not yet reviewed, and change requests
// waiting for a second person: what a change board looks at first.
async function governanceView(main) {
  const r = await api("agents");
  const grants = r.breakGlass.map(g => el("tr", { "data-grant": g.id, "data-state": g.state },
    el("td", {}, g.id),
    el("td", { class: g.state === "open" ? "bad" : "" }, g.state === "open" ? "OPEN" : "expired"),
    el("td", {}, g.from.join(", ") + " → " + g.to.join(", ")),
    el("td", {}, g.ports.length ? g.ports.join(" ") : "all"),
    el("td", {}, g.openedBy),
    el("td", {}, g.expires),
    el("td", {}, g.reason),
    el("td", { class: g.reviewOverdue ? "bad" : "" },
      g.reviewedBy ? "signed off by " + g.reviewedBy : (g.reviewOverdue ? "OVERDUE since " : "due by ") + g.reviewDue)));
  const changes = r.openChanges.map(c => el("tr", { "data-change": c.id, "data-state": c.state },
    el("td", {}, c.id),
    el("td", { class: c.state === "stale" ? "bad" : "" }, c.state),
    el("td", {}, c.author),
    num(c.baseRevision),
    el("td", {}, c.created),
    el("td", {}, c.needsApproval.join("; ") || "no"),
    el("td", { class: c.wouldDrop.length ? "bad" : "" }, c.wouldDrop.map(d =>
      d.srcSegment + " → " + d.dstSegment + " " + d.protocol + (d.port ? "/" + d.port : "") +
      " ×" + d.connections + " (last " + d.lastSeen + ")").join("; ") || "none"),
    el("td", {}, c.message)));
  const quarantines = r.quarantines.map(q => el("tr", { "data-quarantine": q.id },
    el("td", {}, q.id),
    el("td", { class: "bad" }, q.target),
    el("td", {}, q.addresses.join(" ")),
    el("td", {}, q.origin || "world"),
    el("td", {}, q.keep ? q.keep + " (" + q.keepPolicies.join(", ") + ")" : "nothing"),
    el("td", {}, q.by),
    el("td", {}, q.at),
    el("td", {}, q.reason)));
  const vendors = r.vendorGrants.map(g => el("tr", { "data-vendor-grant": g.id, "data-state": g.state },
    el("td", {}, g.id),
    el("td", { class: g.state === "open" ? "bad" : "" }, g.state),
    el("td", {}, g.vendor),
    el("td", {}, g.source + " → " + g.to),
    el("td", {}, g.ports.join(" ")),
    el("td", {}, g.from),
    el("td", {}, g.until),
    el("td", {}, g.ticket)));
  main.append(
    el("h2", {}, "Devices in quarantine"),
    quarantines.length ? table(["quarantine", "target", "addresses", "from segment", "keeps", "by", "at", "reason"], quarantines, { id: "quarantines" })
      : el("p", { class: "note", id: "quarantines" }, "None."),
    el("h2", {}, "Vendor access open or scheduled"),
    vendors.length ? table(["grant", "state", "vendor", "between", "ports", "from", "until", "ticket"], vendors, { id: "vendor-grants" })
      : el("p", { class: "note", id: "vendor-grants" }, "None."),
    el("h2", {}, "Break-glass grants open or awaiting review"),
    grants.length ? table(["grant", "state", "between", "ports", "opened by", "until", "reason", "review"], grants, { id: "break-glass" })
      : el("p", { class: "note", id: "break-glass" }, "None."),
    el("h2", {}, "Change requests awaiting a second person"),
    changes.length ? table(["request", "state", "author", "on revision", "filed", "why it needs approval", "observed flows it would stop", "message"], changes, { id: "changes" })
      : el("p", { class: "note", id: "changes" }, "None."));
}

const VIEWS = { matrix: matrixView, flows: flowsView, top: topView, map: mapView, agents: agentsView, inventory: inventoryView, governance: governanceView };

function ready() {
  document.body.dataset.state = "ready";
}

function fail(e) {
  const main = document.getElementById("view");
  if (e instanceof SignedOut) {
    document.body.dataset.state = "signed-out";
    main.replaceChildren(el("p", { class: "error" }, "Your session ended: run wardctl dashboard login for a new link."));
  } else {
    document.body.dataset.state = "error";
    main.append(el("p", { class: "error", id: "error" }, String(e.message || e)));
  }
}

async function show() {
  generation += 1;
  const { view, params } = route();
  const fn = VIEWS[view] || matrixView;
  document.body.dataset.state = "loading";
  document.body.dataset.view = VIEWS[view] ? view : "matrix";
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("current", a.dataset.view === document.body.dataset.view);
  const main = document.getElementById("view");
  main.replaceChildren();
  try {
    await fn(main, params);
    ready();
  } catch (e) {
    fail(e);
  }
}

async function start() {
  try {
    const s = await api("session");
    document.getElementById("who").textContent = s.operator + " · session until " + s.expires.replace("T", " ").replace(/\.\d+Z$/, " UTC");
  } catch (e) {
    fail(e);
    return;
  }
  window.addEventListener("hashchange", show);
  await show();
}

start();
