// The console's start: sign in (Join or Resume), then the inbox and tasks.
// A reload finds the session in sessionStorage and re-attaches; the server
// replays whatever is still pending.
//
// The "API key" field's credential names a principal (GET /v1/whoami): the
// bar says "Signed in as <name>", Join refuses roles it may not operate
// before sending anything, and what it may not use is hidden (the Operators
// view without admin, New task without tasks:create, Cancel task without
// tasks:cancel, the task list without tasks:read, its live streams without
// events:read).  With no api_token configured the console on loopback is
// the principal "local", which may do everything.

import { api } from "./api.js";
import { OperatorConnection } from "./connection.js";
import { $, idChip } from "./dom.js";
import { Inbox } from "./inbox.js";
import { names } from "./names.js";
import { Notifier } from "./notify.js";
import { OperatorsView } from "./operators.js";
import { allows, refusal } from "./principal.js";
import { stored } from "./storage.js";
import { TasksView } from "./tasks.js";

let connection = null;
let inbox = null;
// New requests while the tab is hidden: a count in the title, a notification
// when the person asked for them (its control is in the bar, signed in or not).
const notifier = new Notifier();
const operators = new OperatorsView();
// The Operators panel follows the task list's event stream: a request issued
// or answered, a task ended, changes what sessions hold pending.
const tasks = new TasksView({ onEvent: (event) => operators.heard(event) });

// The badge's words.  Red ("session ended") is only for a session lost from
// under the person; before a first sign-in and after Leave it is grey.
const STATE_TEXT = {
  idle: "not signed in",
  "signed-out": "signed out",
  connecting: "connecting",
  connected: "connected",
  reconnecting: "reconnecting",
  gone: "session ended",
};

function setState(state, why = "") {
  const conn = $("conn");
  const text = STATE_TEXT[state] || state;
  conn.textContent = why ? `${text}: ${why}` : text;
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
  names.forget();
  connection = null;
  $("signin").hidden = false;
  $("workspace").hidden = true;
  $("leave").hidden = true;
  $("who").textContent = "";
  $("principal").textContent = "";
  $("signin-error").textContent = message;
}

// Name the principal in the bar and show only what it may use.  `known`:
// the principal Join already asked for; else it is asked here (a Resume, a
// reload).
async function showPrincipal(session, known) {
  const current = connection;
  let principal = known;
  if (!principal) {
    try {
      principal = await api.whoami();
    } catch {
      principal = null;
    }
  }
  if (connection !== current || !current) return; // signed out meanwhile
  $("principal").textContent = principal ? `Signed in as ${principal.name}` : "";
  $("principal").title = principal
    ? `via ${principal.via}; scopes: ${principal.scopes.join(", ")}` +
      (principal.expires_at ? `; until ${new Date(principal.expires_at).toLocaleString()}` : "")
    : "";
  // Unknown (no answer): the task controls stay, and the server's refusal
  // of them says what is missing; the admin's view needs a known admin.
  const may = (scope) => principal === null || allows(principal, scope);
  $("new-task").hidden = !may("tasks:create");
  $("cancel-task").hidden = !may("tasks:cancel");
  $("cancel-reason").hidden = !may("tasks:cancel");
  $("tasks-error").textContent = may("tasks:read")
    ? ""
    : `${principal.name} may not read tasks: that needs the tasks:read scope.`;
  // Who decided each request is read from the audit trail: a known admin's.
  if (may("tasks:read")) {
    tasks.startTaskUpdates({ follows: may("events:read"), decides: Boolean(principal && principal.admin) });
  }
  if (principal && principal.admin) operators.start(session.sid);
}

function attach(session, principal = null) {
  api.apiToken = session.apiToken || "";
  names.learn(session.sid, session.name ? `${session.name} (you)` : "you");
  $("signin").hidden = true;
  $("workspace").hidden = false;
  $("leave").hidden = false;
  $("who").replaceChildren(`${session.name || "operator"} · ${session.roles.join(", ") || "no roles"} · `,
    idChip(session.sid, { label: "your session id" }));
  if (!$("task-role").value && session.roles.length) $("task-role").value = session.roles[0];
  inbox = new Inbox({
    send: (frame) => connection && connection.send(frame),
    name: session.name || session.sid,
    onTaskTouched: (id) => tasks.touched(id),
    // The server's own issue times, so "waiting" counts from when it asked.
    pending: () => api.pendingOf(session.sid, session.token),
    onArrival: (frame, title, task) => notifier.arrived(frame, title, task),
    onGone: (reqId) => notifier.gone(reqId),
  });
  notifier.signedIn(session.roles);
  connection = new OperatorConnection(session.sid, session.token, {
    onFrame: (frame) => inbox && inbox.handle(frame),
    onState: setState,
  });
  connection.start();
  showPrincipal(session, principal);
}

async function join(event) {
  event.preventDefault();
  api.apiToken = $("api-key").value.trim();
  const roles = $("roles").value.split(/[\s,]+/).filter(Boolean);
  const name = $("name").value.trim();
  // A session with no role is reached by no task: refused here, not minted.
  $("roles").setAttribute("aria-invalid", String(!roles.length));
  if (!roles.length) {
    $("signin-error").textContent = "Name at least one role to join: tasks reach you by role (main, reviewer, …).";
    $("roles").focus();
    return;
  }
  try {
    // Who the key is, and so which roles it may claim: refused here, before
    // a mint the server would refuse (its own 403 still shows if it does).
    const principal = await api.whoami();
    const refused = refusal(principal, roles);
    $("roles").setAttribute("aria-invalid", String(Boolean(refused)));
    if (refused) {
      $("signin-error").textContent = `Could not join: ${refused}`;
      $("roles").focus();
      return;
    }
    const minted = await api.mint(roles, name);
    const session = { sid: minted.sid, token: minted.token, roles: minted.roles, name, apiToken: api.apiToken };
    stored.save(session);
    attach(session, principal);
  } catch (err) {
    if (err.status === 401) $("api-key-field").hidden = false;
    $("signin-error").textContent = `Could not join: ${err.message}`;
  }
}

async function resume(event) {
  event.preventDefault();
  api.apiToken = $("api-key").value.trim();
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
  if (current) current.stop("signed-out");
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
    $("api-key-field").hidden = !config.api_token_required;
  } catch {
    $("api-key-field").hidden = false; // cannot tell: offer the field
  }
  const session = stored.session();
  if (session && session.sid && session.token) attach(session);
  else showSignIn();
}

start();
