//! The config loader on any text.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = wtm_config::Config::from_toml_str(text);
        }
    });
}
