//! The subscription index: a trie over topic levels mapping filters to subscribers.
//!
//! Owns: insert, remove and match of (filter, key) pairs. Must not: validate filters (callers
//! pass filters `mqtt::topic` accepted), do I/O, or know what a key or value means.
//!
//! Depth: a valid filter or name may have 32,768 levels (65,535 bytes of `/`), and a client
//! chooses both. Insert, remove, match and drop therefore walk the trie with loops and an
//! explicit stack instead of recursion, so a deep topic cannot overflow a thread's stack.

use std::collections::HashMap;
use std::hash::Hash;
use std::mem;

/// Subscriptions keyed by filter and by subscriber key `K`; each (filter, key) pair holds one `V`.
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

/// One topic level. Wildcard levels get their own slots so matching never hashes `+` or `#`.
struct Node<K, V> {
    /// Literal next levels (never `+` or `#`, those live in the slots below).
    children: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    hash: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends at this node.
    subs: Subscribers<K, V>,
}

/// Subscribers of one filter: a dense Vec, so the publish path iterates contiguous memory,
/// plus a key -> position index once the Vec is too long to scan on subscribe/unsubscribe.
struct Subscribers<K, V> {
    entries: Vec<(K, V)>,
    /// Present only above `INDEX_FROM` entries. Boxed on purpose: most nodes never have an
    /// index, and a pointer costs them 8 bytes where an inline map would cost 48.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<K, usize>>>,
}

/// Entry count at which a node starts keeping a key index (a linear scan of up to this many
/// `Copy` keys is cheaper than hashing).
const INDEX_FROM: usize = 16;
/// Entry count below which the index is dropped again; lower than `INDEX_FROM` so a node
/// hovering at the boundary does not rebuild it on every change.
const INDEX_DROP_BELOW: usize = 8;
/// Collections smaller than this are never shrunk: reallocating them saves too little.
const SHRINK_MIN_CAPACITY: usize = 64;
/// Pending match steps kept on the call stack during a match before spilling to the heap;
/// ordinary topics have far fewer levels than this, so matching does not allocate.
const INLINE_PENDING: usize = 16;

