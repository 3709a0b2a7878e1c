// The inbox: one card per pending operator request, newest last.  It holds
// only what waits for the person: a card they decide leaves the inbox at once
// and the decision goes to the Activity feed, so the count is the cards shown.
//
// Cards are keyed by req_id, so a request the server replays (after a reconnect
// or a reload) shows once.  Each reply is recorded (in sessionStorage) before it
// is sent and the card's controls are disabled at once, so a person cannot send
// two; when the server replays a request we already answered, it never got the
// answer, and the recorded reply goes out again unchanged.
//
// Approval cards (hook_before) each carry a "Select" box; with two or more in
// the inbox, "Approve selected" / "Reject selected" decide every selected one
// at once, with one reason, in one call to the batch route (POST
// /v1/requests/reply), so the server counts them as batch decisions.  Each is
// recorded and leaves the inbox as if its own button were pressed, and goes
// to Activity with the server's answer for it.  A reply the batch could not
// deliver (the call failed as a whole, say with no usable API key, or the
// server refused that item for a reason other than it being settled or moved
// already) goes over the socket instead, as its own button would send it:
// a person's decision is never dropped.

import { api } from "./api.js";
import { $, h, idChip, parseInput, pretty, since } from "./dom.js";
import { drawForm } from "./form.js";
import { stored } from "./storage.js";

const TITLES = { hook_before: "Approve spawn?", ask: "Question", spawn: "Do the work" };
// An ask issued while a spawn is held comes from that spawn's worker, mid-work.
const WORKER_ASK_TITLE = "Question from the worker";
const MAX_REMEMBERED = 500;
const MAX_ACTIVITY = 200;
// A batch item refused with one of these was settled (or moved on) before it
// arrived: sending it again over the socket would change nothing.
const SETTLED_ALREADY = new Set(["already_answered", "already_moved", "request_not_found"]);

export class Inbox {
  constructor({ send, name, onTaskTouched, pending, onArrival, onGone }) {
    this.send = send;
    // Told of each request new to this tab (not a replay of one shown before)
    // with its card's title and a promise of its task, and of each that
    // leaves the inbox.
    this.onArrival = onArrival;
    this.onGone = onGone;
    this.pending = pending;
    this.syncing = null;
    this.syncAgain = false;
    this.name = name;
    this.onTaskTouched = onTaskTouched;
    this.cards = new Map(); // req_id -> {frame, node}
    this.reassigning = new Map(); // req_id -> the role it was sent to, until its cancel
    this.list = $("inbox");
    this.feed = $("activity");
    this.ticker = setInterval(() => this.tick(), 1000);
    this.batch = $("inbox-batch");
    this.batchReason = $("batch-reason");
    this.approveSelected = $("batch-approve");
    this.rejectSelected = $("batch-reject");
    this.approveSelected.onclick = () => this.decideSelected(true);
    this.rejectSelected.onclick = () => this.decideSelected(false);
  }

  // The approval cards whose "Select" box is ticked.
  selected() {
    return [...this.cards.values()].filter(
      ({ frame, node }) => frame.type === "hook_before" && node.querySelector("input.select").checked,
    );
  }

  async decideSelected(ok) {
    const why = this.batchReason.value.trim() || `rejected by ${this.name}`;
    const outcome = ok ? "Approved (selected)" : `Rejected (selected): ${why}`;
    const decided = [];
    for (const { frame } of this.selected()) {
      const reply = ok
        ? { type: "hook_ack", req_id: frame.req_id, ok: true }
        : { type: "hook_ack", req_id: frame.req_id, ok: false, reason: why };
      const card = this.take(frame.req_id, reply);
      if (card) decided.push({ card, reply });
    }
    this.batchReason.value = "";
    this.selectionChanged();
    if (!decided.length) return;
    let results = null;
    try {
      results = (await api.replyBatch(decided.map(({ reply }) => reply))).results;
    } catch (err) {
      this.note(`Batch not sent (${err.message}): replying one by one`, null, "warn");
    }
    decided.forEach(({ card, reply }, i) => {
      const result = results ? results[i] : null;
      if (result && result.status === 200) {
        this.noteDecided(card, outcome);
      } else if (result && SETTLED_ALREADY.has(result.error.code)) {
        this.noteDecided(card, `${outcome} not counted: ${result.error.message}`, "warn");
      } else {
        this.send(reply);
        this.noteDecided(card, outcome);
      }
    });
  }

