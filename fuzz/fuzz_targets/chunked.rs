#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatelet_fuzz::http::check_chunked(data));
