#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatelet_fuzz::control::check(data));
