// expect: 500 invalid_response
export default { fetch() { return 42; } };
