# name source libraries — shared by tests/fuzz (libFuzzer) and tests/fuzz_replay (ctest).
