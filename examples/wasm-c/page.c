// A WebAssembly function in C: an ordinary main() for wasm32-wasi, no SDK. Tern runs it
// once per request in the CGI convention: the request comes in as environment variables
// and standard input, the response goes out on standard output (headers, a blank line,
// the body). Build: ./build.sh (Debian: apt-get install clang lld wasi-libc
// libclang-rt-14-dev-wasm32).
//
//   GET  /?name=Ada&n=3  an HTML page greeting `name` (escaped) with a table of n squares
//   POST /count          counts the bytes, lines and words of the posted body (JSON out)
//   GET  /env            the CGI variables the program was given, one per line
//   GET  /old            a redirect to / (a Location header alone)
//   GET  /stash?value=v  keeps v in a static buffer, then crashes (abort: 500 wasm_trap)
//   GET  /peek           shows that buffer: empty, as every request starts from the
//                        program's initial state, whatever the one before did
//   anything else        404
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v ? v : "";
}

static int hex(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = tolower(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// The decoded value of `key` in a query string, into out (at most size - 1 bytes).
static int query_param(const char *query, const char *key, char *out, size_t size) {
  size_t klen = strlen(key);
  for (const char *p = query; *p;) {
    const char *end = strchr(p, '&');
    if (!end) end = p + strlen(p);
    if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
      size_t n = 0;
      for (const char *s = p + klen + 1; s < end && n + 1 < size; s++) {
        if (*s == '+') {
          out[n++] = ' ';
        } else if (*s == '%' && s + 2 < end + 1 && hex(s[1]) >= 0 && hex(s[2]) >= 0) {
          out[n++] = (char)(hex(s[1]) * 16 + hex(s[2]));
          s += 2;
        } else {
          out[n++] = *s;
        }
      }
      out[n] = 0;
      return 1;
    }
    p = *end ? end + 1 : end;
  }
  return 0;
}

static void html_escaped(const char *s) {
  for (; *s; s++) {
    switch (*s) {
      case '<': fputs("&lt;", stdout); break;
      case '>': fputs("&gt;", stdout); break;
      case '&': fputs("&amp;", stdout); break;
      case '"': fputs("&quot;", stdout); break;
      case '\'': fputs("&#39;", stdout); break;
      default: putchar(*s);
    }
  }
}

static int page(void) {
  char name[256] = "world", n_text[16] = "5";
  query_param(env("QUERY_STRING"), "name", name, sizeof name);
  query_param(env("QUERY_STRING"), "n", n_text, sizeof n_text);
  int n = atoi(n_text);
  if (n < 0 || n > 1000) {
    printf("Status: 400 Bad Request\nContent-Type: text/plain\n\nn must be between 0 and 1000\n");
    return 0;
  }
  printf("Content-Type: text/html; charset=utf-8\n\n");
  printf("<!doctype html>\n<title>");
  html_escaped(env("SITE_TITLE"));
  printf("</title>\n<h1>Hello, ");
  html_escaped(name);
  printf("!</h1>\n<table>\n");
  for (int i = 1; i <= n; i++) printf("<tr><td>%d</td><td>%d</td></tr>\n", i, i * i);
  printf("</table>\n");
  return 0;
}

static int count(void) {
  long bytes = 0, lines = 0, words = 0;
  int c, in_word = 0;
  while ((c = getchar()) != EOF) {
    bytes++;
    if (c == '\n') lines++;
    if (isspace(c)) {
      in_word = 0;
    } else if (!in_word) {
      in_word = 1;
      words++;
    }
  }
  printf("Content-Type: application/json\n\n{\"bytes\":%ld,\"lines\":%ld,\"words\":%ld}\n", bytes, lines, words);
  return 0;
}

static char stash[256];

int main(void) {
  const char *method = env("REQUEST_METHOD");
  const char *path = env("PATH_INFO");
  if (strcmp(path, "/") == 0 && strcmp(method, "GET") == 0) return page();
  if (strcmp(path, "/count") == 0 && strcmp(method, "POST") == 0) return count();
  if (strcmp(path, "/env") == 0) {
    printf("Content-Type: text/plain\n\n");
    for (char **e = environ; *e; e++) printf("%s\n", *e);
    return 0;
  }
  if (strcmp(path, "/stash") == 0) {
    query_param(env("QUERY_STRING"), "value", stash, sizeof stash);
    fprintf(stderr, "stashed a value, now crashing\n");
    abort();
  }
  if (strcmp(path, "/peek") == 0) {
    printf("Content-Type: text/plain\n\nstash: [%s]\n", stash);
    return 0;
  }
  if (strcmp(path, "/old") == 0) {
    printf("Location: /\n\n");
    return 0;
  }
  printf("Status: 404 Not Found\nContent-Type: text/plain\n\nno page at %s\n", path);
  return 0;
}
