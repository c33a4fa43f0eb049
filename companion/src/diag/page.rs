//! The diagnostics page's HTML: the status page with its action forms, and the login form.
//! Everything shown is escaped; every form carries the caller's CSRF token.

/// How often the page reloads itself.
const REFRESH_S: u32 = 5;

/// `s` with `<`, `>`, `&`, `"` and `'` as HTML entities.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;max-width:60em}\
     pre{background:#f4f4f4;padding:1em;overflow-x:auto}\
     .err{color:#b00020}form{margin:1em 0}input{font-size:1em;padding:.3em}";

/// A POST button with the CSRF token and hidden fields.
fn button(action: &str, csrf: &str, fields: &[(&str, String)], label: &str) -> String {
    let hidden: String = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(v)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{action}\" style=\"display:inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{hidden}<button>{}</button></form>",
        escape(csrf),
        escape(label)
    )
}

/// One route the page offers actions for: id, name, whether it has Wake-on-LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRoute {
    /// The route id.
    pub id: u64,
    /// Its domain, or `l4:<port>`.
    pub name: String,
    /// Whether it has a `wol_mac`.
    pub wol: bool,
}

/// The HTML page for a rendered status text, with the action buttons (carrying `csrf`) and,
/// for a session (`logout`), a logout button.
pub fn page(status_text: &str, csrf: &str, routes: &[ActionRoute], logout: bool) -> String {
    let mut actions = format!(
        "<h2>Actions</h2><p>{}</p>",
        button("/action/sync", csrf, &[], "Sync now")
    );
    if !routes.is_empty() {
        actions.push_str("<ul>");
        for r in routes {
            let id = [("route_id", r.id.to_string())];
            let wake = if r.wol {
                button("/action/wake", csrf, &id, "Wake")
            } else {
                String::new()
            };
            actions.push_str(&format!(
                "<li>{} {wake} {}</li>",
                escape(&r.name),
                button("/action/probe", csrf, &id, "Re-probe")
            ));
        }
        actions.push_str("</ul>");
    }
    let logout = if logout {
        button("/logout", csrf, &[], "Log out")
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>gatelet</title><style>{STYLE}</style></head><body>\
         <h1>gatelet</h1><pre>{}</pre>{actions}<p><a href=\"/status.json\">status.json</a></p>\
         {logout}</body></html>",
        escape(status_text)
    )
}

/// The login form, with a message (already plain text) above it.
pub fn login_page(message: &str) -> String {
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"err\" id=\"msg\">{}</p>", escape(message))
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>gatelet: log in</title><style>{STYLE}</style></head><body>\
         <h1>gatelet</h1>{msg}<form method=\"post\" action=\"/login\">\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\" \
         autocomplete=\"current-password\" autofocus required></label> \
         <button id=\"login\">Log in</button></form></body></html>"
    )
}
