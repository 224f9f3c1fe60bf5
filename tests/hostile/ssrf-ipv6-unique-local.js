// expect: 500 uncaught_exception
export default { async fetch() { return await fetch("http://[fd00::1]/"); } };
