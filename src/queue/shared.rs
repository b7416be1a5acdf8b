//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5): the groups and who is next.
//!
//! Owns: group membership and the round-robin choice of one member per message. Must not:
//! know about connections or deliver anything: the router says which members are online and
//! which sessions persist, and delivers to the member chosen.
//!
//! Policy when no member is online: the message goes, still round-robin, to a member whose
//! session persists (it is queued there as for any offline session, so QoS 0 is dropped);
//! when no member's session persists, nobody gets it.

use std::collections::HashMap;

use super::session::Subscription;

/// One group: every member's subscription, and where the round robin stands.
pub(super) struct SharedGroup {
    /// The filter the group's members subscribed to, without the `$share/{group}/` prefix.
    pub filter: String,
    members: Vec<(u32, Subscription)>,
    next: usize,
}

/// All groups, by their full `$share/{group}/{filter}` string; ids are stable while a group
/// has members.
#[derive(Default)]
pub(super) struct SharedGroups {
    groups: Vec<Option<SharedGroup>>,
    by_name: HashMap<String, u32>,
    free: Vec<u32>,
}

/// What `join` did.
pub(super) struct Joined {
    pub group: u32,
    /// The group did not exist before: the caller adds it to the subscription index.
    pub new_group: bool,
}

impl SharedGroups {
    /// Adds or replaces `slot`'s subscription in the group `name` (`$share/g/f`) for `filter`.
    pub fn join(
        &mut self,
        name: &str,
        filter: &str,
        slot: u32,
        subscription: Subscription,
    ) -> Joined {
        let (group, new_group) = match self.by_name.get(name) {
            Some(&id) => (id, false),
            None => {
                let fresh = SharedGroup {
                    filter: filter.to_owned(),
                    members: Vec::new(),
                    next: 0,
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.groups[id as usize] = Some(fresh);
                        id
                    }
                    None => {
                        self.groups.push(Some(fresh));
                        u32::try_from(self.groups.len() - 1).expect("fewer than 4 billion groups")
                    }
                };
                self.by_name.insert(name.to_owned(), id);
                (id, true)
            }
        };
        let members = &mut self.group_mut(group).members;
        match members.iter_mut().find(|(member, _)| *member == slot) {
            Some(entry) => entry.1 = subscription,
            None => members.push((slot, subscription)),
        }
        Joined { group, new_group }
    }

    /// Removes `slot` from the group `name`. Returns the group's id and filter when the group
    /// is now empty and gone (the caller removes it from the subscription index), and whether
    /// the member was there at all.
    pub fn leave(&mut self, name: &str, slot: u32) -> (bool, Option<(u32, String)>) {
        let Some(&id) = self.by_name.get(name) else {
            return (false, None);
        };
        let group = self.group_mut(id);
        let before = group.members.len();
        group.members.retain(|(member, _)| *member != slot);
        let removed = group.members.len() != before;
        if !group.members.is_empty() {
            return (removed, None);
        }
        let group = self.groups[id as usize]
            .take()
            .expect("group ids point at groups");
        self.by_name.remove(name);
        self.free.push(id);
        (removed, Some((id, group.filter)))
    }

    /// Chooses the member to receive the next message of group `id`: the next online member
    /// in turn, else the next member whose session persists.
    pub fn pick(
        &mut self,
        id: u32,
        is_online: impl Fn(u32) -> bool,
        persists: impl Fn(u32) -> bool,
    ) -> Option<(u32, Subscription)> {
        let group = self.groups.get_mut(id as usize)?.as_mut()?;
        let count = group.members.len();
        for wanted in [&is_online as &dyn Fn(u32) -> bool, &persists] {
            for step in 0..count {
                let index = (group.next + step) % count;
                let (slot, subscription) = group.members[index];
                if wanted(slot) {
                    group.next = (index + 1) % count;
                    return Some((slot, subscription));
                }
            }
        }
        None
    }

    fn group_mut(&mut self, id: u32) -> &mut SharedGroup {
        self.groups[id as usize]
            .as_mut()
            .expect("group ids point at groups")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::SubscriptionOptions;

    fn subscription() -> Subscription {
        Subscription {
            options: SubscriptionOptions::default(),
            identifier: None,
        }
    }

    #[test]
    fn round_robin_over_online_members_then_persistent_ones() {
        let mut groups = SharedGroups::default();
        let joined = groups.join("$share/g/t", "t", 1, subscription());
        assert!(joined.new_group);
        groups.join("$share/g/t", "t", 2, subscription());
        groups.join("$share/g/t", "t", 3, subscription());
        // Subscribing again replaces the member's subscription; it is not added twice.
        assert!(!groups.join("$share/g/t", "t", 3, subscription()).new_group);
        let id = joined.group;
        let online = |slot: u32| slot != 2;
        let picks: Vec<u32> = (0..4)
            .map(|_| groups.pick(id, online, |_| false).expect("a member").0)
            .collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
        // Nobody online: the persistent member 2 gets it; nobody persistent either: none.
        assert_eq!(groups.pick(id, |_| false, |s| s == 2).map(|p| p.0), Some(2));
        assert!(groups.pick(id, |_| false, |_| false).is_none());
    }

    #[test]
    fn the_last_member_leaving_removes_the_group() {
        let mut groups = SharedGroups::default();
        let id = groups.join("$share/g/t", "t", 1, subscription()).group;
        groups.join("$share/g/t", "t", 2, subscription());
        assert_eq!(groups.leave("$share/g/t", 1), (true, None));
        assert_eq!(groups.leave("$share/g/t", 1), (false, None));
        assert_eq!(
            groups.leave("$share/g/t", 2),
            (true, Some((id, "t".to_owned())))
        );
        assert!(groups.pick(id, |_| true, |_| true).is_none());
        // The id is reused by the next new group.
        assert_eq!(groups.join("$share/h/u", "u", 5, subscription()).group, id);
    }
}
