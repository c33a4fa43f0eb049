//! The diagnostics page's HTML: the first state of the page rendered on the server from a
//! [`View`] (all of it readable without JavaScript), and the login form. Its script
//! (`assets/page.js`) redraws the same sections from `status.json` every few seconds and draws
//! the charts; its style sheet (`assets/page.css`) lays it out down to phone width and in dark
//! mode. Everything shown is escaped; every form carries the caller's CSRF token.

use std::fmt::Write as _;

use super::view::{ago, bytes, RouteView, Row, View};

/// The page's style sheet, served at [`CSS_PATH`].
pub const CSS: &str = include_str!("assets/page.css");
/// The page's script, served at [`JS_PATH`].
pub const JS: &str = include_str!("assets/page.js");
/// Where the style sheet is served.
pub const CSS_PATH: &str = "/assets/page.css";
/// Where the script is served.
pub const JS_PATH: &str = "/assets/page.js";

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

/// A POST button with the CSRF token and hidden fields (the script builds the same markup).
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
        "<form method=\"post\" action=\"{action}\" class=\"act\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{hidden}<button>{}</button></form>",
        escape(csrf),
        escape(label)
    )
}

fn rows(rows: &[Row], now_ms: u64) -> String {
    let mut o = String::from("<dl>");
    for r in rows {
        let mut value = escape(&r.value);
        if let Some(at) = r.at_ms {
            value = value.replace("{ago}", &ago(now_ms.saturating_sub(at)));
        }
        let _ = write!(
            o,
            "<dt>{}</dt><dd class=\"{}\">{value}</dd>",
            escape(r.label),
            r.tone
        );
    }
    o.push_str("</dl>");
    o
}

fn tone(word: &str) -> &'static str {
    match word {
        "listening" | "up" => "good",
        "failed" | "down" => "bad",
        "not served" => "warn",
        _ => "",
    }
}

fn route_row(r: &RouteView, csrf: Option<&str>) -> String {
    let small = |s: &Option<String>| {
        s.as_deref()
            .map(|s| format!(" <small>{}</small>", escape(s)))
            .unwrap_or_default()
    };
    let mut actions = String::new();
    if let Some(csrf) = csrf {
        let id = [("route_id", r.id.to_string())];
        if r.wol {
            actions.push_str(&button("/action/wake", csrf, &id, "Wake"));
        }
        actions.push_str(&button("/action/probe", csrf, &id, "Re-probe"));
    }
    format!(
        "<tr data-id=\"{id}\"><td data-l=\"Route\"><b>{name}</b><br><small>{kind} to {target}\
         </small></td><td data-l=\"Listener\"><span class=\"pill {lt}\">{l}</span>{reason}</td>\
         <td data-l=\"Target\"><span class=\"pill {tt}\">{t}</span>{detail}</td>\
         <td data-l=\"Open\">{conns}</td><td data-l=\"Bytes\">{bytes}</td>\
         <td data-l=\"\">{actions}</td></tr>",
        id = r.id,
        name = escape(&r.name),
        kind = r.kind,
        target = escape(&r.target),
        lt = tone(r.listener),
        l = r.listener,
        reason = small(&r.reason),
        tt = tone(r.target_state),
        t = r.target_state,
        detail = small(&r.target_detail),
        conns = r.connections,
        bytes = bytes(r.bytes),
    )
}

fn routes(v: &View, csrf: Option<&str>) -> String {
    if v.routes.is_empty() {
        return "<p>No routes in force.</p>".into();
    }
    let mut o = String::from(
        "<table><thead><tr><th>Route</th><th>Listener</th><th>Target</th><th>Open</th>\
         <th>Bytes</th><th></th></tr></thead><tbody>",
    );
    for r in &v.routes {
        o.push_str(&route_row(r, csrf));
    }
    o.push_str("</tbody></table>");
    o
}

fn rejected(v: &View) -> String {
    if v.rejected.is_empty() {
        return String::new();
    }
    let mut o = String::from("<h3>Rejected routes</h3><ul class=\"rej\">");
    for r in &v.rejected {
        let id = r.id.map_or("?".into(), |i| i.to_string());
        let _ = write!(
            o,
            "<li><b>{} #{id}</b>: {}</li>",
            escape(&r.kind),
            escape(&r.reason)
        );
    }
    o.push_str("</ul>");
    o
}

fn events(v: &View) -> String {
    if v.events.is_empty() {
        return "<p>No events yet.</p>".into();
    }
    let mut o = String::from("<ol>");
    for e in &v.events {
        let count = if e.count > 1 {
            format!(" <small>\u{d7}{}</small>", e.count)
        } else {
            String::new()
        };
        let _ = write!(
            o,
            "<li><time>{}</time> <span class=\"k\">{}</span> {}{count}</li>",
            ago(v.now_ms.saturating_sub(e.at_ms)),
            escape(&e.kind),
            escape(&e.detail)
        );
    }
    o.push_str("</ol>");
    o
}

fn reasons(v: &View) -> String {
    v.verdict
        .reasons
        .iter()
        .map(|r| format!("<li>{}</li>", escape(r)))
        .collect()
}

