//! Network partitions. A grudge says, for each node, which nodes it must stop hearing from;
//! the rules are iptables DROPs in the receiving node's namespace, so the link is really cut
//! (clients on the bridge address still reach every node, as in Jepsen).

use std::collections::BTreeSet;

use rand::seq::SliceRandom as _;
use serde_json::{json, Value};

use super::{blocking, names, Ctx};

/// Everyone hears only the members of its own group.
fn grudge_from_groups(all: &[usize], groups: &[Vec<usize>]) -> Vec<(usize, Vec<usize>)> {
    all.iter()
        .map(|&n| {
            let mine: BTreeSet<usize> = groups
                .iter()
                .find(|g| g.contains(&n))
                .map(|g| g.iter().copied().collect())
                .unwrap_or_else(|| BTreeSet::from([n]));
            (
                n,
                all.iter().copied().filter(|o| !mine.contains(o)).collect(),
            )
        })
        .collect()
}

/// Each node hears only the nodes it may see (symmetric when `visible` is).
fn grudge_from_visibility(
    all: &[usize],
    visible: impl Fn(usize, usize) -> bool,
) -> Vec<(usize, Vec<usize>)> {
    all.iter()
        .map(|&n| {
            (
                n,
                all.iter()
                    .copied()
                    .filter(|&o| o != n && !visible(n, o))
                    .collect(),
            )
        })
        .collect()
}

/// Circular distance between positions `a` and `b` on a ring of `n`.
fn ring_distance(a: usize, b: usize, n: usize) -> usize {
    let d = a.abs_diff(b);
    d.min(n - d)
}

pub(super) async fn start(c: &Ctx, name: &str) -> anyhow::Result<Value> {
    let all = c.all();
    let n = all.len();
    let mut shuffled = all.clone();
    shuffled.shuffle(&mut *c.rng());
    let (grudge, value) = match name {
        "partition-one" | "partition-leader" => {
            let (victim, known) = if name == "partition-leader" {
                c.leader_or_any().await
            } else {
                (c.rand_node(), false)
            };
            let (grudge, mut value) = alone(&all, victim);
            value["was_leader"] = json!(known && name == "partition-leader");
            (grudge, value)
        }
        "partition-halves" => {
            let (minority, majority) = shuffled.split_at(n / 2);
            let (mut a, mut b) = (minority.to_vec(), majority.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            (
                grudge_from_groups(&all, &[a.clone(), b.clone()]),
                json!({ "groups": [names(&a), names(&b)] }),
            )
        }
        "partition-ring" => {
            // Nodes on a random ring; each one sees its neighbours within distance d, so it
            // sees a majority and no two nodes see the same one. With three nodes a symmetric
            // ring is a line: the two ends cannot hear each other.
            let pos = |x: usize| shuffled.iter().position(|y| *y == x).unwrap_or(0);
            let d = (c.majority() - 1).div_ceil(2).max(1);
            let grudge = if n == 3 {
                let (a, b) = (shuffled[0], shuffled[2]);
                grudge_from_visibility(&all, |x, y| !((x == a && y == b) || (x == b && y == a)))
            } else {
                grudge_from_visibility(&all, |x, y| ring_distance(pos(x), pos(y), n) <= d)
            };
            let ring: Vec<String> = shuffled.iter().map(|i| format!("n{i}")).collect();
            (grudge, json!({ "ring": ring, "distance": d }))
        }
        "partition-bridge" => {
            // Two halves that cannot hear each other and one node that hears both.
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            let (a, b) = (a.to_vec(), b.to_vec());
            let grudge = grudge_from_visibility(&all, |x, y| {
                x == bridge || y == bridge || (a.contains(&x) == a.contains(&y))
            });
            (
                grudge,
                json!({ "bridge": format!("n{bridge}"), "sides": [names(&a), names(&b)] }),
            )
        }
        other => anyhow::bail!("not a partition: {other}"),
    };
    cut(c, &grudge, value)
}

/// `victim` in a group of its own, everyone else together.
fn alone(all: &[usize], victim: usize) -> (Vec<(usize, Vec<usize>)>, Value) {
    let rest: Vec<usize> = all.iter().copied().filter(|x| *x != victim).collect();
    (
        grudge_from_groups(all, &[vec![victim], rest.clone()]),
        json!({ "isolated": victim, "groups": [names(&[victim]), names(&rest)] }),
    )
}

/// Cuts node `victim` off from every other node (until [`heal`]).
pub(super) fn isolate(c: &Ctx, victim: usize) -> anyhow::Result<Value> {
    let (grudge, value) = alone(&c.all(), victim);
    cut(c, &grudge, value)
}

/// Applies `grudge` and adds the cuts to `value`.
fn cut(c: &Ctx, grudge: &[(usize, Vec<usize>)], mut value: Value) -> anyhow::Result<Value> {
    blocking(|| c.net.partition(grudge))?;
    value["cuts"] = json!(grudge
        .iter()
        .map(|(to, from)| (format!("n{to}"), names(from)))
        .collect::<serde_json::Map<String, Value>>());
    Ok(value)
}

pub(super) fn heal(c: &Ctx) -> anyhow::Result<Value> {
    blocking(|| c.net.heal())?;
    Ok(json!({ "healed": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cut_every_cross_link_both_ways() {
        let g = grudge_from_groups(&[1, 2, 3, 4, 5], &[vec![1, 2], vec![3, 4, 5]]);
        assert_eq!(g[0], (1, vec![3, 4, 5]));
        assert_eq!(g[2], (3, vec![1, 2]));
    }

    #[test]
    fn a_ring_of_five_lets_each_node_see_a_majority() {
        let all = [1, 2, 3, 4, 5];
        let g = grudge_from_visibility(&all, |x, y| ring_distance(x - 1, y - 1, 5) <= 1);
        for (n, dropped) in &g {
            assert_eq!(dropped.len(), 2, "n{n} sees itself and two neighbours");
        }
        assert_eq!(g[0].1, vec![3, 4]);
    }
}
