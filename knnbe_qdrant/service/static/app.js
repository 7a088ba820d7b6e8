// The curator page: plain DOM over the /v1 JSON API. Every value from the server is put in the page as text
// (textContent), never as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let me = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function say(text, kind = "ok") {
  const m = $("#message");
  m.textContent = text;
  m.className = kind;
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem("knnbe-key") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function signIn(key) {
  sessionStorage.setItem("knnbe-key", key);
  try {
    me = await api("GET", "/v1/whoami");
  } catch (e) {
    sessionStorage.removeItem("knnbe-key");
    me = null;
    say("Sign-in failed: " + e.message, "error");
    return;
  }
  $("#whoami").textContent = `${me.name} · ${me.role} · ${me.tenant ? "tenant " + me.tenant : "global layer"}`;
  document.body.classList.toggle("can-curate", me.role !== "reader");
  $("#app").hidden = false;
  $("#signout").hidden = false;
  $("#key").value = "";
  say("Signed in.");
  loadAudit();
  // The tick box starts as the store maps (decomposition is the shipped model's default).
  api("GET", "/v1/status").then((s) => { $("#decompose").checked = s.decompose; }).catch(() => {});
}

function signOut() {
  sessionStorage.removeItem("knnbe-key");
  me = null;
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#whoami").textContent = "not signed in";
  $("#results").replaceChildren();
  say("Signed out.");
}

const fmt = (x) => x.toFixed(3);

async function mapSentences() {
  const sentences = $("#sentences").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!sentences.length) return say("Type at least one sentence.", "error");
  const top = parseInt($("#top").value, 10) || 5;
  try {
    const decompose = $("#decompose").checked;
    const { results } = await api("POST", "/v1/map", { sentences, top, decompose });
    $("#results").replaceChildren(...results.map(renderResult));
    say(`Mapped ${results.length} sentence(s).`);
  } catch (e) {
    say(e.message, "error");
  }
}

function renderResult(result) {
  const rows = result.skills.map((s, i) => {
    const evidence = el("ul", { class: "evidence" }, ...s.evidence.map((e) => renderEvidence(e, s)));
    const label = el("a", { href: "#", class: "skill-link", onclick: (ev) => { ev.preventDefault(); browse(s.id); } }, s.label);
    const piece = s.piece ? el("div", { class: "piece" }, `from the piece “${s.piece}”`) : "";
    const tokens = s.tokens && s.tokens.length ? el("div", { class: "tokens" }, `matched on “${s.tokens.join(" … ")}”`) : "";
    return el("tr", { class: "skill-row", "data-skill": s.id },
      el("td", { class: "num" }, i + 1), el("td", { class: "num score" }, fmt(s.score)),
      el("td", { class: "num" }, fmt(s.bi_encoder)), el("td", { class: "num" }, fmt(s.knn)),
      el("td", {}, label, " ", el("span", { class: "skill-id" }, s.id), piece, tokens, evidence));
  });
  const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "score"),
    el("th", {}, "bi-enc"), el("th", {}, "kNN"), el("th", {}, "skill and the memory sentences that voted"))),
    el("tbody", {}, ...rows));
  const box = el("div", { class: "result" }, el("h3", {}, result.text), table);
  if (me && me.role !== "reader") box.append(teachForm(result.text));
  return box;
}

function renderEvidence(e, skill) {
  const li = el("li", {}, `↳ ${e.similarity.toFixed(2)} “${e.text}” `);
  if (me && me.role !== "reader") {
    li.append(el("button", { type: "button", class: "small hide", onclick: () => hideEvidence(e.text, skill.id) }, "hide"),
      " ", el("button", { type: "button", class: "small relabel", onclick: () => relabelEvidence(li, e.text, skill.id) }, "relabel"));
  }
  return li;
}

async function hideEvidence(text, skill) {
  try {
    const { result } = await api("POST", "/v1/memory/remove", { skill, text });
    await mapSentences();  // the results are current before the message says the edit is done
    say(`“${text}” ${result} for ${skill}.`);
    loadAudit();
  } catch (e) {
    say(e.message, "error");
  }
}

