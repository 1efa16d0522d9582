// Host driver for firmware/main/result_protocol.cpp (built by tests_host/test_protocol.py).
//
//   emit_golden            a full, realistic session as the test app prints it (ROM banner and
//                          log lines interleaved); committed as tests_host/golden/transcript.txt
//   emit_golden edge       edge cases of formatting (sanitizing, limits, chunk boundaries, overflow)
//   emit_golden crc        CRC-32 of stdin as 8 hex digits
//   emit_golden stats N..  "min med max" of the samples N..
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <climits>

#include "result_protocol.hpp"

namespace {

void to_stdout(const char *line, void *) { std::fputs(line, stdout); }

// One log line and, for one payload line, a log prefix in front of it (another task's output
// without a newline): the parser must ignore everything before '@gm'.
const char *g_prefix = nullptr;
void to_stdout_with_prefix(const char *line, void *) {
    if (g_prefix != nullptr) {
        std::fputs(g_prefix, stdout);
        g_prefix = nullptr;
    }
    std::fputs(line, stdout);
}

void log(const char *text) { std::printf("%s\n", text); }

void print_samples(int vec, const uint32_t *s, size_t n) {
    std::printf("I (%d) golden: raw latency samples vec %d:", 2400 + vec, vec);
    for (size_t i = 0; i < n; ++i) std::printf("%s%u", i ? "," : " ", static_cast<unsigned>(s[i]));
    std::printf("\n");
}

int session() {
    gm::Emitter em(to_stdout_with_prefix, nullptr);
    log("ESP-ROM:esp32s3-20210327");
    log("Build:Mar 27 2021");
    log("rst:0x1 (POWERON),boot:0x8 (SPI_FAST_FLASH_BOOT)");
    log("I (27) boot: ESP-IDF v5.5.5 2nd stage bootloader");
    log("I (312) main_task: Calling app_main()");

    em.begin("BOOT");
    em.field("fw", "1.0.0");
    em.field("variant", "mixed");
    em.field("target", "esp32s3");
    em.field("idf", "v5.5.5");
    em.field("espdl", "3.3.9");
    em.field("cpu_mhz", 240);
    em.field("psram_bytes", 8388608u);
    em.field("cores", 1);
    em.field("runs", 10);
    em.field("vectors", 2);
    em.field("board", "chip");
    em.end();
    em.begin("READY");
    em.field("cmd", "run");
    em.end();

    em.begin("MODEL");
    em.field("sha256", "3f1c0a9e5b7d2c4e6a8b0d1f3e5c7a9b2d4f6e8a0c1b3d5f7e9a2c4b6d8f0e1a");
    em.field("bytes", 81344);
    em.field("location", "rodata");
    em.end();
    const long mem[4][2] = {{8254464, 372216}, {8171520, 358904}, {8171520, 358712}, {8102912, 351480}};
    const char *stages[4] = {"before_load", "after_load", "after_runs", "low_water"};
    for (int i = 0; i < 2; ++i) {
        em.begin("MEM");
        em.field("stage", stages[i]);
        em.field("internal_free", mem[i][1]);
        em.field("psram_free", mem[i][0]);
        em.end();
        if (i == 0) log("I (1204) dl::Model: model loaded from rodata, 81344 bytes");
    }

    // vector 0: output logits (int16, mixed variant) and, as in `run dump`, one intermediate
    // int8 tensor of 144 elements (3 TENSOR lines: 64 + 64 + 16).
    const int logits_shape[2] = {1, 7};
    const int16_t logits0[7] = {1893, -402, 377, -1290, -1610, -181, 64};
    const int16_t logits1[7] = {-733, 2210, -95, 12, -1544, 303, -870};
    const int conv_shape[4] = {1, 6, 6, 4};
    int8_t conv[144];
    for (int i = 0; i < 144; ++i) conv[i] = static_cast<int8_t>((i * 37 + 11) % 256 - 128);
    uint32_t lat0[10] = {10412, 10250, 10231, 10298, 10210, 10250, 10263, 10244, 10399, 10257};
    uint32_t lat1[10] = {10388, 10301, 10279, 10246, 10333, 10290, 10275, 10262, 10254, 10249};

    em.begin("INPUT");
    em.field("vec", 0);
    em.field("name", "zeros");
    em.field("exp", -7);
    em.field("dtype", "int8");
    em.end();
    em.tensor(0, "logits", logits_shape, 2, -10, logits0, 7);
    g_prefix = "I (2350) other_task: tick ";
    em.tensor(0, "/stem/conv/Conv_output_0", conv_shape, 4, -5, conv, 144);
    print_samples(0, lat0, 10);
    em.latency(0, 10, lat0);

    em.begin("INPUT");
    em.field("vec", 1);
    em.field("name", "swipe_left_0");
    em.field("exp", -7);
    em.field("dtype", "int8");
    em.end();
    em.tensor(1, "logits", logits_shape, 2, -10, logits1, 7);
    print_samples(1, lat1, 10);
    em.latency(1, 10, lat1);

    for (int i = 2; i < 4; ++i) {
        em.begin("MEM");
        em.field("stage", stages[i]);
        em.field("internal_free", mem[i][1]);
        em.field("psram_free", mem[i][0]);
        em.end();
    }
    log("I (5630) dl::Model: Test Pass!");
    em.begin("SELFTEST");
    em.field("result", "pass");
    em.end();
    em.end_line(2, 3, true);
    return 0;
}

int edge() {
    gm::Emitter em(to_stdout, nullptr);
    em.begin("ERROR");
    em.field("code", "sanitize");
    em.field("msg", "a b*c=d@e\tf\r\ng\xc3\xa9h");
    em.field("empty", "");
    em.end();
    em.begin("MEM");
    em.field("a", 0);
    em.field("b", -1);
    em.field("c", LLONG_MIN);
    em.field("d", LLONG_MAX);
    em.field_u("e", ULLONG_MAX);
    em.field("f", 4294967295u);
    em.field("g", -2147483647L - 1);
    em.end();
    const int shape0[2] = {1, 0};
    em.tensor(0, "empty", "int32", shape0, 2, 0, nullptr, 0);
    const int32_t scalar[1] = {-5};
    em.tensor(0, "scalar", "int32", nullptr, 0, -2, scalar, 1);  // shape "_"
    int32_t big[129];
    for (int i = 0; i < 129; ++i) big[i] = (i % 2 ? INT32_MIN : INT32_MAX) + (i % 2 ? i : -i);
    const int n_cases[3] = {64, 65, 129};
    for (int k = 0; k < 3; ++k) {
        const int shape[1] = {n_cases[k]};
        em.tensor(k, "chunks", "int32", shape, 1, 3, big, static_cast<size_t>(n_cases[k]));
    }
    em.begin("TOO_LONG_TAG_NAME_X");
    char longval[1100];
    std::memset(longval, 'v', sizeof(longval) - 1);
    longval[sizeof(longval) - 1] = '\0';
    em.field("v", longval);
    em.end();
    em.begin("EXACT");  // a line of exactly 1024 bytes: "@gm1 EXACT v=" + 1001 chars + " *crc32"
    char exact[1002];
    std::memset(exact, 'w', 1001);
    exact[1001] = '\0';
    em.field("v", exact);
    em.end();
    em.begin("OVER");  // 1025 bytes: replaced by ERROR line_too_long
    char over[1004];
    std::memset(over, 'w', 1003);
    over[1003] = '\0';
    em.field("v", over);
    em.end();
    uint32_t one[1] = {7};
    uint32_t two[2] = {9, 3};
    em.latency(0, 0, nullptr);
    em.latency(1, 1, one);
    em.latency(2, 2, two);
    em.error("model_load", "dl::Model returned nullptr");
    em.end_line(3, 4, false);
    return 0;
}

int crc() {
    static char buf[1 << 20];
    const size_t n = std::fread(buf, 1, sizeof(buf), stdin);
    std::printf("%08x\n", static_cast<unsigned>(gm::crc32(buf, n)));
    return 0;
}

int stats(int argc, char **argv) {
    uint32_t samples[256];
    size_t n = 0;
    for (int i = 2; i < argc && n < 256; ++i)
        samples[n++] = static_cast<uint32_t>(std::strtoul(argv[i], nullptr, 10));
    const gm::LatencyStats s = gm::latency_stats(samples, n);
    std::printf("%u %u %u\n", static_cast<unsigned>(s.min_us), static_cast<unsigned>(s.med_us),
                static_cast<unsigned>(s.max_us));
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc == 1) return session();
    if (std::strcmp(argv[1], "edge") == 0) return edge();
    if (std::strcmp(argv[1], "crc") == 0) return crc();
    if (std::strcmp(argv[1], "stats") == 0) return stats(argc, argv);
    std::fprintf(stderr, "usage: emit_golden [edge | crc | stats N...]\n");
    return 2;
}
