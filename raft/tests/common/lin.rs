//! A small linearizability checker for a single register (Wing & Gong search with Lowe's
//! memoization of (linearized set, register value)).

use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write(u64),
    /// The value read (`None`: the register was never written).
    Read(Option<u64>),
}

/// One completed or in-doubt operation. `ret == None` means the outcome is unknown (error or
/// timeout): the write may have taken effect at any time after `call`, or never.
#[derive(Debug, Clone, Copy)]
pub struct HOp {
    pub kind: Kind,
    pub call: u128,
    pub ret: Option<u128>,
}

/// Whether some total order of the operations, consistent with real time, is a legal register
/// history.
pub fn linearizable(ops: &[HOp]) -> bool {
    // In-doubt reads carry no information. An in-doubt write nobody read can always be placed
    // "never" (values are unique, so it cannot help any read), and one that was read must take
    // effect before the first read of its value returned: bounding it so keeps the search
    // polynomial instead of trying every subset of in-doubt writes.
    let first_read_ret = |v: u64| {
        ops.iter()
            .filter(|o| o.kind == Kind::Read(Some(v)))
            .filter_map(|o| o.ret)
            .min()
    };
    let ops: Vec<HOp> = ops
        .iter()
        .filter_map(|o| match (o.kind, o.ret) {
            (Kind::Read(_), None) => None,
            (Kind::Write(v), None) => first_read_ret(v).map(|r| HOp { ret: Some(r), ..*o }),
            _ => Some(*o),
        })
        .collect();
    let n = ops.len();
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut memo: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let required = ops.iter().filter(|o| o.ret.is_some()).count();
    search(&ops, &mut done, None, 0, required, &mut memo)
}

fn is_done(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

fn search(
    ops: &[HOp],
    done: &mut Vec<u64>,
    state: Option<u64>,
    done_required: usize,
    required: usize,
    memo: &mut HashSet<(Vec<u64>, Option<u64>)>,
) -> bool {
    if done_required == required {
        return true;
    }
    // An op can go next only if it was called before every pending op returned.
    let min_ret = (0..ops.len())
        .filter(|i| !is_done(done, *i))
        .filter_map(|i| ops[i].ret)
        .min()
        .unwrap_or(u128::MAX);
    for i in 0..ops.len() {
        if is_done(done, i) || ops[i].call > min_ret {
            continue;
        }
        let next = match ops[i].kind {
            Kind::Write(v) => Some(v),
            Kind::Read(v) if v == state => state,
            Kind::Read(_) => continue,
        };
        done[i / 64] |= 1 << (i % 64);
        let req = done_required + usize::from(ops[i].ret.is_some());
        if memo.insert((done.clone(), next)) && search(ops, done, next, req, required, memo) {
            return true;
        }
        done[i / 64] &= !(1 << (i % 64));
    }
    false
}

#[test]
fn checker_accepts_and_rejects() {
    use Kind::*;
    let op = |kind, call, ret| HOp { kind, call, ret };
    // Sequential write then read of it.
    assert!(linearizable(&[
        op(Write(1), 0, Some(1)),
        op(Read(Some(1)), 2, Some(3))
    ]));
    // Stale read: after write(2) completed, a later read returns 1.
    assert!(!linearizable(&[
        op(Write(1), 0, Some(1)),
        op(Write(2), 2, Some(3)),
        op(Read(Some(1)), 4, Some(5)),
    ]));
    // Concurrent write and read may order either way.
    assert!(linearizable(&[
        op(Write(1), 0, Some(10)),
        op(Read(None), 1, Some(2)),
        op(Read(Some(1)), 3, Some(4))
    ]));
    // Reads may not flip back: 1 then None is illegal once 1 was observed.
    assert!(!linearizable(&[
        op(Write(1), 0, Some(10)),
        op(Read(Some(1)), 1, Some(2)),
        op(Read(None), 3, Some(4))
    ]));
    // An in-doubt write may take effect late ...
    assert!(linearizable(&[
        op(Write(1), 0, None),
        op(Read(None), 1, Some(2)),
        op(Read(Some(1)), 30, Some(40))
    ]));
    // ... or never.
    assert!(linearizable(&[
        op(Write(1), 0, None),
        op(Read(None), 30, Some(40))
    ]));
}
