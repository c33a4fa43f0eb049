//! Which connection makes room when a listener at its cap takes a newcomer, the rule both
//! daemons' edges use (the companion's HTTP server, the agent's management API relay): the
//! oldest connection of the source address that holds the most. A flood from one address then
//! evicts its own connections first, and a caller with one connection keeps it.

use std::collections::HashMap;
use std::net::IpAddr;

/// The oldest (smallest `age`) connection of the source holding the most of `conns`, given as
/// (source, age) pairs; between sources holding as many, the one with the oldest connection.
/// None when `conns` is empty.
pub fn oldest_of_busiest<A: Ord + Copy>(conns: impl IntoIterator<Item = (IpAddr, A)>) -> Option<A> {
    let mut per: HashMap<IpAddr, (usize, A)> = HashMap::new();
    for (ip, age) in conns {
        per.entry(ip)
            .and_modify(|(n, oldest)| {
                *n += 1;
                if age < *oldest {
                    *oldest = age;
                }
            })
            .or_insert((1, age));
    }
    per.into_values()
        .max_by(|(n1, a1), (n2, a2)| n1.cmp(n2).then(a2.cmp(a1)))
        .map(|(_, oldest)| oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_source_gives_up_its_oldest() {
        let ip = |last: u8| IpAddr::from([10, 0, 0, last]);
        // (source's last octet, age) pairs, and the age of the connection to close.
        type Case = (&'static [(u8, u32)], Option<u32>);
        let cases: &[Case] = &[
            (&[], None),
            (&[(1, 5)], Some(5)),
            // One caller with one old connection keeps it; the flood loses its oldest.
            (&[(1, 1), (2, 7), (2, 3), (2, 9)], Some(3)),
            // Equal counts: the source whose oldest is older.
            (&[(1, 4), (1, 8), (2, 2), (2, 6)], Some(2)),
            (&[(2, 6), (1, 8), (2, 2), (1, 4)], Some(2)),
        ];
        for (conns, want) in cases {
            let got = oldest_of_busiest(conns.iter().map(|&(l, a)| (ip(l), a)));
            assert_eq!(got, *want, "{conns:?}");
        }
    }
}
