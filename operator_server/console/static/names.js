// Who a session id is, in words: the person's own session by their name, the
// others by the name (desc) the Operators list gives them, when this console
// may read it; otherwise the session's short id.  The timeline and the
// attempts say "approval asked of Ada", not a 36-character id.

import { shortId } from "./dom.js";

const known = new Map(); // sid -> name

export const names = {
  learn(sid, name) {
    if (sid && name) known.set(sid, name);
  },
  forget() {
    known.clear();
  },
  of(sid) {
    if (!sid) return "an operator";
    return known.get(sid) || shortId(sid);
  },
};