  // The batch bar shows once there are two approvals to choose from.
  selectionChanged() {
    const approvals = [...this.cards.values()].filter(({ frame }) => frame.type === "hook_before");
    this.batch.hidden = approvals.length < 2;
    const none = this.selected().length === 0;
    this.approveSelected.disabled = none;
    this.rejectSelected.disabled = none;
  }

  handle(frame) {
    switch (frame.type) {
      case "hook_before":
      case "ask":
      case "spawn":
        this.request(frame);
        break;
      case "hook_after":
        this.note(`${frame.agent} attempt ${frame.attempt} ended: ${pretty(frame.result)}`, frame.task_id);
        break;
      case "cancel":
        this.withdraw(frame.req_id, frame.reason);
        break;
      case "error":
        this.refused(frame);
        this.note(`server said ${frame.code}: ${frame.message}`, null, "error");
        break;
      default:
        break; // a newer server's frame this console does not know yet
    }
    if (frame.task_id) this.onTaskTouched(frame.task_id);
  }

  request(frame) {
    const session = stored.session() || {};
    const sent = (session.replies || {})[frame.req_id];
    if (sent) {
      this.send(sent);
      return;
    }
    if (this.cards.has(frame.req_id)) return;
    const before = (session.seen || {})[frame.req_id];
    const seen = before || Date.now();
    stored.update((s) => {
      s.seen = trim({ ...s.seen, [frame.req_id]: seen });
    });
    // A worker's ask shows nested under the spawn card it was asked during.
    const parent = frame.parent_req_id ? this.cards.get(frame.parent_req_id) : null;
    const nest = parent ? parent.node.querySelector(".nested") : null;
    const node = this.card(frame, seen, Boolean(nest));
    this.cards.set(frame.req_id, { frame, node });
    (nest || this.list).append(node);
    this.counts();
    const task = api.task(frame.task_id);
    this.describeTask(frame, node, task);
    if (!before) this.onArrival(frame, node.querySelector("h3").textContent, task);
    this.syncWaits();
  }

  // How long each request has waited, by the server's clock: first-seen time
  // in this tab is only a fallback (a reload, a reconnect see it late).
  // Coalesced: a burst of requests reads the session's pending list twice at most.
  syncWaits() {
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = this.pending().then(
      (body) => {
        const now = Date.now();
        const seen = {};
        for (const p of body.pending) {
          const card = this.cards.get(p.req_id);
          if (!card) continue;
          // waiting_s, not issued_at: the browser's clock may be off from the server's.
          seen[p.req_id] = Math.round(now - p.waiting_s * 1000);
          card.node.dataset.seen = String(seen[p.req_id]);
        }
        stored.update((s) => {
          s.seen = trim({ ...s.seen, ...seen });
        });
        this.tick();
      },
      () => {}, // the first-seen time stays; nothing else depends on this
    ).finally(() => {
      this.syncing = null;
      if (this.syncAgain) {
        this.syncAgain = false;
        this.syncWaits();
      }
    });
  }

  // Decided: the reply is recorded, sent, and the card leaves the inbox for
  // the Activity feed (a replay of it re-sends the recorded reply, see request).
  reply(reqId, reply, outcome) {
    const card = this.take(reqId, reply);
    if (!card) return false;
    this.send(reply);
    this.noteDecided(card, outcome);
    return true;
  }

