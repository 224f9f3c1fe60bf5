// expect: 503 subrequest_limit_exceeded
// limit: subrequests = 3
// Every fetch is refused by the egress policy, but each one counts; the fourth is refused for the limit.
export default { async fetch() { for (let i = 0; ; i++) { try { await fetch("http://10.0.0.1/"); } catch (e) { if (String(e).includes("Too many subrequests")) throw e; } } } };
