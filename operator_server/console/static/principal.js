// Who signed in (GET /v1/whoami) and what that principal may do, so the
// console hides what the server would refuse before anyone tries it.
//
// Roles are matched exactly as the server's Principal.may_operate matches
// them: each operate:<glob> scope is a glob in Python's fnmatch.fnmatchcase
// dialect (*, ?, [seq], [!seq]; case-sensitive; no escapes), translated here
// the way Python 3.11's fnmatch.translate does, so the form never refuses a
// role the server would allow, nor lets through one it would refuse.  The
// server still decides: its 403 is shown as it says it.

const OPERATE = "operate:";

// Outside a character class: the characters a u-mode RegExp treats as syntax.
const escapeOut = (c) => (/[\^$\\.*+?()[\]{}|/]/.test(c) ? `\\${c}` : c);
// Inside one: what would end, negate or range it.
const escapeIn = (c) => (/[\\\]\[^-]/.test(c) ? `\\${c}` : c);

// The class for the text between "[" and "]" (code points), as translate()
// builds it: "a-c" a range, a range running backwards dropped, a leading "!"
// negating, a "-" first or last taken literally.
function charClass(stuff) {
  let chunks;
  if (!stuff.includes("-")) {
    chunks = [stuff];
  } else {
    chunks = [];
    let i = 0;
    let k = stuff[0] === "!" ? 2 : 1;
    for (;;) {
      k = stuff.indexOf("-", k);
      if (k < 0) break;
      chunks.push(stuff.slice(i, k));
      i = k + 1;
      k += 3;
    }
    const last = stuff.slice(i);
    if (last.length) chunks.push(last);
    else chunks[chunks.length - 1] = [...chunks[chunks.length - 1], "-"];
    for (let k = chunks.length - 1; k > 0; k--) {
      if (chunks[k - 1].at(-1).codePointAt(0) > chunks[k][0].codePointAt(0)) {
        chunks[k - 1] = [...chunks[k - 1].slice(0, -1), ...chunks[k].slice(1)];
        chunks.splice(k, 1);
      }
    }
  }
  const body = chunks.map((chunk) => chunk.map(escapeIn).join("")).join("-");
  if (!body) return "(?!)"; // an empty set: matches nothing
  if (body === "!") return "[\\s\\S]"; // an empty negated set: any character
  return body[0] === "!" ? `[^${body.slice(1)}]` : `[${body}]`;
}

// The RegExp that matches a whole role against `glob`.
export function globRegExp(glob) {
  const pat = Array.from(glob); // code points, as Python indexes a str
  const n = pat.length;
  let out = "";
  let i = 0;
  while (i < n) {
    const c = pat[i++];
    if (c === "*") {
      if (!out.endsWith("[\\s\\S]*")) out += "[\\s\\S]*";
    } else if (c === "?") {
      out += "[\\s\\S]";
    } else if (c === "[") {
      let j = i;
      if (j < n && pat[j] === "!") j++;
      if (j < n && pat[j] === "]") j++;
      while (j < n && pat[j] !== "]") j++;
      if (j >= n) {
        out += "\\[";
      } else {
        out += charClass(pat.slice(i, j));
        i = j + 1;
      }
    } else {
      out += escapeOut(c);
    }
  }
  return new RegExp(`^(?:${out})$`, "u");
}

function operateGlobs(principal) {
  return principal.scopes.filter((s) => s.startsWith(OPERATE)).map((s) => s.slice(OPERATE.length));
}

// Whether a session minted by `principal` may claim `role`.
export function mayOperate(principal, role) {
  if (principal.admin) return true;
  return operateGlobs(principal).some((glob) => globRegExp(glob).test(role));
}

// Whether `principal` holds `scope` (admin holds every one).
export function allows(principal, scope) {
  return principal.admin || principal.scopes.includes(scope);
}

// Why Join refuses `roles` for `principal`, in words; "" when it may claim them all.
export function refusal(principal, roles) {
  const refused = roles.filter((role) => !mayOperate(principal, role));
  if (!refused.length) return "";
  const globs = operateGlobs(principal);
  const may = globs.length
    ? `it may operate roles matching ${globs.join(", ")}`
    : "it holds no operate:<glob> scope, so it may operate no role";
  return `${principal.name} may not operate ${refused.join(", ")} (${may}).`;
}
