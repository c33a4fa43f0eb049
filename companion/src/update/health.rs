//! The health gate's inputs, read from what the companion reports (its status [`Report`],
//! the same value `gatelet-companion status --json` prints), for the version on trial.

use std::time::Duration;

use super::machine::Health;
use crate::status::Report;

/// The longest handshake age that counts as a live tunnel: WireGuard's `REJECT_AFTER_TIME`
/// (a session older than this carries no data).
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(180);

/// The health of the daemons for `version` (the version on trial), from the companion's
/// report (`None`: it did not answer). Each daemon only counts when it runs `version`.
pub fn from_report(report: Option<&Report>, version: &str) -> Health {
    let Some(r) = report.filter(|r| r.daemon_running && r.companion_version == version) else {
        return Health::default();
    };
    let s = &r.snapshot;
    let agent = s
        .agent
        .as_ref()
        .filter(|a| s.agent_reachable && a.agent_version == version);
    Health {
        companion_ready: true,
        agent_ready: agent.is_some(),
        handshake: agent
            .and_then(|a| a.tunnel.handshake_age_s)
            .is_some_and(|age| age <= HANDSHAKE_FRESH.as_secs()),
        config_in_sync: agent.is_some_and(|a| {
            matches!(s.sync.state.as_str(), "in_sync" | "standalone")
                && a.config_hash.is_some()
                && a.config_hash == s.sync.config_hash
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Snapshot;
    use gatelet_agent_api::control::AgentStatus;

    fn report(agent_version: &str, age: Option<u64>, state: &str, hashes: (&str, &str)) -> Report {
        let mut snapshot = Snapshot {
            agent_reachable: true,
            agent: Some(AgentStatus {
                agent_version: agent_version.into(),
                config_hash: Some(hashes.0.into()),
                ..AgentStatus::default()
            }),
            ..Snapshot::default()
        };
        if let Some(a) = snapshot.agent.as_mut() {
            a.tunnel.handshake_age_s = age;
        }
        snapshot.sync.state = state.into();
        snapshot.sync.config_hash = Some(hashes.1.into());
        Report {
            daemon_running: true,
            companion_version: "0.2.0".into(),
            snapshot,
            ..Report::default()
        }
    }

    fn all() -> Health {
        Health {
            agent_ready: true,
            companion_ready: true,
            handshake: true,
            config_in_sync: true,
        }
    }

    #[test]
    fn healthy_only_when_every_part_holds_for_the_new_version() {
        let good = report("0.2.0", Some(12), "in_sync", ("h1", "h1"));
        assert_eq!(from_report(Some(&good), "0.2.0"), all());
        assert_eq!(from_report(None, "0.2.0"), Health::default());
        // The old agent still answering is not the new version being ready.
        assert_eq!(
            from_report(
                Some(&report("0.1.0", Some(1), "in_sync", ("h1", "h1"))),
                "0.2.0"
            ),
            Health {
                companion_ready: true,
                ..Health::default()
            }
        );
        let cases = [
            (report("0.2.0", None, "in_sync", ("h1", "h1")), "handshake"),
            (
                report("0.2.0", Some(181), "in_sync", ("h1", "h1")),
                "handshake",
            ),
            (
                report("0.2.0", Some(5), "backing_off", ("h1", "h1")),
                "config",
            ),
            (report("0.2.0", Some(5), "in_sync", ("h1", "h2")), "config"),
        ];
        for (r, what) in cases {
            let h = from_report(Some(&r), "0.2.0");
            assert!(h.agent_ready && h.companion_ready);
            match what {
                "handshake" => assert!(!h.handshake && h.config_in_sync, "{h:?}"),
                _ => assert!(h.handshake && !h.config_in_sync, "{h:?}"),
            }
        }
        let mut unreachable = good.clone();
        unreachable.snapshot.agent_reachable = false;
        assert!(!from_report(Some(&unreachable), "0.2.0").agent_ready);
        let standalone = report("0.2.0", Some(5), "standalone", ("h", "h"));
        assert_eq!(from_report(Some(&standalone), "0.2.0"), all());
        // The old companion answering is not the new version being ready.
        let mut old_companion = good.clone();
        old_companion.companion_version = "0.1.0".into();
        assert_eq!(
            from_report(Some(&old_companion), "0.2.0"),
            Health::default()
        );
    }
}
