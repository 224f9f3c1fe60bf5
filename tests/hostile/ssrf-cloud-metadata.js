// expect: 500 uncaught_exception
export default { async fetch() { return await fetch("http://169.254.169.254/latest/meta-data/iam/security-credentials/"); } };