impl<K: Copy + Eq + Hash, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash, V> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        SubscriptionTree {
            root: Node::new(),
            len: 0,
        }
    }

    /// Adds or replaces the value for (filter, key); returns the value it replaced.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        let old = node.subs.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes (filter, key); returns its value. Empty nodes are pruned.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        // Read-only pass: find the target and the deepest node on the path that must stay
        // (the root, or one with subscribers or another branch). Everything below it is a
        // single chain that becomes empty if the target loses its last subscriber.
        let mut keep_depth = 0;
        let mut node = &self.root;
        for (depth, level) in filter.split('/').enumerate() {
            if depth > 0 && (!node.subs.is_empty() || node.slot_count() > 1) {
                keep_depth = depth;
            }
            node = node.child(level)?;
        }
        if !node.subs.contains(&key) {
            return None;
        }
        let target_empties = node.subs.len() == 1 && node.slot_count() == 0;

        let value = if target_empties {
            // Detach the dead chain from the node that stays, then take the value out of it.
            let mut levels = filter.split('/');
            let mut keeper = &mut self.root;
            for level in levels.by_ref().take(keep_depth) {
                keeper = keeper.child_mut(level)?;
            }
            let mut chain = keeper.take_child(levels.next()?)?;
            let mut node = &mut chain;
            for level in levels {
                node = node.child_mut(level)?;
            }
            node.subs.remove(&key)
            // `chain` drops here; `Node::drop` frees it without recursion.
        } else {
            let mut node = &mut self.root;
            for level in filter.split('/') {
                node = node.child_mut(level)?;
            }
            node.subs.remove(&key)
        };
        if value.is_some() {
            self.len -= 1;
        }
        value
    }

    /// Calls `visit(filter_key, key, value)` once for every subscription whose filter matches
    /// the topic `name` (a subscriber with two matching filters is visited twice). Filters
    /// starting with `+` or `#` do not match names starting with `$`.
    pub fn for_each_match(&self, name: &str, mut visit: impl FnMut(K, &V)) {
        // [MQTT-4.7.2-1]: only the root's wildcard slots are skipped for `$` names.
        let dollar = name.starts_with('$');
        let mut pending = Pending::new();
        pending.push(Step::Descend(&self.root, Some(name), !dollar));
        // mosquitto's order, so that copies and subscription identifiers come as from it: at
        // each level the exact child's subtree, then that child's own subscribers (when the
        // name ends there), then the same for `+`, then this node's `#`. A stack, not
        // recursion: a name may have thousands of levels. Steps are pushed in reverse.
        while let Some(step) = pending.pop() {
            let (node, rest, wildcards) = match step {
                Step::Visit(node) => {
                    node.subs.visit(&mut visit);
                    continue;
                }
                Step::Descend(node, rest, wildcards) => (node, rest, wildcards),
            };
            if wildcards {
                // `#` matches the remaining levels, none included (the parent itself).
                if let Some(hash) = &node.hash {
                    pending.push(Step::Visit(hash));
                }
            }
            // `None` means every level is consumed (distinct from `Some("")`, an empty last
            // level still due).
            let Some(rest) = rest else { continue };
            let (level, after) = match rest.split_once('/') {
                Some((level, after)) => (level, Some(after)),
                None => (rest, None),
            };
            if wildcards {
                if let Some(plus) = node.plus.as_deref() {
                    if after.is_none() {
                        pending.push(Step::Visit(plus));
                    }
                    pending.push(Step::Descend(plus, after, true));
                }
            }
            if let Some(exact) = node.children.get(level) {
                if after.is_none() {
                    pending.push(Step::Visit(exact));
                }
                pending.push(Step::Descend(exact, after, true));
            }
        }
    }

    /// Number of (filter, key) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: None,
            subs: Subscribers::new(),
        }
    }

    /// Number of occupied child slots (literal children, `+`, `#`).
    fn slot_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn has_children(&self) -> bool {
        !self.children.is_empty() || self.plus.is_some() || self.hash.is_some()
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        match level {
            "+" => self.plus.get_or_insert_with(|| Box::new(Node::new())),
            "#" => self.hash.get_or_insert_with(|| Box::new(Node::new())),
            // Allocates the key even when present; subscribe is not the hot path.
            _ => self
                .children
                .entry(Box::from(level))
                .or_insert_with(Node::new),
        }
    }

    /// Detaches a child subtree, giving back spare map capacity when many children left.
    fn take_child(&mut self, level: &str) -> Option<Node<K, V>> {
        match level {
            "+" => self.plus.take().map(|b| *b),
            "#" => self.hash.take().map(|b| *b),
            _ => {
                let child = self.children.remove(level);
                shrink_map(&mut self.children);
                child
            }
        }
    }

    /// Moves every child into `out`, leaving this node childless.
    fn drain_children_into(&mut self, out: &mut Vec<Node<K, V>>) {
        out.extend(self.children.drain().map(|(_, child)| child));
        out.extend(self.plus.take().map(|b| *b));
        out.extend(self.hash.take().map(|b| *b));
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Frees the subtree with a heap stack: the derived drop would recurse once per level.
    fn drop(&mut self) {
        if !self.has_children() {
            return;
        }
        let mut stack = Vec::new();
        self.drain_children_into(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.drain_children_into(&mut stack);
            // `node` is childless now, so its own drop returns at once.
        }
    }
}

