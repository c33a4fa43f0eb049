//! `POST /api/lan-scan`: validates the request and starts a scan ([`crate::discovery`]);
//! answers at once (the server waits 7 s), the results follow as batches.

use serde_json::Value;

use super::{MgmtContext, Reply};

/// Handles one lan-scan request (authorised; `body` is the parsed JSON, if any).
pub fn handle(ctx: &MgmtContext, body: Option<&Value>) -> Reply {
    let Some(scanner) = ctx.lan_scan.as_ref() else {
        return Reply::error(501, "lan_scan_not_supported");
    };
    let empty = Value::Object(Default::default());
    let (status, answer) = scanner.start(body.unwrap_or(&empty));
    Reply::json(status, &answer)
}
