// The operator socket: one per session, re-opened with backoff while the
// session lives.  The token rides in the `bearer.<token>` subprotocol because a
// browser cannot set headers on a WebSocket.  States: connecting, connected,
// reconnecting, gone (the session is deleted, replaced, or the person left).

import { ApiError, api } from "./api.js";

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
const REPLACED = 4000;

export class OperatorConnection {
  constructor(sid, token, { onFrame, onState }) {
    this.sid = sid;
    this.token = token;
    this.onFrame = onFrame;
    this.onState = onState;
    this.ws = null;
    this.delay = FIRST_DELAY_MS;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.open();
  }

  open() {
    if (this.stopped) return;
    this.onState(this.ws ? "reconnecting" : "connecting");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/operators/${encodeURIComponent(this.sid)}/ws`;
    const ws = new WebSocket(url, [`bearer.${this.token}`]);
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.delay = FIRST_DELAY_MS;
      this.onState("connected");
    });
    ws.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // the server only sends JSON; nothing to do with anything else
      }
      this.onFrame(frame);
    });
    ws.addEventListener("close", (event) => this.closed(ws, event));
  }

  async closed(ws, event) {
    if (ws !== this.ws || this.stopped) return;
    if (event.code === REPLACED) {
      this.stop("gone", "another window took over this session");
      return;
    }
    this.onState("reconnecting");
    // A socket that closes may mean the session is gone: ask before retrying.
    try {
      await api.operator(this.sid, this.token);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 401)) {
        this.stop("gone", "this session no longer exists");
        return;
      }
    }
    if (this.stopped) return;
    const wait = this.delay * (0.5 + Math.random() / 2);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    this.timer = setTimeout(() => this.open(), wait);
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  get connected() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  stop(state = "gone", why = "") {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "leaving");
    this.onState(state, why);
  }
}