  // The reply recorded and the card off the inbox, before the reply is sent.
  take(reqId, reply) {
    const card = this.cards.get(reqId);
    if (!card) return null;
    stored.update((s) => {
      s.replies = trim({ ...s.replies, [reqId]: reply });
    });
    this.remove(card);
    this.counts();
    return card;
  }

  noteDecided(card, outcome, level = "info") {
    const what = card.node.querySelector("h3").textContent;
    this.note(`${outcome} (${what.toLowerCase()})`, card.frame.task_id, level);
  }

  // Off the inbox; a worker's ask still waiting under this spawn card stays
  // in the inbox on its own.
  remove(card) {
    for (const nested of card.node.querySelectorAll(".nested > li.card")) this.list.append(nested);
    card.node.remove();
    this.cards.delete(card.frame.req_id);
    this.onGone(card.frame.req_id);
  }

  withdraw(reqId, reason) {
    const to = this.reassigning.get(reqId);
    this.reassigning.delete(reqId);
    if (to !== undefined && reason === "reassigned") reason = `reassigned to ${to}`;
    const card = this.cards.get(reqId);
    if (card) this.remove(card);
    stored.update((s) => {
      delete (s.seen || {})[reqId];
      delete (s.replies || {})[reqId];
    });
    this.note(`Withdrawn: ${reason}`, card ? card.frame.task_id : null, "warn");
    this.counts();
  }

  counts() {
    this.selectionChanged();
    const waiting = this.cards.size;
    $("inbox-count").textContent = waiting ? `(${waiting})` : "";
    $("inbox-empty").hidden = waiting > 0;
  }

  tick() {
    for (const { node } of this.cards.values()) {
      node.querySelector(".waited").textContent = `waiting ${since(Number(node.dataset.seen))}`;
    }
  }

  note(text, taskId, level = "info") {
    const when = new Date().toLocaleTimeString();
    const item = h("li", { class: `note ${level}`, "data-task-id": taskId || null },
      h("time", { text: when }), " ", taskId ? [idChip(taskId, { label: "task id" }), " "] : null, text);
    this.feed.prepend(item);
    while (this.feed.children.length > MAX_ACTIVITY) this.feed.lastChild.remove();
  }

  async describeTask(frame, node, reading) {
    // hook_before and ask frames are thin: the task itself says what is asked.
    try {
      const task = await reading;
      node.querySelector(".agent").textContent = task.agent;
      node.querySelector(".attempt-no").textContent = `attempt ${frame.attempt || task.attempt}`;
      const directive = node.querySelector(".directive");
      if (directive) directive.textContent = pretty(task.directive);
    } catch (err) {
      node.querySelector(".agent").textContent = `(task not readable: ${err.message})`;
    }
  }

  // A nested card (a worker's ask under its spawn) shows no directive: the
  // spawn card above it already shows the task's work, as its prompt.
  card(frame, seen, nested) {
    const directive = !nested && frame.type !== "spawn";
    const id = `card-${frame.req_id}`;
    const titleId = `${id}-title`;
    const node = h(
      "li",
      { class: `card card-${frame.type}`, id, "data-seen": String(seen), "data-req-id": frame.req_id, "data-task-id": frame.task_id },
      h("article", { "aria-labelledby": titleId },
        h("header", {},
          h("h3", { id: titleId, text: frame.type === "ask" && frame.parent_req_id ? WORKER_ASK_TITLE : TITLES[frame.type] }),
          h("p", { class: "meta" },
            h("span", { class: "task" }, idChip(frame.task_id, { label: "task id" })), " · ",
            h("span", { class: "agent", text: frame.agent || "" }), " · ",
            h("span", { class: "attempt-no", text: frame.attempt ? `attempt ${frame.attempt}` : "" }), " · ",
            h("span", { class: "waited", text: `waiting ${since(seen)}` }))),
        directive ? h("h4", { text: "Directive" }) : null,
        directive ? h("pre", { class: "code directive", text: "…" }) : null,
        ...this.body(frame, id),
        this.reassignControl(frame, id),
        h("p", { class: "outcome", role: "status" }),
        frame.type === "spawn" ? h("ul", { class: "nested", "aria-label": "Asked during this spawn" }) : null));
    return node;
  }

