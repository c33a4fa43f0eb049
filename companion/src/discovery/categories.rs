//! The service categories the server's UI offers (`lan_discovery_categories`), each a set of
//! TCP ports, mDNS service types and SSDP `SERVER`/`ST` substrings.
//!
//! Keys and labels are the server's (its UI renders `{key, label}`); the port sets are the
//! ones the reference gateway advertises, so a category means the same on either gateway.

use serde_json::{json, Value};

/// One category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Category {
    /// The key the server sends in `categories`.
    pub key: &'static str,
    /// The label shown in the server's UI.
    pub label: &'static str,
    /// TCP ports probed by the sweep.
    pub ports: &'static [u16],
    /// mDNS service types (`_http._tcp`) that belong here.
    pub mdns: &'static [&'static str],
    /// Substrings of an SSDP `SERVER` or `ST` that belong here.
    pub ssdp: &'static [&'static str],
}

/// Every category, in the order the UI lists them.
pub const CATEGORIES: &[Category] = &[
    Category {
        key: "web",
        label: "Web",
        ports: &[80, 443, 8080, 8443, 8000, 8081, 3000, 5000],
        mdns: &["_http._tcp", "_https._tcp"],
        ssdp: &[],
    },
    Category {
        key: "media",
        label: "Media",
        ports: &[32400, 8096, 8200],
        mdns: &["_googlecast._tcp", "_airplay._tcp"],
        ssdp: &["MediaServer", "MediaRenderer"],
    },
    Category {
        key: "remote_access",
        label: "Remote access",
        ports: &[22, 3389, 5900],
        mdns: &["_ssh._tcp", "_rfb._tcp"],
        ssdp: &[],
    },
    Category {
        key: "file_sharing",
        label: "File sharing",
        ports: &[445, 139, 548, 2049, 21],
        mdns: &["_smb._tcp", "_afpovertcp._tcp"],
        ssdp: &[],
    },
    Category {
        key: "printers",
        label: "Printers",
        ports: &[9100, 631, 515],
        mdns: &["_ipp._tcp", "_pdl-datastream._tcp"],
        ssdp: &["Printer"],
    },
    Category {
        key: "databases",
        label: "Databases",
        ports: &[5432, 3306, 6379, 27017],
        mdns: &[],
        ssdp: &[],
    },
    Category {
        key: "iot",
        label: "IoT / Smart home",
        ports: &[1883, 5683, 8123],
        mdns: &["_hap._tcp", "_matter._tcp", "_hue._tcp"],
        ssdp: &["Belkin", "WeMo"],
    },
];

/// The telemetry value `lan_discovery_categories`: `[{key, label}]`.
pub fn catalogue() -> Value {
    Value::Array(
        CATEGORIES
            .iter()
            .map(|c| json!({"key": c.key, "label": c.label}))
            .collect(),
    )
}

/// A resolved selection: which categories are active for one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    active: Vec<&'static Category>,
}

/// How the request's `categories` are meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only the listed categories.
    Include,
    /// Every category but the listed ones.
    Exclude,
}

impl Selection {
    /// Resolves `keys` under `mode`. Unknown keys are ignored (the server only sends keys
    /// we reported).
    pub fn resolve(mode: Mode, keys: &[String]) -> Selection {
        let listed = |c: &Category| keys.iter().any(|k| k == c.key);
        Selection {
            active: CATEGORIES
                .iter()
                .filter(|c| listed(c) == (mode == Mode::Include))
                .collect(),
        }
    }

    /// The active keys.
    pub fn keys(&self) -> Vec<&'static str> {
        self.active.iter().map(|c| c.key).collect()
    }

    /// The TCP ports to sweep, in probe order: the order of the categories and their lists
    /// (the most common first), each once.
    pub fn ports(&self) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        for p in self.active.iter().flat_map(|c| c.ports.iter()) {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        out
    }

    /// Whether a passive finding is kept: it matches an active category, or no category.
    pub fn passes(&self, mdns_type: Option<&str>, ssdp_text: Option<&str>) -> bool {
        let matches = |c: &Category| {
            mdns_type.is_some_and(|t| c.mdns.contains(&t))
                || ssdp_text.is_some_and(|s| c.ssdp.iter().any(|p| s.contains(p)))
        };
        let mut any = false;
        for c in CATEGORIES.iter().filter(|c| matches(c)) {
            any = true;
            if self.active.iter().any(|a| a.key == c.key) {
                return true;
            }
        }
        !any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_and_exclude_select_ports_and_filter_passive_findings() {
        let web = Selection::resolve(Mode::Include, &["web".into()]);
        assert_eq!(web.keys(), vec!["web"]);
        assert_eq!(
            web.ports(),
            vec![80, 443, 8080, 8443, 8000, 8081, 3000, 5000]
        );
        assert!(web.passes(Some("_http._tcp"), None));
        assert!(
            !web.passes(Some("_ipp._tcp"), None),
            "printer type, not selected"
        );
        assert!(
            web.passes(Some("_workstation._tcp"), None),
            "no category: kept"
        );
        assert!(!web.passes(None, Some("Linux UPnP/1.0 MediaServer/1.0")));

        let all_but_db = Selection::resolve(Mode::Exclude, &["databases".into()]);
        assert_eq!(all_but_db.keys().len(), CATEGORIES.len() - 1);
        assert!(!all_but_db.ports().contains(&5432));
        assert!(all_but_db.passes(None, Some("x MediaRenderer y")));
        assert!(Selection::resolve(Mode::Include, &[]).ports().is_empty());
        let every = Selection::resolve(Mode::Exclude, &[]);
        assert_eq!(every.ports().len(), 29, "every category's ports, each once");
    }

    #[test]
    fn catalogue_has_key_and_label_only() {
        let c = catalogue();
        assert_eq!(c[0], json!({"key": "web", "label": "Web"}));
        assert_eq!(c.as_array().map(Vec::len), Some(7));
    }
}