/// The page for `view`, with action buttons carrying `csrf` when the view allows acting and,
/// for a session (`logout`), a logout button.
pub fn page(v: &View, csrf: &str, logout: bool) -> String {
    let act = v.can_act.then_some(csrf);
    let sync_now = act
        .map(|c| button("/action/sync", c, &[], "Sync now"))
        .unwrap_or_default();
    let logout = if logout {
        button("/logout", csrf, &[], "Log out")
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>gatelet: {word}</title><link rel=\"stylesheet\" href=\"{CSS_PATH}\"></head>\
         <body data-csrf=\"{csrf}\" data-act=\"{can}\">\
         <header id=\"top\" class=\"{level}\"><h1>gatelet <span id=\"word\">{word}</span></h1>\
         <ul id=\"why\">{why}</ul><p id=\"upd\">Updated <span id=\"age\">0 s ago</span>\
         <noscript> (reload the page for news)</noscript><span id=\"msg\"></span></p>\
         <nav>{sync_now}{logout}<a href=\"/status.json\">status.json</a></nav></header>\
         <main><section class=\"card\"><h2>Tunnel</h2><div id=\"t\">{tunnel}</div></section>\
         <section class=\"card\"><h2>Sync</h2><div id=\"s\">{sync}{rej}</div></section>\
         <section class=\"card\"><h2>Heartbeat</h2><div id=\"h\">{hb}</div></section>\
         <section class=\"card wide\"><h2>Routes</h2><div id=\"r\">{routes}</div></section>\
         <section class=\"card wide\"><h2>Last hour</h2><div id=\"c\">\
         <noscript><p>The charts need JavaScript.</p></noscript></div></section>\
         <section class=\"card wide\"><h2>Recent events</h2><div id=\"e\">{events}</div>\
         </section></main><script src=\"{JS_PATH}\"></script></body></html>",
        word = v.verdict.word,
        level = v.verdict.level,
        csrf = escape(csrf),
        can = u8::from(v.can_act),
        why = reasons(v),
        tunnel = rows(&v.tunnel, v.now_ms),
        sync = rows(&v.sync, v.now_ms),
        rej = rejected(v),
        hb = rows(&v.heartbeat, v.now_ms),
        routes = routes(v, act),
        events = events(v),
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
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>gatelet: log in</title><link rel=\"stylesheet\" href=\"{CSS_PATH}\"></head>\
         <body><main class=\"login card\"><h1>gatelet</h1>{msg}\
         <form method=\"post\" action=\"/login\">\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\" \
         autocomplete=\"current-password\" autofocus required></label> \
         <button id=\"login\">Log in</button></form></main></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::super::history::Series;
    use super::super::view::{EventView, Rejected, Verdict};
    use super::*;

    const EVIL: &str = "<img src=x onerror=alert(1)>\"'&";
    const ESCAPED: &str = "&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;";

    fn view(can_act: bool) -> View {
        View {
            now_ms: 100_000,
            verdict: Verdict {
                level: "degraded",
                word: "Degraded",
                reasons: vec![format!("{EVIL}: listener failed")],
            },
            tunnel: vec![Row {
                label: "Hub",
                value: EVIL.into(),
                at_ms: None,
                tone: "",
            }],
            sync: vec![Row {
                label: "Last success",
                value: "{ago}".into(),
                at_ms: Some(88_000),
                tone: "",
            }],
            rejected: vec![Rejected {
                kind: "l4".into(),
                id: Some(4),
                reason: EVIL.into(),
            }],
            heartbeat: vec![],
            routes: vec![RouteView {
                id: 7,
                kind: "http",
                name: EVIL.into(),
                target: EVIL.into(),
                listener: "failed",
                reason: Some(EVIL.into()),
                target_state: "down",
                target_detail: Some(EVIL.into()),
                connections: 2,
                bytes: 1536,
                refused: 0,
                failures: 0,
                wol: true,
            }],
            events: vec![EventView {
                at_ms: 40_000,
                kind: "wake".into(),
                detail: EVIL.into(),
                count: 3,
            }],
            history: Series::default(),
            can_act,
        }
    }

    #[test]
    fn everything_from_config_and_server_is_escaped() {
        let p = page(&view(true), "tok\"en", true);
        assert!(!p.contains("<img"), "{p}");
        assert!(!p.contains("\"'&"), "{p}");
        // Reason in the header, hub, rejected reason, route name, target, listener reason,
        // target detail and the event: eight times.
        assert_eq!(p.matches(ESCAPED).count(), 8, "{p}");
        assert!(p.contains("value=\"tok&quot;en\""));
        assert!(!login_page(EVIL).contains("<img"));
    }

    #[test]
    fn renders_the_states_ages_and_units() {
        let p = page(&view(true), "t", false);
        assert!(p.contains("<span id=\"word\">Degraded</span>"));
        assert!(p.contains("<header id=\"top\" class=\"degraded\">"));
        assert!(p.contains("<dd class=\"\">12 s ago</dd>"), "{p}");
        assert!(p.contains("<span class=\"pill bad\">failed</span>"));
        assert!(p.contains("<span class=\"pill bad\">down</span>"));
        assert!(p.contains("1.5 KiB"));
        assert!(p.contains("<time>1 min ago</time>") || p.contains("<time>60 s ago</time>"));
        assert!(p.contains("\u{d7}3"));
        assert!(!p.contains("/logout"));
        assert!(p.contains(&format!("src=\"{JS_PATH}\"")));
    }

    #[test]
    fn action_buttons_only_when_the_caller_may_act() {
        let p = page(&view(true), "t", true);
        assert!(p.contains("action=\"/action/wake\""));
        assert!(p.contains("action=\"/action/probe\""));
        assert!(p.contains("action=\"/action/sync\""));
        assert!(p.contains("name=\"route_id\" value=\"7\""));
        let p = page(&view(false), "t", true);
        assert!(!p.contains("/action/"), "{p}");
        assert!(p.contains("action=\"/logout\""));
    }
}