  // Reassign: pass the request to another role with a note.  The card stays
  // (its controls disabled) until the server's cancel (reason "reassigned")
  // withdraws it, or its error gives the controls back with the reason.
  reassignControl(frame, id) {
    const role = h("input", { type: "text", id: `${id}-reassign-role`, "aria-label": "Reassign to role", placeholder: "role" });
    const note = h("input", { type: "text", id: `${id}-reassign-note`, "aria-label": "Note for the next holder", placeholder: "note (optional)" });
    const button = h("button", { type: "button", text: "Reassign" });
    button.onclick = () => {
      const target = role.value.trim();
      if (!target) {
        role.focus();
        return;
      }
      const frameOut = { type: "reassign", req_id: frame.req_id, role: target };
      if (note.value.trim()) frameOut.note = note.value.trim();
      for (const el of [role, note, button]) el.disabled = true;
      this.reassigning.set(frame.req_id, target);
      this.send(frameOut);
    };
    return h("p", { class: "actions reassign" }, role, note, button);
  }

  refused(frame) {
    if (!frame.req_id || !this.reassigning.has(frame.req_id)) return;
    this.reassigning.delete(frame.req_id);
    const card = this.cards.get(frame.req_id);
    if (!card) return;
    for (const el of card.node.querySelectorAll(".reassign input, .reassign button")) el.disabled = false;
    card.node.querySelector(".outcome").textContent = `Not reassigned: ${frame.message}`;
  }

  body(frame, id) {
    if (frame.type === "hook_before") return this.hookBefore(frame, id);
    if (frame.type === "ask") return this.ask(frame, id);
    return this.spawn(frame, id);
  }

  hookBefore(frame, id) {
    const reason = h("input", { type: "text", id: `${id}-reason`, "aria-label": "Reason", placeholder: "why not (optional)" });
    const approve = () => this.reply(frame.req_id, { type: "hook_ack", req_id: frame.req_id, ok: true }, "Approved");
    const reject = () => {
      const why = reason.value.trim() || `rejected by ${this.name}`;
      this.reply(frame.req_id, { type: "hook_ack", req_id: frame.req_id, ok: false, reason: why }, `Rejected: ${why}`);
    };
    const select = h("input", { type: "checkbox", class: "select", id: `${id}-select`, "aria-label": "Select" });
    select.onchange = () => this.selectionChanged();
    return [
      h("p", { class: "actions" },
        select,
        h("button", { type: "button", class: "primary", onclick: approve, text: "Approve" })),
      h("p", { class: "actions" },
        reason,
        h("button", { type: "button", class: "danger", onclick: reject, text: "Reject" })),
    ];
  }

  ask(frame, id) {
    if (frame.answer_schema) return this.askForm(frame, id);
    const answer = h("textarea", { id: `${id}-answer`, rows: 3, placeholder: "text, or JSON" });
    const send = () => {
      const value = parseInput(answer.value);
      this.reply(frame.req_id, { type: "answer", req_id: frame.req_id, value }, "Answer sent");
    };
    const decline = () => {
      const why = answer.value.trim() || `declined by ${this.name}`;
      this.reply(frame.req_id, { type: "answer", req_id: frame.req_id, value: null, error: why }, `Declined: ${why}`);
    };
    return [
      h("h4", { text: "Question" }),
      h("pre", { class: "code question", text: pretty(frame.question) }),
      h("label", { for: `${id}-answer`, text: "Answer" }),
      answer,
      h("p", { class: "actions" },
        h("button", { type: "button", class: "primary", onclick: send, text: "Send answer" }),
        h("button", { type: "button", onclick: decline, text: "Decline" })),
    ];
  }

