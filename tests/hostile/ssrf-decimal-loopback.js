// expect: 500 uncaught_exception
export default { async fetch() { return await fetch("http://2130706433:8787/"); } };
