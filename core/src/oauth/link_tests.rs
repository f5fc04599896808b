//! The linker against an in-memory store whose every operation is atomic, as the hosts' are;
//! concurrency is any interleaving of two linkers' steps.

use super::*;
use crate::password::PasswordHash;
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Default)]
struct Store {
    claims: HashMap<String, Claim>,
    accounts: HashMap<String, AccountData>,
}

impl Store {
    fn member(&mut self, key: &str) {
        let pw = PasswordHash::with_iterations("password1", vec![1; 16], 1);
        self.accounts.insert(
            key.into(),
            AccountData::new(key, None, pw, false, [0; 3], 0),
        );
    }

    /// One step of `l`; `Some` when it is over.
    fn step(&mut self, l: &mut Linker) -> Option<Want> {
        match l.want() {
            Want::Claim { identity, claim } => {
                let held = self.claims.entry(identity).or_insert(claim).clone();
                l.claimed(held);
            }
            Want::Load { key } => l.loaded(self.accounts.get(&key)),
            Want::Replace { identity, from, to } => {
                let ok = self.claims.get(&identity) == Some(&from);
                if ok {
                    self.claims.insert(identity, to);
                }
                l.replaced(ok);
            }
            Want::Create { account } => {
                let key = account.key();
                let free = !self.accounts.contains_key(&key);
                if free {
                    self.accounts.insert(key, *account);
                }
                l.created(free);
            }
            Want::Add { key, identity } => {
                let outcome = match self.accounts.get_mut(&key) {
                    None => Added::NoAccount,
                    Some(a) => match add_identity(a, &identity) {
                        Ok(_) => Added::Done,
                        Err(e) => Added::Refused(e),
                    },
                };
                l.added(outcome);
            }
            Want::Release { identity, account } => {
                if self
                    .claims
                    .get(&identity)
                    .is_some_and(|c| c.account == account)
                {
                    self.claims.remove(&identity);
                }
                l.released();
            }
            over => return Some(over),
        }
        None
    }

    fn run(&mut self, mut l: Linker) -> Want {
        for _ in 0..50 {
            if let Some(w) = self.step(&mut l) {
                return w;
            }
        }
        panic!("the linker did not finish");
    }
}

fn profile(sub: &str, name: &str) -> ExternalProfile {
    ExternalProfile::new(
        "discord",
        sub,
        Some(name),
        Some(name),
        Some("https://cdn.example/a.png"),
    )
}

const RND: [u8; SIGN_IN_RANDOM] = [0xab, 0xcd, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 1];
const RND2: [u8; SIGN_IN_RANDOM] = [0xab, 0xcd, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 2];

#[test]
fn first_sign_in_creates_and_the_second_finds() {
    let mut s = Store::default();
    let w = s.run(Linker::sign_in(profile("1", "Nelly Bly"), &RND, &[], 1000));
    assert_eq!(
        w,
        Want::Done {
            key: "nelly_bly".into(),
            created: true
        }
    );
    let a = &s.accounts["nelly_bly"];
    assert!(a.password.is_none() && a.has_identity("discord", "1"));
    assert_eq!(a.name, "Nelly Bly");
    assert_eq!(a.avatar.as_deref(), Some("https://cdn.example/a.png"));
    let w = s.run(Linker::sign_in(profile("1", "Renamed"), &RND, &[], 2000));
    assert_eq!(
        w,
        Want::Done {
            key: "nelly_bly".into(),
            created: false
        }
    );
    assert_eq!(s.accounts.len(), 1);
}

#[test]
fn a_taken_username_gets_a_suffix_and_admin_names_are_skipped() {
    let mut s = Store::default();
    s.member("nelly");
    let w = s.run(Linker::sign_in(profile("1", "nelly"), &RND, &[], 1000));
    assert_eq!(
        w,
        Want::Done {
            key: "nelly-abcd".into(),
            created: true
        }
    );
    assert_eq!(s.claims["discord:1"].account, "nelly-abcd");
    let w = s.run(Linker::sign_in(
        profile("2", "root"),
        &RND,
        &["root".into()],
        1000,
    ));
    assert_eq!(
        w,
        Want::Done {
            key: "root-abcd".into(),
            created: true
        }
    );
    // All candidates taken: refused, and the claim is released.
    let mut s = Store::default();
    for n in ["ann", "ann-abcd", "ann-0102", "ann-030405"] {
        s.member(n);
    }
    let w = s.run(Linker::sign_in(profile("3", "ann"), &RND, &[], 1000));
    assert_eq!(w, Want::Failed(ApiError::UsernameTaken));
    assert!(s.claims.is_empty());
}