  askForm(frame, id) {
    const form = drawForm(frame.answer_schema, id);
    const why = h("input", { type: "text", id: `${id}-why`, "aria-label": "Decline reason", placeholder: "why not (optional)" });
    const outcome = () => this.cards.get(frame.req_id).node.querySelector(".outcome");
    const send = () => {
      const got = form.read();
      if (got.error) {
        outcome().textContent = got.error;
        return;
      }
      this.reply(frame.req_id, { type: "answer", req_id: frame.req_id, value: got.value }, "Answer sent");
    };
    const decline = () => {
      const reason = why.value.trim() || `declined by ${this.name}`;
      this.reply(frame.req_id, { type: "answer", req_id: frame.req_id, value: null, error: reason }, `Declined: ${reason}`);
    };
    return [
      h("h4", { text: "Question" }),
      h("pre", { class: "code question", text: pretty(frame.question) }),
      form.node,
      h("p", { class: "actions" },
        h("button", { type: "button", class: "primary", onclick: send, text: "Send answer" })),
      h("p", { class: "actions" },
        why,
        h("button", { type: "button", onclick: decline, text: "Decline" })),
    ];
  }

  spawn(frame, id) {
    const prompt = h("pre", { class: "code prompt", text: "fetching the prompt…" });
    api.workerPrompt(frame.worker_handle).then(
      (view) => {
        prompt.textContent = (view.system ? `[system] ${view.system}\n\n` : "") + pretty(view.prompt);
      },
      (err) => {
        prompt.textContent = `(could not fetch the prompt: ${err.message})`;
      },
    );
    const result = h("textarea", { id: `${id}-result`, rows: 4, placeholder: "the work: text, or JSON" });
    const haltReason = h("input", { type: "text", id: `${id}-halt`, "aria-label": "Halt reason", placeholder: "why stop (optional)" });
    const outcome = () => this.cards.get(frame.req_id).node.querySelector(".outcome");
    const submit = async (ok) => {
      const card = this.cards.get(frame.req_id);
      if (!card || card.posting) return;
      card.posting = true;
      try {
        await api.workerResult(frame.worker_handle, parseInput(result.value), ok);
      } catch (err) {
        card.posting = false;
        outcome().textContent = `Could not post the result: ${err.message}`;
        return;
      }
      this.reply(frame.req_id, { type: "spawn_ack", req_id: frame.req_id, ok },
        `Result posted (${ok ? "ok" : "failed"}) · ack sent`);
    };
    const halt = () => {
      const reason = haltReason.value.trim() || `halted by ${this.name}`;
      this.reply(frame.req_id, { type: "spawn_halt", req_id: frame.req_id, reason }, `Halted: ${reason} · sent`);
    };
    return [
      h("h4", { text: "Prompt" }),
      prompt,
      h("details", {}, h("summary", { text: "Operator directive" }), h("pre", { class: "code", text: frame.directive })),
      h("label", { for: `${id}-result`, text: "Result" }),
      result,
      h("p", { class: "actions" },
        h("button", { type: "button", class: "primary", onclick: () => submit(true), text: "Submit result" }),
        h("button", { type: "button", onclick: () => submit(false), text: "Submit as failed" })),
      h("p", { class: "actions" },
        haltReason,
        h("button", { type: "button", class: "danger", onclick: halt, text: "Halt" })),
    ];
  }

  stop() {
    clearInterval(this.ticker);
    this.list.replaceChildren();
    this.feed.replaceChildren();
    this.cards.clear();
    this.batch.hidden = true;
  }
}

function trim(map) {
  const keys = Object.keys(map);
  for (const key of keys.slice(0, Math.max(0, keys.length - MAX_REMEMBERED))) delete map[key];
  return map;
}