function skillPicker(placeholder, onPick) {
  const input = el("input", { class: "teach-search", placeholder, size: "40" });
  const choices = el("span", { class: "choices" });
  const search = async () => {
    if (!input.value.trim()) return;
    try {
      const { items } = await api("GET", "/v1/skills/search?limit=5&q=" + encodeURIComponent(input.value.trim()));
      choices.replaceChildren(...items.map((s) => el("button", { type: "button", class: "small teach-pick",
        "data-skill": s.id, onclick: () => onPick(s) }, s.label)));
    } catch (e) {
      say(e.message, "error");
    }
  };
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); search(); } });
  return el("div", { class: "teach inline" }, input, el("button", { type: "button", class: "small teach-find", onclick: search }, "find skill"), choices);
}

function teachForm(sentence) {
  return skillPicker("teach: add this sentence to skill… (search by label)", async (skill) => {
    try {
      const { result } = await api("POST", "/v1/memory", { skill: skill.id, text: sentence });
      await mapSentences();
      say(`“${sentence}” → ${skill.label}: ${result}.`);
      loadAudit();
    } catch (e) {
      say(e.message, "error");
    }
  });
}

function relabelEvidence(li, text, skill) {
  li.append(skillPicker("relabel to… (search by label)", async (target) => {
    try {
      await api("POST", "/v1/memory/relabel", { skill, text, to: target.id });
      await mapSentences();
      say(`“${text}” moved to ${target.label}.`);
      loadAudit();
    } catch (e) {
      say(e.message, "error");
    }
  }));
}

async function addSkill(ev) {
  ev.preventDefault();
  const body = { id: $("#skill-id").value.trim(), label: $("#skill-label").value.trim(),
                 description: $("#skill-description").value.trim() };
  try {
    await api("POST", "/v1/skills", body);
    say(`Added skill ${body.label} (${body.id}). Teach it with a few sentences.`);
    $("#skill-form").reset();
    loadAudit();
  } catch (e) {
    say(e.message, "error");
  }
}

const MEMORY_PAGE = 200;

async function browse(skill, after) {
  if (skill) $("#memory-skill").value = skill;
  const ref = $("#memory-skill").value.trim();
  if (!ref) return;
  try {
    const query = `/v1/memory?limit=${MEMORY_PAGE}&skill=${encodeURIComponent(ref)}` + (after ? `&after=${encodeURIComponent(after)}` : "");
    const { items, next } = await api("GET", query);
    const rows = items.map((p) => el("tr", {}, el("td", {}, p.text), el("td", {}, p.source || ""),
      el("td", {}, p.tenant === "_global" ? "global" : p.tenant), el("td", {}, p.created_by || ""), el("td", {}, p.created_at || "")));
    if (!after) {  // a first page: the table anew; a further one is added below the rows shown
      $("#memory").replaceChildren(el("table", { id: "memory-table" }, el("thead", {}, el("tr", {}, el("th", {}, "sentence"),
        el("th", {}, "source"), el("th", {}, "layer"), el("th", {}, "by"), el("th", {}, "at"))), el("tbody", {})),
        el("div", { class: "muted", id: "memory-count" }));
    }
    $("#memory-table tbody").append(...rows);
    const shown = $("#memory-table tbody").children.length;
    const more = next ? el("button", { type: "button", id: "memory-more", onclick: () => browse(ref, next) }, "show more") : "";
    $("#memory-count").replaceChildren(`${shown} sentence(s)${next ? ", more to come " : ""}`, more);
  } catch (e) {
    say(e.message, "error");
  }
}

async function loadAudit() {
  try {
    const { items } = await api("GET", "/v1/audit?limit=20");
    const rows = items.map((a) => el("tr", { class: "audit-row" }, el("td", {}, a.at || ""), el("td", {}, a.key || ""),
      el("td", {}, a.action || ""), el("td", {}, a.skill || a.tenant_deleted || ""), el("td", {}, a.text || a.label || "")));
    $("#audit").replaceChildren(el("table", {}, el("tbody", {}, ...rows)));
  } catch (e) {
    say(e.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("#key").value.trim()); });
  $("#signout").addEventListener("click", signOut);
  $("#map").addEventListener("click", mapSentences);
  $("#skill-form").addEventListener("submit", addSkill);
  $("#browse-form").addEventListener("submit", (ev) => { ev.preventDefault(); browse(); });
  $("#refresh-audit").addEventListener("click", loadAudit);
  if (sessionStorage.getItem("knnbe-key")) signIn(sessionStorage.getItem("knnbe-key"));
});
