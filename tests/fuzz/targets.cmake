# name source libraries — shared by tests/fuzz (libFuzzer) and tests/fuzz_replay (ctest).
gale_fuzz_target(telemetry fuzz_telemetry.c gale_core)
gale_fuzz_target(line fuzz_line.c gale_line_codec gale_core)
gale_fuzz_target(config fuzz_config.c gale_config)
gale_fuzz_target(mqtt fuzz_mqtt.c gale_mqtt_router)
gale_fuzz_target(ws fuzz_ws.c gale_ws_codec)
gale_fuzz_target(http fuzz_http.c gale_http_codec)
gale_fuzz_target(chunk fuzz_chunk.c gale_chunk_codec)
