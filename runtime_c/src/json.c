/* A JSON cursor in the spirit of jsmn: no memory of its own, reads values in place.
 * It reads exactly what graph.json needs (objects, lists, strings, integers) and skips
 * anything else without interpreting it. Errors are sticky: j->bad and j->pos say where. */
#include <string.h>
#include "internal.h"

static int bad(json_cursor *j) {
  j->bad = 1;
  return 0;
}

static int peek(json_cursor *j) {
  for (; j->pos < j->text_len; j->pos++) {
    unsigned char c = (unsigned char)j->text[j->pos];
    if (c != ' ' && (c > '\r' || !((1u << c) & (1u << '\t' | 1u << '\n' | 1u << '\r')))) return c;
  }
  return -1;
}

int json_eat(json_cursor *j, int c) {
  if (j->bad || peek(j) != c) return 0;
  j->pos++;
  return 1;
}

int json_string(json_cursor *j) {
  uint32_t b;
  if (!json_eat(j, '"')) return bad(j);
  for (b = j->pos; j->pos < j->text_len; j->pos++) {
    unsigned char c = (unsigned char)j->text[j->pos];
    if (c == '"') {
      j->str = j->text + b;
      j->str_len = j->pos++ - b;
      return 1;
    }
    if (c < 0x20) break;
    if (c == '\\') j->pos++; /* escapes are kept raw */
  }
  return bad(j);
}

int32_t json_int(json_cursor *j) {
  uint32_t x = 0, b;
  int neg = json_eat(j, '-');
  for (b = j->pos; j->pos < j->text_len && (uint32_t)(j->text[j->pos] - '0') < 10; j->pos++)
    x = x > 0x0fffffff ? 0x80000000u : x * 10 + (uint32_t)(j->text[j->pos] - '0');
  if (j->pos == b) return bad(j) - 2;
  return neg || x >> 31 ? -1 : (int32_t)x; /* minrt reads no negative numbers */
}

int json_ints(json_cursor *j, int64_t *v, int max) {
  int f = 1, n = 0;
  int32_t x;
  while (json_next(j, ']', &f)) {
    if ((x = json_int(j)) < -1) return -1;
    if (n < max) v[n] = x;
    n++;
  }
  return j->bad ? -1 : n;
}

int json_skip(json_cursor *j) {
  int depth = 0;
  do {
    int c = j->bad ? -1 : peek(j);
    if (c < 0) return bad(j);
    if (c == '"') {
      if (!json_string(j)) return 0;
    } else if (c == '[' || c == '{') {
      if (++depth > 64) return bad(j);
      j->pos++;
    } else if (c == ']' || c == '}' || c == ',' || c == ':') {
      if (!depth) return bad(j);
      depth -= c == ']' || c == '}';
      j->pos++;
    } else {
      uint32_t b = j->pos; /* a literal: true, false, null, a number */
      while (j->pos < j->text_len && !strchr(" \t\r\n,:[]{}\"", j->text[j->pos])) j->pos++;
      if (j->pos == b) return bad(j);
    }
  } while (depth);
  return 1;
}

/* The code unit of a \uXXXX at js[*p..jn) (then *p moves past it), or -1. */
static int32_t unicode_escape(const char *js, uint32_t jn, uint32_t *p) {
  uint32_t q = *p + 2, e = q + 4;
  int32_t v = 0, c;
  if (e > jn || js[q - 2] != '\\' || js[q - 1] != 'u') return -1;
  for (; q < e; q++) {
    c = js[q] | 0x20; /* lower case */
    c = (uint32_t)(c - '0') < 10 ? c - '0' : (uint32_t)(c - 'a') < 6 ? c - 'a' + 10 : -1;
    if (c < 0) return -1;
    v = v << 4 | c;
  }
  *p = e;
  return v;
}

int json_string_equals(const char *js, uint32_t jn, const char *s, size_t n) {
  uint32_t p = 0, k;
  int32_t c, lo;
  while (p < jn) {
    k = 1; /* a raw byte (UTF-8 as written) or an escaped ASCII character: itself */
    if ((c = unicode_escape(js, jn, &p)) >= 0) {
      k = p; /* a surrogate pair is one code point */
      if ((c >> 10) == 0x36 && (lo = unicode_escape(js, jn, &k)) >> 10 == 0x37)
        c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00), p = k;
      k = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; /* its UTF-8 length */
    } else if ((c = (uint8_t)js[p++]) == '\\' && p < jn) {
      const char *e;
      c = (uint8_t)js[p++];
      if (c == 'u') return 0; /* not 4 hex digits */
      /* b f n r t stand for control characters; anything else for itself (only letters
       * are looked up: a raw control byte or NUL after the backslash is itself) */
      if (c > ' ' && (e = strchr("b\bf\fn\nr\rt\t", c))) c = e[1];
    }
    /* c as UTF-8, compared from its last byte */
    if (n < k) return 0;
    for (lo = (int32_t)k; --lo; c >>= 6)
      if ((uint8_t)s[lo] != (0x80 | (c & 63))) return 0;
    if ((uint8_t)s[0] != (uint8_t)(k == 1 ? c : (0xF00 >> k) | c)) return 0;
    s += k, n -= k;
  }
  return !n;
}

int json_end(json_cursor *j) { return peek(j) < 0 || bad(j); }

int json_next(json_cursor *j, int close, int *first) {
  if (*first) {
    *first = 0;
    if (!json_eat(j, close - 2)) return bad(j); /* '[' or '{' */
    return !json_eat(j, close);                  /* (json_eat sets no error) */
  }
  if (json_eat(j, ',')) return 1;
  if (!json_eat(j, close)) bad(j);
  return 0;
}

const char *list_nth(const char *list, int i) {
  while (i--) list += strlen(list) + 1;
  return list;
}

int list_index(const char *s, uint32_t len, const char *list) {
  int i;
  for (i = 0; *list; i++, list += strlen(list) + 1)
    if (!strncmp(list, s, len) && !list[len]) return i;
  return -1;
}

int json_pick(json_cursor *j, const char *list, int sep) {
  if (!json_string(j) || (sep && !json_eat(j, sep))) return bad(j), -2;
  return list_index(j->str, j->str_len, list);
}
