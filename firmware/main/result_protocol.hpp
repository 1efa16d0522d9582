// Result protocol v1 (chip -> host): line formatting, CRC-32 and latency statistics.
//
// The definition of the protocol is docs/protocol.md; quant/board/protocol.py is its only parser.
// Portable C++17: no ESP-IDF or ESP-DL headers, no exceptions, no heap. The same file is compiled
// into the firmware and by tests_host (host g++), which checks its output byte for byte against the
// golden transcript tests_host/golden/transcript.txt.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gm {

constexpr int kProtocolVersion = 1;
constexpr int kMaxTensorElementsPerLine = 64;
constexpr size_t kMaxLineBytes = 1024;  // from '@' to the last checksum digit, newline excluded

// CRC-32, IEEE 802.3 (reflected, polynomial 0xEDB88320, init and final xor 0xFFFFFFFF):
// the same value as Python's zlib.crc32.
uint32_t crc32(const char *data, size_t len);

// Latency over the runs of one vector. latency_stats sorts `samples` in place (ascending).
// median = the lower middle element: sorted[(n - 1) / 2] (for odd n the middle, for even n the
// smaller of the two middle values; Python's statistics.median_low). n == 0 gives all zeros.
struct LatencyStats {
    uint32_t min_us;
    uint32_t med_us;
    uint32_t max_us;
};
LatencyStats latency_stats(uint32_t *samples, size_t n);

// Receives one complete line, '\n' included (on the chip: fputs to stdout + fflush).
using Sink = void (*)(const char *line, void *ctx);

// Builds, checksums and emits protocol lines and counts them for END.
//   begin("MEM"); field("stage", "after_load"); field("internal_free", n); ...; end();
// Values are sanitized: any byte outside printable ASCII (0x21..0x7e), and '*', '=', '@', become
// '_'; an empty value becomes "_". A line that would exceed kMaxLineBytes is not emitted: an
// `ERROR code=line_too_long msg=<TAG>` line is emitted (and counted) instead.
class Emitter {
public:
    Emitter(Sink sink, void *ctx);

    void begin(const char *tag);  // starts "@gm1 TAG"
    void field(const char *key, const char *value);
    void field(const char *key, int value);
    void field(const char *key, long value);
    void field(const char *key, long long value);
    void field(const char *key, unsigned value);
    void field(const char *key, unsigned long value);
    void field(const char *key, unsigned long long value);
    void field_u(const char *key, unsigned long long value);
    void field_shape(const char *key, const int *dims, int ndim);       // "1x48x48x16"
    void field_ints(const char *key, const int32_t *values, size_t n);  // "1,-2,3"
    void end();  // appends " *<crc32, 8 lower-case hex>\n", emits, counts

    // Payload lines emitted so far (BOOT included; END, which carries this count, excluded).
    unsigned lines() const { return lines_; }

    // Convenience for the tags of docs/protocol.md.
    // One tensor as TENSOR lines of at most kMaxTensorElementsPerLine elements (off/count/total).
    // `data` holds `total` elements in NHWC order; `dtype` is "int8", "int16" or "int32".
    void tensor(int vec, const char *name, const char *dtype, const int *shape, int ndim,
                int exponent, const int32_t *data, size_t total);
    void tensor(int vec, const char *name, const int *shape, int ndim, int exponent,
                const int8_t *data, size_t total);  // dtype int8
    void tensor(int vec, const char *name, const int *shape, int ndim, int exponent,
                const int16_t *data, size_t total);  // dtype int16
    // LAT line from the raw per-run samples (sorted in place by latency_stats).
    void latency(int vec, unsigned runs, uint32_t *samples_us);
    void error(const char *code, const char *msg);  // ERROR line (msg: spaces become '_')
    void end_line(int vectors, int tensors, bool ok);  // END vectors= tensors= lines=lines() status=

private:
    enum class Elem { I8, I16, I32 };
    void tensor_any(int vec, const char *name, const char *dtype, const int *shape, int ndim,
                    int exponent, const void *data, Elem elem, size_t total);
    void raw(const char *s);          // appends verbatim (overflow-checked)
    void raw_value(const char *s);    // appends sanitized
    void key(const char *k);          // appends " k="
    void emit_line();                 // checksum + newline + sink, no counting

    Sink sink_;
    void *ctx_;
    unsigned lines_ = 0;
    size_t len_ = 0;
    bool overflow_ = false;
    char tag_[16] = {};
    char buf_[kMaxLineBytes + 2] = {};
};

}  // namespace gm