impl<K, V> Subscribers<K, V> {
    fn new() -> Self {
        Subscribers {
            entries: Vec::new(),
            index: None,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn visit(&self, visit: &mut impl FnMut(K, &V))
    where
        K: Copy,
    {
        for (key, value) in &self.entries {
            visit(*key, value);
        }
    }
}

impl<K: Copy + Eq + Hash, V> Subscribers<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn contains(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some((_, slot)) = self.position(&key).and_then(|i| self.entries.get_mut(i)) {
            return Some(mem::replace(slot, value));
        }
        let at = self.entries.len();
        self.entries.push((key, value));
        match &mut self.index {
            Some(index) => {
                index.insert(key, at);
            }
            None if self.entries.len() > INDEX_FROM => {
                let index = self
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (*k, i))
                    .collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        None
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.position(key)?;
        if at >= self.entries.len() {
            // Unreachable while the index mirrors `entries`; refuse rather than panic.
            return None;
        }
        // Order among subscribers carries no meaning, so fill the hole with the last entry.
        let (_, value) = self.entries.swap_remove(at);
        if self.entries.len() < INDEX_DROP_BELOW {
            self.index = None;
        } else if let Some(index) = &mut self.index {
            index.remove(key);
            if let Some((moved, _)) = self.entries.get(at) {
                index.insert(*moved, at);
            }
            shrink_map(index);
        }
        // A node that once held thousands of subscribers gives the memory back.
        let capacity = self.entries.capacity();
        if capacity >= SHRINK_MIN_CAPACITY && self.entries.len() < capacity / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        Some(value)
    }
}

/// Halves a map's footprint once it is mostly empty; amortised O(1) per removal.
fn shrink_map<A: Eq + Hash, B>(map: &mut HashMap<A, B>) {
    let capacity = map.capacity();
    if capacity >= SHRINK_MIN_CAPACITY && map.len() < capacity / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// A match position: a node and the unconsumed rest of the name (`None`: all consumed).
/// What is left to do of a match: descend into a node with the rest of the name (and whether
/// its wildcard slots count), or report a node's own subscribers.
enum Step<'a, K, V> {
    Descend(&'a Node<K, V>, Option<&'a str>, bool),
    Visit(&'a Node<K, V>),
}

impl<K, V> Clone for Step<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Step<'_, K, V> {}

type Cursor<'a, K, V> = Step<'a, K, V>;

/// LIFO of `+` branches still to explore: an inline array first, a Vec only past it.
struct Pending<'a, K, V> {
    inline: [Option<Cursor<'a, K, V>>; INLINE_PENDING],
    inline_len: usize,
    spill: Vec<Cursor<'a, K, V>>,
}

impl<'a, K, V> Pending<'a, K, V> {
    fn new() -> Self {
        Pending {
            inline: [None; INLINE_PENDING],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, cursor: Cursor<'a, K, V>) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) => {
                *slot = Some(cursor);
                self.inline_len += 1;
            }
            None => self.spill.push(cursor),
        }
    }

    fn pop(&mut self) -> Option<Cursor<'a, K, V>> {
        // The spill only fills once the array is full, so it holds the newest entries.
        if let Some(cursor) = self.spill.pop() {
            return Some(cursor);
        }
        self.inline_len = self.inline_len.checked_sub(1)?;
        self.inline.get_mut(self.inline_len)?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topic;

    /// Sorted (key, value) pairs `for_each_match` reports for `name`.
    fn matched<V: Clone + Ord>(tree: &SubscriptionTree<u32, V>, name: &str) -> Vec<(u32, V)> {
        let mut out = Vec::new();
        tree.for_each_match(name, |k, v| out.push((k, v.clone())));
        out.sort();
        out
    }

    fn check(case: &str, tree: &SubscriptionTree<u32, u32>, name: &str, want: &[(u32, u32)]) {
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(matched(tree, name), want, "{case}: name {name:?}");
    }

    /// Nodes below the root: pruning must bring this back to what live filters need.
    fn node_count<K, V>(tree: &SubscriptionTree<K, V>) -> usize {
        let mut count = 0;
        let mut stack = vec![&tree.root];
        while let Some(node) = stack.pop() {
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
            stack.extend(node.hash.as_deref());
            count += 1;
        }
        count - 1
    }

    /// Expected (key, value) pairs of one matching case.
    type Matches = &'static [(u32, u32)];

    #[test]
    fn matching_table() {
        let filters: &[(&str, u32)] = &[
            ("a/b", 1),
            ("a/+", 2),
            ("a/#", 3),
            ("#", 4),
            ("+/b", 5),
            ("+", 6),
            ("a//b", 7),
            ("/a", 8),
            ("a/", 9),
            ("$SYS/#", 10),
            ("$SYS/+", 11),
            ("+/+", 12),
            ("a/b/c", 13),
        ];
        let mut tree = SubscriptionTree::new();
        for (filter, key) in filters {
            assert_eq!(tree.insert(filter, *key, *key), None, "insert {filter}");
        }
        assert_eq!(tree.len(), filters.len());
        let cases: &[(&str, &str, Matches)] = &[
            (
                "exact and wildcards",
                "a/b",
                &[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (12, 12)],
            ),
            ("hash matches parent", "a", &[(3, 3), (4, 4), (6, 6)]),
            ("deeper", "a/b/c", &[(3, 3), (4, 4), (13, 13)]),
            ("empty middle level", "a//b", &[(3, 3), (4, 4), (7, 7)]),
            (
                "empty last level",
                "a/",
                &[(2, 2), (3, 3), (4, 4), (9, 9), (12, 12)],
            ),
            ("empty first level", "/a", &[(4, 4), (8, 8), (12, 12)]),
            ("separator only", "/", &[(4, 4), (12, 12)]),
            ("unrelated", "x/y/z", &[(4, 4)]),
            ("MQTT-4.7.2-1 $ name", "$SYS/x", &[(10, 10), (11, 11)]),
            ("MQTT-4.7.2-1 $ parent", "$SYS", &[(10, 10)]),
            ("MQTT-4.7.2-1 $ deep", "$SYS/x/y", &[(10, 10)]),
            ("MQTT-4.7.2-1 other $ name", "$other/b", &[]),
            (
                "$ in a later level",
                "a/$x",
                &[(2, 2), (3, 3), (4, 4), (12, 12)],
            ),
        ];
        for (case, name, want) in cases {
            check(case, &tree, name, want);
        }
    }

    #[test]
    fn insert_replace_remove_prune() {
        let mut tree: SubscriptionTree<u32, &str> = SubscriptionTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/b/c", 1, "one"), None);
        assert_eq!(
            tree.insert("a/b/c", 1, "uno"),
            Some("one"),
            "replace returns old"
        );
        assert_eq!(tree.len(), 1, "replace does not grow len");
        assert_eq!(matched(&tree, "a/b/c"), vec![(1, "uno")]);
        assert_eq!(node_count(&tree), 3);

        assert_eq!(tree.insert("a/+", 2, "two"), None);
        assert_eq!(tree.insert("a/#", 2, "two#"), None);
        assert_eq!(node_count(&tree), 5);

        assert_eq!(tree.remove("a/b/c", 9), None, "unknown key");
        assert_eq!(tree.remove("a/b", 1), None, "filter that is only a prefix");
        assert_eq!(tree.remove("a/b/c/d", 1), None, "filter longer than any");
        assert_eq!(tree.len(), 3);

        assert_eq!(tree.remove("a/b/c", 1), Some("uno"));
        assert_eq!(tree.remove("a/b/c", 1), None, "second remove");
        // `a/b` and `a/b/c` are gone, `a`, `a/+` and `a/#` stay.
        assert_eq!(node_count(&tree), 3);
        assert_eq!(tree.remove("a/+", 2), Some("two"));
        assert_eq!(node_count(&tree), 2);
        assert_eq!(tree.remove("a/#", 2), Some("two#"));
        assert_eq!(node_count(&tree), 0, "everything pruned");
        assert!(tree.is_empty());
    }

    #[test]
    fn prune_keeps_nodes_with_subscribers_or_branches() {
        let mut tree: SubscriptionTree<u32, u32> = SubscriptionTree::new();
        tree.insert("a", 1, 1);
        tree.insert("a/b/c/d", 1, 2);
        tree.insert("a/b/x", 2, 3);
        assert_eq!(node_count(&tree), 5);
        // `a/b` branches to `x`, so only `c` and `d` go.
        assert_eq!(tree.remove("a/b/c/d", 1), Some(2));
        assert_eq!(node_count(&tree), 3);
        // `a` holds a subscriber, so only `b` and `x` go.
        assert_eq!(tree.remove("a/b/x", 2), Some(3));
        assert_eq!(node_count(&tree), 1);
        // A node that still has children is kept when its last subscriber leaves.
        tree.insert("a/b", 3, 4);
        assert_eq!(tree.remove("a", 1), Some(1));
        assert_eq!(node_count(&tree), 2);
        check("child still matches", &tree, "a/b", &[(3, 4)]);
        assert_eq!(tree.remove("a/b", 3), Some(4));
        assert_eq!(node_count(&tree), 0);
    }

    #[test]
    fn empty_levels_are_distinct_nodes() {
        let mut tree: SubscriptionTree<u32, u32> = SubscriptionTree::new();
        tree.insert("/", 1, 1);
        tree.insert("//", 2, 2);
        tree.insert("a//", 3, 3);
        check("one separator", &tree, "/", &[(1, 1)]);
        check("two separators", &tree, "//", &[(2, 2)]);
        check("trailing empties", &tree, "a//", &[(3, 3)]);
        assert_eq!(tree.remove("//", 2), Some(2));
        check("sibling survives", &tree, "/", &[(1, 1)]);
        assert_eq!(tree.remove("/", 1), Some(1));
        assert_eq!(tree.remove("a//", 3), Some(3));
        assert_eq!(node_count(&tree), 0);
    }

    #[test]
    fn overlapping_filters_of_one_key_visit_once_each() {
        let mut tree: SubscriptionTree<u32, &str> = SubscriptionTree::new();
        for filter in ["a/b", "a/+", "a/#", "#", "+/b", "+/+"] {
            tree.insert(filter, 7, filter);
        }
        tree.insert("a/b", 8, "other");
        let got = matched(&tree, "a/b");
        let want = vec![
            (7, "#"),
            (7, "+/+"),
            (7, "+/b"),
            (7, "a/#"),
            (7, "a/+"),
            (7, "a/b"),
            (8, "other"),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn many_keys_on_one_node() {
        const N: u32 = 10_000;
        let mut tree: SubscriptionTree<u32, u32> = SubscriptionTree::new();
        for key in 0..N {
            assert_eq!(tree.insert("load/+", key, key), None);
        }
        for key in (0..N).step_by(3) {
            assert_eq!(
                tree.insert("load/+", key, key + N),
                Some(key),
                "replace {key}"
            );
        }
        assert_eq!(tree.len(), N as usize);
        let mut seen = vec![0u8; N as usize];
        tree.for_each_match("load/x", |k, v| {
            let want = if k % 3 == 0 { k + N } else { k };
            assert_eq!(*v, want, "value of {k}");
            seen[k as usize] += 1;
        });
        assert!(seen.iter().all(|&n| n == 1), "every key once");

        // Remove in an order that moves entries around inside the node.
        for key in (0..N).rev().filter(|k| k % 2 == 0) {
            assert!(tree.remove("load/+", key).is_some(), "remove {key}");
        }
        assert_eq!(tree.remove("load/+", 0), None);
        let mut left: Vec<u32> = Vec::new();
        tree.for_each_match("load/y", |k, _| left.push(k));
        left.sort_unstable();
        assert_eq!(left, (0..N).filter(|k| k % 2 == 1).collect::<Vec<_>>());

        for key in (0..N).filter(|k| k % 2 == 1) {
            assert!(tree.remove("load/+", key).is_some(), "remove {key}");
        }
        assert!(tree.is_empty());
        assert_eq!(node_count(&tree), 0);
    }

    #[test]
    fn index_survives_growing_and_shrinking_around_threshold() {
        let mut tree: SubscriptionTree<u32, u32> = SubscriptionTree::new();
        for round in 0..3u32 {
            for key in 0..40 {
                tree.insert("t", key, key + round);
            }
            for key in (0..40).filter(|k| k % 4 != 0) {
                assert_eq!(tree.remove("t", key), Some(key + round), "round {round}");
            }
            let want: Vec<(u32, u32)> = (0..40)
                .filter(|k| k % 4 == 0)
                .map(|k| (k, k + round))
                .collect();
            assert_eq!(matched(&tree, "t"), want, "round {round}");
        }
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        // 30,001 levels, within the 65,535-byte limit; test threads have small stacks.
        let depth = 30_000;
        let exact = format!("{}x", "x/".repeat(depth));
        let plus = format!("{}+", "+/".repeat(depth));
        let hash = format!("{}#", "x/".repeat(depth));
        let mut tree: SubscriptionTree<u32, u32> = SubscriptionTree::new();
        tree.insert(&exact, 1, 1);
        tree.insert(&plus, 2, 2);
        tree.insert(&hash, 3, 3);
        check("deep name", &tree, &exact, &[(1, 1), (2, 2), (3, 3)]);
        assert_eq!(tree.remove(&plus, 2), Some(2));
        check("after remove", &tree, &exact, &[(1, 1), (3, 3)]);
        // `tree` drops with two 30,000-deep chains still in it.
    }

    /// Tiny deterministic generator (xorshift64*), enough to vary topics without `rand`.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
            options[self.below(options.len())]
        }

        fn name(&mut self) -> String {
            let levels = 1 + self.below(4);
            let mut out = Vec::new();
            out.push(self.pick(&["a", "b", "", "$s", "c"]));
            for _ in 1..levels {
                out.push(self.pick(&["a", "b", "", "$s"]));
            }
            out.join("/")
        }

        fn filter(&mut self) -> String {
            let levels = 1 + self.below(4);
            let mut out = Vec::new();
            for _ in 0..levels {
                out.push(self.pick(&["a", "b", "", "+", "+", "$s"]));
            }
            if self.below(3) == 0 {
                out.push("#");
            }
            out.join("/")
        }
    }

    #[test]
    fn property_matches_topic_matches() {
        let mut rng = Gen(0x9e37_79b9_7f4a_7c15);
        let filters: Vec<String> = (0..300)
            .map(|_| rng.filter())
            .filter(|f| topic::validate_topic_filter(f).is_ok())
            .collect();
        let names: Vec<String> = (0..300)
            .map(|_| rng.name())
            .filter(|n| topic::validate_topic_name(n).is_ok())
            .collect();
        assert!(filters.len() > 250 && names.len() > 250);

        // Key = index into `filters`, so duplicate filter strings are separate pairs.
        let mut tree: SubscriptionTree<u32, usize> = SubscriptionTree::new();
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(tree.insert(filter, i as u32, i), None);
        }
        let mut live = vec![true; filters.len()];

        // Returns how many (name, filter) pairs matched, so the test can tell it saw some.
        let compare = |tree: &SubscriptionTree<u32, usize>, live: &[bool], stage: &str| {
            let mut total = 0;
            let mut dollar_total = 0;
            for name in &names {
                let mut got = Vec::new();
                tree.for_each_match(name, |k, v| {
                    assert_eq!(k as usize, *v);
                    got.push(*v);
                });
                got.sort_unstable();
                let want: Vec<usize> = (0..filters.len())
                    .filter(|&i| live[i] && topic::matches(&filters[i], name))
                    .collect();
                assert_eq!(got, want, "{stage}: name {name:?}");
                total += got.len();
                if name.starts_with('$') {
                    dollar_total += got.len();
                }
            }
            (total, dollar_total)
        };
        let (total, dollar_total) = compare(&tree, &live, "all inserted");
        assert!(total > names.len(), "generator too sparse: {total} matches");
        assert!(dollar_total > 0, "no `$` name matched anything");

        // Remove a pseudo-random half and compare again.
        for i in 0..filters.len() {
            if rng.below(2) == 0 {
                assert_eq!(tree.remove(&filters[i], i as u32), Some(i));
                live[i] = false;
            }
        }
        assert_eq!(tree.len(), live.iter().filter(|&&l| l).count());
        compare(&tree, &live, "half removed");

        for i in 0..filters.len() {
            if live[i] {
                assert_eq!(tree.remove(&filters[i], i as u32), Some(i));
            }
        }
        assert!(tree.is_empty());
        assert_eq!(node_count(&tree), 0, "all nodes pruned");
    }
}
