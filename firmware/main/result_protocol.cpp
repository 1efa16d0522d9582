// Result protocol v1: see result_protocol.hpp and docs/protocol.md.
#include "result_protocol.hpp"

#include <cstring>

namespace gm {

namespace {

struct CrcTable {
    uint32_t v[256];
    constexpr CrcTable() : v() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
            v[i] = c;
        }
    }
};
constexpr CrcTable kCrcTable;

// Decimal text of v into out (at least 21 bytes); returns the length.
size_t format_unsigned(unsigned long long v, char *out) {
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = static_cast<char>('0' + v % 10u);
        v /= 10u;
    } while (v != 0);
    for (size_t i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

size_t format_signed(long long v, char *out) {
    if (v >= 0) return format_unsigned(static_cast<unsigned long long>(v), out);
    out[0] = '-';
    // -(v + 1) + 1 avoids overflow on LLONG_MIN
    return 1 + format_unsigned(static_cast<unsigned long long>(-(v + 1)) + 1u, out + 1);
}

bool value_char_ok(char c) {
    const unsigned char u = static_cast<unsigned char>(c);
    return u >= 0x21 && u <= 0x7e && c != '*' && c != '=' && c != '@';
}

// Insertion sort: n is the number of runs (tens), no heap, deterministic.
void sort_u32(uint32_t *a, size_t n) {
    for (size_t i = 1; i < n; ++i) {
        const uint32_t x = a[i];
        size_t j = i;
        while (j > 0 && a[j - 1] > x) {
            a[j] = a[j - 1];
            --j;
        }
        a[j] = x;
    }
}

}  // namespace

uint32_t crc32(const char *data, size_t len) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; ++i)
        c = kCrcTable.v[(c ^ static_cast<unsigned char>(data[i])) & 0xFFu] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

LatencyStats latency_stats(uint32_t *samples, size_t n) {
    LatencyStats s{0, 0, 0};
    if (samples == nullptr || n == 0) return s;
    sort_u32(samples, n);
    s.min_us = samples[0];
    s.med_us = samples[(n - 1) / 2];
    s.max_us = samples[n - 1];
    return s;
}

Emitter::Emitter(Sink sink, void *ctx) : sink_(sink), ctx_(ctx) {}

void Emitter::raw(const char *s) {
    for (; *s != '\0'; ++s) {
        if (len_ >= kMaxLineBytes) {
            overflow_ = true;
            return;
        }
        buf_[len_++] = *s;
    }
}

void Emitter::raw_value(const char *s) {
    if (s == nullptr || *s == '\0') {
        raw("_");
        return;
    }
    char one[2] = {0, 0};
    for (; *s != '\0' && !overflow_; ++s) {
        one[0] = value_char_ok(*s) ? *s : '_';
        raw(one);
    }
}

void Emitter::key(const char *k) {
    raw(" ");
    raw(k);
    raw("=");
}

void Emitter::begin(const char *tag) {
    len_ = 0;
    overflow_ = false;
    std::strncpy(tag_, tag, sizeof(tag_) - 1);
    tag_[sizeof(tag_) - 1] = '\0';
    char version[24];
    format_unsigned(static_cast<unsigned long long>(kProtocolVersion), version);
    raw("@gm");
    raw(version);
    raw(" ");
    raw(tag);
}

void Emitter::field(const char *k, const char *value) {
    key(k);
    raw_value(value);
}

void Emitter::field(const char *k, long long value) {
    char text[24];
    format_signed(value, text);
    key(k);
    raw(text);
}

void Emitter::field(const char *k, int value) { field(k, static_cast<long long>(value)); }
void Emitter::field(const char *k, long value) { field(k, static_cast<long long>(value)); }
void Emitter::field(const char *k, unsigned value) { field_u(k, value); }
void Emitter::field(const char *k, unsigned long value) { field_u(k, value); }
void Emitter::field(const char *k, unsigned long long value) { field_u(k, value); }

void Emitter::field_u(const char *k, unsigned long long value) {
    char text[24];
    format_unsigned(value, text);
    key(k);
    raw(text);
}

