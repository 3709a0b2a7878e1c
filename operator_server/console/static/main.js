// The console's start: sign in (Join or Resume), then the inbox and tasks.
// A reload finds the session in sessionStorage and re-attaches; the server
// replays whatever is still pending.

import { api } from "./api.js";
import { OperatorConnection } from "./connection.js";
import { $ } from "./dom.js";
import { Inbox } from "./inbox.js";
import { OperatorsView } from "./operators.js";
import { stored } from "./storage.js";
import { TasksView } from "./tasks.js";

let connection = null;
let inbox = null;
const tasks = new TasksView();
const operators = new OperatorsView();

function setState(state, why = "") {
  const conn = $("conn");
  conn.textContent = why ? `${state}: ${why}` : state;
  conn.className = `conn conn-${state}`;
  if (state === "gone" && connection) {
    stored.clear();
    showSignIn(why ? `Signed out: ${why}` : "");
  }
}

function showSignIn(message = "") {
  if (inbox) inbox.stop();
  inbox = null;
  tasks.stopTaskUpdates();
  operators.stop();
  connection = null;
  $("signin").hidden = false;
  $("workspace").hidden = true;
  $("leave").hidden = true;
  $("who").textContent = "";
  $("signin-error").textContent = message;
}

function attach(session) {
  api.apiToken = session.apiToken || "";
  $("signin").hidden = true;
  $("workspace").hidden = false;
  $("leave").hidden = false;
  $("who").textContent = `${session.name || "operator"} · ${session.roles.join(", ") || "no roles"} · ${session.sid}`;
  if (!$("task-role").value && session.roles.length) $("task-role").value = session.roles[0];
  inbox = new Inbox({
    send: (frame) => connection && connection.send(frame),
    name: session.name || session.sid,
    onTaskTouched: (id) => tasks.touched(id),
    // The server's own issue times, so "waiting" counts from when it asked.
    pending: () => api.pendingOf(session.sid, session.token),
  });
  connection = new OperatorConnection(session.sid, session.token, {
    onFrame: (frame) => inbox && inbox.handle(frame),
    onState: setState,
  });
  connection.start();
  tasks.startTaskUpdates();
  operators.start(session.sid);
}

async function join(event) {
  event.preventDefault();
  api.apiToken = $("api-token").value.trim();
  const roles = $("roles").value.split(/[\s,]+/).filter(Boolean);
  const name = $("name").value.trim();
  try {
    const minted = await api.mint(roles, name);
    const session = { sid: minted.sid, token: minted.token, roles: minted.roles, name, apiToken: api.apiToken };
    stored.save(session);
    attach(session);
  } catch (err) {
    $("signin-error").textContent = `Could not join: ${err.message}`;
  }
}

async function resume(event) {
  event.preventDefault();
  api.apiToken = $("api-token").value.trim();
  const sid = $("resume-sid").value.trim();
  const token = $("resume-token").value.trim();
  try {
    const view = await api.operator(sid, token);
    const session = { sid, token, roles: view.roles, name: view.desc, apiToken: api.apiToken };
    stored.save(session);
    attach(session);
  } catch (err) {
    $("signin-error").textContent = `Could not resume: ${err.message}`;
  }
}

async function leave() {
  const session = stored.session();
  const current = connection;
  connection = null; // leaving on purpose: no "gone" message
  if (current) current.stop("gone");
  stored.clear();
  showSignIn();
  if (session) {
    try {
      await api.leave(session.sid, session.token);
    } catch (err) {
      $("signin-error").textContent = `The server did not take the leave: ${err.message}`;
    }
  }
}

async function start() {
  $("join-form").addEventListener("submit", join);
  $("resume-form").addEventListener("submit", resume);
  $("leave").addEventListener("click", leave);
  try {
    const config = await api.config();
    $("api-token-field").hidden = !config.api_token_required;
  } catch {
    $("api-token-field").hidden = false; // cannot tell: offer the field
  }
  const session = stored.session();
  if (session && session.sid && session.token) attach(session);
  else showSignIn();
}

start();
