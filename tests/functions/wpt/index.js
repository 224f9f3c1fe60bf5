// Runs Web Platform Tests data inside a function. The test suite POSTs a WPT JSON file to
// /<suite>; the answer lists every failing case: { total, failures: [{ name, why }] }.
const URL_FIELDS = ["href", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "hash"];

const suites = {
  // url/resources/urltestdata.json
  url(cases) {
    const out = [];
    for (const c of cases) {
      if (typeof c === "string") continue;
      const name = `${JSON.stringify(c.input)} against ${JSON.stringify(c.base)}`;
      let u;
      try {
        u = c.base == null ? new URL(c.input) : new URL(c.input, c.base);
      } catch (e) {
        out.push({ name, ok: c.failure === true, why: `threw ${e}` });
        continue;
      }
      if (c.failure) {
        out.push({ name, ok: false, why: `parsed as ${u.href}, expected failure` });
        continue;
      }
      const wrong = URL_FIELDS.filter((f) => f in c && u[f] !== c[f]).map((f) => `${f}=${JSON.stringify(u[f])} want ${JSON.stringify(c[f])}`);
      if ("origin" in c && u.origin !== c.origin) wrong.push(`origin=${u.origin} want ${c.origin}`);
      out.push({ name, ok: wrong.length === 0, why: wrong.join(", ") });
    }
    return out;
  },
  // url/resources/setters_tests.json
  setters(data) {
    const out = [];
    for (const [attr, cases] of Object.entries(data)) {
      if (attr === "comment") continue;
      for (const c of cases) {
        const name = `${attr}=${JSON.stringify(c.new_value)} on ${c.href}`;
        try {
          const u = new URL(c.href);
          u[attr] = c.new_value;
          const wrong = Object.entries(c.expected).filter(([k, v]) => u[k] !== v).map(([k, v]) => `${k}=${JSON.stringify(u[k])} want ${JSON.stringify(v)}`);
          out.push({ name, ok: wrong.length === 0, why: wrong.join(", ") });
        } catch (e) {
          out.push({ name, ok: false, why: `threw ${e}` });
        }
      }
    }
    return out;
  },
  // url/resources/urlencoded-parser-data.json
  urlencoded(cases) {
    return cases.filter((c) => typeof c !== "string").map((c) => {
      const got = [...new URLSearchParams(c.input)];
      return { name: JSON.stringify(c.input), ok: JSON.stringify(got) === JSON.stringify(c.output), why: JSON.stringify(got) };
    });
  },
  // fetch/data-urls/resources/base64.json, through atob()
  base64(cases) {
    return cases.map(([input, expected]) => {
      let got;
      try {
        got = [...atob(input)].map((ch) => ch.charCodeAt(0));
      } catch {
        got = null;
      }
      return { name: JSON.stringify(input), ok: JSON.stringify(got) === JSON.stringify(expected), why: JSON.stringify(got) };
    });
  },
};

export default {
  async fetch(request) {
    const suite = suites[new URL(request.url).pathname.slice(1)];
    if (!suite) return new Response("unknown suite", { status: 404 });
    const results = suite(await request.json());
    return Response.json({
      total: results.length,
      failures: results.filter((r) => !r.ok).map(({ name, why }) => ({ name, why })),
    });
  },
};
