use super::*;

fn list(entries: &[&str]) -> Allowlist {
    Allowlist::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn allowlist_admits_what_the_table_says() {
    let cases: &[(&[&str], &str, bool)] = &[
        (&[], "192.168.1.60", false),
        (&["192.168.1.60/32"], "192.168.1.60", true),
        (&["192.168.1.60/32"], "192.168.1.61", false),
        (&["192.168.1.60"], "192.168.1.60", true),
        (&["192.168.1.60"], "192.168.1.61", false),
        (&["192.168.1.0/24"], "192.168.1.254", true),
        (&["192.168.1.0/24"], "192.168.2.1", false),
        (&["0.0.0.0/0"], "10.1.2.3", true),
        (&["not-an-ip", "192.168.1.7"], "192.168.1.7", true),
        (&["not-an-ip"], "192.168.1.7", false),
        (&["192.168.1.7/33"], "192.168.1.7", false),
        (&["fd00::/8"], "192.168.1.7", false),
        (&["192.168.1.7"], "::ffff:192.168.1.7", true),
        (&["192.168.1.7"], "::1", false),
    ];
    for (entries, ip, want) in cases {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(list(entries).admits(ip), *want, "{entries:?} admits {ip}");
    }
}

#[test]
fn sources_parse_with_clear_errors() {
    assert_eq!(parse_source("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
    assert_eq!(
        parse_source(" 10.0.0.0/8 ").unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert!(parse_source("10.0.0.0/40").unwrap_err().contains("prefix"));
    assert!(parse_source("printer").unwrap_err().contains("not an IP"));
    assert!(parse_source("fd00::1").unwrap_err().contains("IPv4"));
}

#[test]
fn a_cell_change_applies_to_the_next_read() {
    let c = SourceCell::new(list(&["10.0.0.1"]));
    let ip: IpAddr = "10.0.0.2".parse().unwrap();
    assert!(!c.get().admits(ip));
    c.set(list(&["10.0.0.0/24"]));
    assert!(c.get().admits(ip));
}