void Emitter::field_shape(const char *k, const int *dims, int ndim) {
    key(k);
    char text[24];
    for (int i = 0; i < ndim; ++i) {
        if (i > 0) raw("x");
        format_signed(dims[i], text);
        raw(text);
    }
    if (ndim <= 0) raw("_");
}

void Emitter::field_ints(const char *k, const int32_t *values, size_t n) {
    key(k);
    char text[24];
    for (size_t i = 0; i < n; ++i) {
        if (i > 0) raw(",");
        format_signed(values[i], text);
        raw(text);
    }
    if (n == 0) raw("_");
}

void Emitter::emit_line() {
    static const char kHex[] = "0123456789abcdef";
    const uint32_t c = crc32(buf_, len_);
    char tail[12];
    tail[0] = ' ';
    tail[1] = '*';
    for (int i = 0; i < 8; ++i) tail[2 + i] = kHex[(c >> (28 - 4 * i)) & 0xFu];
    tail[10] = '\0';
    raw(tail);
    buf_[len_] = '\n';
    buf_[len_ + 1] = '\0';
    if (sink_ != nullptr) sink_(buf_, ctx_);
}

void Emitter::end() {
    // The checksum suffix takes 10 bytes; a line that cannot hold it is replaced by an ERROR line.
    if (overflow_ || len_ + 10 > kMaxLineBytes) {
        char tag[sizeof(tag_)];
        std::memcpy(tag, tag_, sizeof(tag));
        begin("ERROR");
        field("code", "line_too_long");
        field("msg", tag);
    }
    emit_line();
    ++lines_;
    len_ = 0;
}

void Emitter::tensor_any(int vec, const char *name, const char *dtype, const int *shape, int ndim,
                         int exponent, const void *data, Elem elem, size_t total) {
    int32_t chunk[kMaxTensorElementsPerLine];
    size_t off = 0;
    do {  // a tensor with no elements still gets one line (count=0, data=_)
        size_t count = total - off;
        if (count > static_cast<size_t>(kMaxTensorElementsPerLine)) count = kMaxTensorElementsPerLine;
        for (size_t i = 0; i < count; ++i) {
            const size_t j = off + i;
            switch (elem) {
                case Elem::I8: chunk[i] = static_cast<const int8_t *>(data)[j]; break;
                case Elem::I16: chunk[i] = static_cast<const int16_t *>(data)[j]; break;
                case Elem::I32: chunk[i] = static_cast<const int32_t *>(data)[j]; break;
            }
        }
        begin("TENSOR");
        field("vec", vec);
        field("name", name);
        field("dtype", dtype);
        field_shape("shape", shape, ndim);
        field("exp", exponent);
        field_u("off", off);
        field_u("count", count);
        field_u("total", total);
        field_ints("data", chunk, count);
        end();
        off += count;
    } while (off < total);
}

void Emitter::tensor(int vec, const char *name, const char *dtype, const int *shape, int ndim,
                     int exponent, const int32_t *data, size_t total) {
    tensor_any(vec, name, dtype, shape, ndim, exponent, data, Elem::I32, total);
}

void Emitter::tensor(int vec, const char *name, const int *shape, int ndim, int exponent,
                     const int8_t *data, size_t total) {
    tensor_any(vec, name, "int8", shape, ndim, exponent, data, Elem::I8, total);
}

void Emitter::tensor(int vec, const char *name, const int *shape, int ndim, int exponent,
                     const int16_t *data, size_t total) {
    tensor_any(vec, name, "int16", shape, ndim, exponent, data, Elem::I16, total);
}

void Emitter::latency(int vec, unsigned runs, uint32_t *samples_us) {
    const LatencyStats s = latency_stats(samples_us, runs);
    begin("LAT");
    field("vec", vec);
    field("runs", runs);
    field("min_us", s.min_us);
    field("med_us", s.med_us);
    field("max_us", s.max_us);
    end();
}

void Emitter::error(const char *code, const char *msg) {
    begin("ERROR");
    field("code", code);
    field("msg", msg);
    end();
}

void Emitter::end_line(int vectors, int tensors, bool ok) {
    begin("END");
    field("vectors", vectors);
    field("tensors", tensors);
    field("lines", lines_);
    field("status", ok ? "ok" : "error");
    emit_line();  // END is not counted: it carries the count
    len_ = 0;
}

}  // namespace gm
