// Server-Sent Events, read with fetch() and a small parser rather than
// EventSource: EventSource cannot send an Authorization header, and a token
// must never ride in a URL.  The stream is re-opened with backoff, resuming
// with Last-Event-ID, until stop() or until an event the caller says ends it
// (a task's stream closes after its final status).

import { apiKeyProblem } from "./api.js";

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

export class EventReader {
  // onState(state, why): "connecting" | "live" | "reconnecting" | "ended" | "failed".
  constructor(path, { bearer = "", lastId = null, onEvent, onState = () => {}, endsWith = () => false }) {
    this.path = path;
    this.bearer = bearer;
    this.lastId = lastId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.endsWith = endsWith;
    this.delay = FIRST_DELAY_MS;
    this.abort = new AbortController();
    this.stopped = false;
    this.ended = false;
    this.timer = null;
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abort.abort();
  }

  async run() {
    let first = true;
    while (!this.stopped) {
      this.onState(first ? "connecting" : "reconnecting");
      first = false;
      const headers = { Accept: "text/event-stream" };
      if (this.bearer) headers.Authorization = `Bearer ${this.bearer}`;
      if (this.lastId !== null) headers["Last-Event-ID"] = String(this.lastId);
      try {
        const resp = await fetch(this.path, {
          headers,
          cache: "no-store",
          credentials: "omit",
          signal: this.abort.signal,
        });
        if (!resp.ok) {
          // A wrong token, a removed task: retrying will not change the answer.
          if (resp.status >= 400 && resp.status < 500) {
            this.stopped = true;
            this.onState("failed", resp.status === 401 ? apiKeyProblem(this.bearer) : `HTTP ${resp.status}`);
            return;
          }
          throw new Error(`HTTP ${resp.status}`);
        }
        this.onState("live");
        await this.read(resp.body);
        if (this.ended) {
          this.onState("ended");
          return;
        }
      } catch {
        if (this.stopped) return; // aborted on purpose
      }
      if (this.stopped) return;
      const wait = this.delay * (0.5 + Math.random() / 2);
      this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
      await new Promise((resolve) => {
        this.timer = setTimeout(resolve, wait);
      });
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let block = { id: null, type: "message", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      this.delay = FIRST_DELAY_MS; // the server is answering: the next retry starts quick
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop(); // the unfinished tail waits for the next chunk
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {
          if (this.dispatch(block)) {
            reader.cancel().catch(() => {});
            return;
          }
          block = { id: null, type: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // a keepalive comment
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let field = colon < 0 ? "" : line.slice(colon + 1);
        if (field.startsWith(" ")) field = field.slice(1);
        if (name === "data") block.data.push(field);
        else if (name === "event") block.type = field;
        else if (name === "id") block.id = field;
      }
    }
  }

  // One complete event; true when it ends the stream for good.
  dispatch(block) {
    if (block.id !== null && /^\d+$/.test(block.id)) this.lastId = Number(block.id);
    if (!block.data.length) return false;
    let data;
    try {
      data = JSON.parse(block.data.join("\n"));
    } catch {
      return false; // the server only sends JSON; skip anything else
    }
    const event = { id: this.lastId, type: block.type, data };
    this.onEvent(event);
    if (this.endsWith(event)) {
      this.ended = true;
      return true;
    }
    return false;
  }
}