#[test]
fn link_and_unlink_keep_a_way_in() {
    let mut s = Store::default();
    s.member("ada");
    let w = s.run(Linker::link(profile("7", "Ada"), "ada", &RND, 1000));
    assert_eq!(
        w,
        Want::Done {
            key: "ada".into(),
            created: false
        }
    );
    // Linking it again is a no-op; a second Discord account is refused and its claim released.
    assert!(matches!(
        s.run(Linker::link(profile("7", "Ada"), "ada", &RND, 1100)),
        Want::Done { .. }
    ));
    let w = s.run(Linker::link(profile("8", "Ada2"), "ada", &RND, 1200));
    assert_eq!(w, Want::Failed(ApiError::OAuth(OAuthError::AlreadyLinked)));
    assert!(!s.claims.contains_key("discord:8"));
    // Signing in with the linked identity finds the member.
    let w = s.run(Linker::sign_in(profile("7", "x"), &RND, &[], 1300));
    assert_eq!(
        w,
        Want::Done {
            key: "ada".into(),
            created: false
        }
    );
    // Another member cannot take it.
    s.member("bob");
    let w = s.run(Linker::link(profile("7", "Ada"), "bob", &RND, 1400));
    assert_eq!(
        w,
        Want::Failed(ApiError::OAuth(OAuthError::LinkedElsewhere))
    );
    // Unlink: the password account may; the provider-only account may not drop its last one.
    let ada = s.accounts.get_mut("ada").unwrap();
    assert_eq!(remove_identity(ada, "discord").unwrap().subject, "7");
    assert_eq!(remove_identity(ada, "discord"), Err(OAuthError::NotLinked));
    let mut only = AccountData::external("zed", &profile("9", "zed"), [0; 3], 0);
    assert_eq!(
        remove_identity(&mut only, "discord"),
        Err(OAuthError::LastWayIn)
    );
    assert_eq!(identities_body(&only)["has_password"], false);
}

#[test]
fn a_half_done_claim_is_respected_then_taken_over() {
    let mut s = Store::default();
    // A claim naming an account that never came (its host died).
    s.claims.insert(
        "discord:5".into(),
        Claim {
            account: "ghost".into(),
            at: 1000,
            by: "x".into(),
        },
    );
    let w = s.run(Linker::sign_in(
        profile("5", "eve"),
        &RND,
        &[],
        1000 + STALE_CLAIM_MS - 1,
    ));
    assert!(
        matches!(w, Want::Failed(ApiError::Unavailable { .. })),
        "{w:?}"
    );
    let w = s.run(Linker::sign_in(
        profile("5", "eve"),
        &RND,
        &[],
        1000 + STALE_CLAIM_MS,
    ));
    assert_eq!(
        w,
        Want::Done {
            key: "eve".into(),
            created: true
        }
    );
    // An unlink that stopped before releasing: the old account no longer lists it.
    s.member("bob");
    s.accounts.get_mut("eve").unwrap().identities.clear();
    let w = s.run(Linker::link(
        profile("5", "eve"),
        "bob",
        &RND,
        1000 + 3 * STALE_CLAIM_MS,
    ));
    assert_eq!(
        w,
        Want::Done {
            key: "bob".into(),
            created: false
        }
    );
}

/// Runs two linkers, stepping them in the order `schedule` gives (then the rest in turn).
fn race(s: &mut Store, mut a: Linker, mut b: Linker, schedule: &[bool]) -> (Want, Want) {
    let (mut ra, mut rb) = (None, None);
    let mut order = schedule
        .iter()
        .copied()
        .chain(std::iter::repeat([true, false]).flatten());
    for _ in 0..200 {
        if ra.is_some() && rb.is_some() {
            break;
        }
        let pick_a = order.next().unwrap_or(true);
        if (pick_a && ra.is_none()) || rb.is_some() {
            ra = ra.or_else(|| s.step(&mut a));
        } else {
            rb = rb.or_else(|| s.step(&mut b));
        }
    }
    (ra.expect("a finished"), rb.expect("b finished"))
}

proptest! {
    /// Two members link one identity at once: exactly one gets it, in any interleaving.
    #[test]
    fn concurrent_links_of_one_identity_give_one_account(schedule in proptest::collection::vec(any::<bool>(), 0..20)) {
        let mut s = Store::default();
        s.member("ann");
        s.member("bob");
        let (a, b) = race(&mut s, Linker::link(profile("1", "x"), "ann", &RND, 1000), Linker::link(profile("1", "x"), "bob", &RND2, 1000), &schedule);
        let ok = [&a, &b].iter().filter(|w| matches!(w, Want::Done { .. })).count();
        prop_assert_eq!(ok, 1, "{:?} {:?}", a, b);
        let holders: Vec<_> = s.accounts.values().filter(|x| x.has_identity("discord", "1")).map(|x| x.key()).collect();
        prop_assert_eq!(holders.len(), 1);
        prop_assert_eq!(&s.claims["discord:1"].account, &holders[0]);
    }

    /// Two first sign-ins of one identity at once: one account, both signed in to it (or the
    /// second told to retry while the first is half-way).
    #[test]
    fn concurrent_first_sign_ins_make_one_account(schedule in proptest::collection::vec(any::<bool>(), 0..20)) {
        let mut s = Store::default();
        let (a, b) = race(&mut s, Linker::sign_in(profile("1", "ann"), &RND, &[], 1000), Linker::sign_in(profile("1", "ann"), &RND2, &[], 1000), &schedule);
        prop_assert_eq!(s.accounts.len(), 1);
        for w in [&a, &b] {
            let fine = matches!(w, Want::Done { key, .. } if key == "ann") || matches!(w, Want::Failed(ApiError::Unavailable { .. }));
            prop_assert!(fine, "{:?}", w);
        }
        let one_done = matches!(a, Want::Done { .. }) || matches!(b, Want::Done { .. });
        prop_assert!(one_done);
    }
}
