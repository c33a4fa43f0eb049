//! The control-socket messages: one JSON [`Request`] or [`Response`] per line.

use gatelet_agent_api::control::{Request, Response, MAX_LINE_BYTES};
use serde::{de::DeserializeOwned, Serialize};

use crate::{alloc_peak, assert_alloc_bound};

/// Peak allocation allowed per input byte, and in total beyond that (the decoded message, its
/// line re-serialized, and the second decoding).
const CONTROL_BYTES_PER_BYTE: usize = 64;
const CONTROL_FIXED_BYTES: usize = 16 * 1024;

/// A decoded message is written as one line without a newline, decodes to the same value, and
/// writes the same line again.
fn round_trip<T>(data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(msg) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let line = serde_json::to_string(&msg).unwrap();
    assert!(!line.contains('\n'), "a message spans lines: {line:?}");
    let back: T = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(back, msg, "{line:?} decodes to something else");
    assert_eq!(serde_json::to_string(&back).unwrap(), line);
}

/// Requests (the agent's side) and responses (the companion's side) of the control socket.
pub fn check(data: &[u8]) {
    if data.len() > MAX_LINE_BYTES {
        return; // refused by both sides before decoding
    }
    let ((), peak) = alloc_peak(|| {
        round_trip::<Request>(data);
        round_trip::<Response>(data);
    });
    assert_alloc_bound(
        "control message",
        peak,
        data.len(),
        CONTROL_BYTES_PER_BYTE,
        CONTROL_FIXED_BYTES,
    );
}
