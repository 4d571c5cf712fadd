//! Channel policy (SPEC §3): an ordered list of rules; the first rule whose pattern matches a channel
//! decides who may subscribe to it, and a channel no rule matches is refused to everyone.
//!
//! Patterns use `*` for one or more characters and `{userId}` for the subscriber's own id. User ids
//! may contain `:`, the channels' separator, so an id can fill `{userId}` only where nothing of the
//! pattern follows it (`user:{userId}`), or when it has no `:`: otherwise `bob:alerts` would own
//! `inbox:bob:alerts:high` under `inbox:{userId}:*`, a channel of `bob`'s.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use rtg_model::user::User;

/// Who a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Everyone, anonymous sockets too.
    Anonymous,
    /// Any authenticated user.
    Authenticated,
    /// The user whose id fills `{userId}`.
    Owner,
    /// Users with role `admin`.
    Admin,
    /// Users with this role.
    Role(String),
}

impl Who {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "anonymous" | "anyone" => Who::Anonymous,
            "authenticated" => Who::Authenticated,
            "owner" => Who::Owner,
            "admin" => Who::Admin,
            _ => match s.strip_prefix("role:") {
                Some(r) if !r.is_empty() => Who::Role(r.to_string()),
                _ => bail!("unknown who '{s}' (anonymous, authenticated, owner, admin or role:<name>)"),
            },
        })
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: String,
    pub who: Vec<Who>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    pattern: String,
    who: WhoList,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WhoList {
    One(String),
    Many(Vec<String>),
}

impl Default for Policy {
    /// The default table of SPEC §3.
    fn default() -> Self {
        let rule = |p: &str, who: &[Who]| Rule { pattern: p.into(), who: who.to_vec() };
        let auth = [Who::Authenticated];
        Policy {
            rules: vec![
                rule("announcements", &[Who::Anonymous]),
                rule("apps:*", &auth),
                rule("users:*", &auth),
                rule("database:*", &auth),
                rule("deployments:*", &auth),
                rule("storage:*", &auth),
                rule("user:{userId}", &[Who::Owner, Who::Admin]),
                rule("system:*", &[Who::Admin]),
            ],
        }
    }
}

impl Policy {
    /// Reads a TOML policy file (`[[rule]] pattern = "..." who = [...]`). Errors carry the line.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("CHANNEL_POLICY_FILE: cannot read {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("CHANNEL_POLICY_FILE {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1)
                .unwrap_or(0);
            anyhow::anyhow!("line {line}: {}", e.message())
        })?;
        let mut rules = Vec::with_capacity(file.rule.len());
        for (i, r) in file.rule.into_iter().enumerate() {
            let names = match r.who {
                WhoList::One(s) => vec![s],
                WhoList::Many(v) => v,
            };
            let who = names
                .iter()
                .map(|s| Who::parse(s))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("rule {} ({})", i + 1, r.pattern))?;
            if r.pattern.is_empty() || r.pattern.len() > 128 {
                bail!("rule {}: pattern must be 1 to 128 characters", i + 1);
            }
            rules.push(Rule { pattern: r.pattern, who });
        }
        Ok(Policy { rules })
    }

    /// The rule patterns, in order.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.pattern.as_str())
    }

    /// Does any rule match this channel (so that it can have subscribers at all)?
    pub fn knows(&self, channel: &str) -> bool {
        self.rules.iter().any(|r| pattern_matches(&r.pattern, channel))
    }

    /// May a backend publish to this channel (a Redis `PUBLISH` or a durable ingress entry): a valid
    /// name (SPEC §3) that the policy knows. Anything else is dropped.
    pub fn publishable(&self, channel: &str) -> bool {
        rtg_model::names::valid_id(channel) && self.knows(channel)
    }

    /// May `user` (None: anonymous) subscribe to `channel`?
    pub fn may_subscribe(&self, user: Option<&User>, channel: &str) -> bool {
        let Some(rule) = self.rules.iter().find(|r| pattern_matches(&r.pattern, channel)) else {
            return false;
        };
        rule.who.iter().any(|who| match (who, user) {
            (Who::Anonymous, _) => true,
            (_, None) => false,
            (Who::Authenticated, Some(_)) => true,
            (Who::Admin, Some(u)) => u.is_admin(),
            (Who::Role(r), Some(u)) => &u.role == r,
            (Who::Owner, Some(u)) => owner_matches(&rule.pattern, &u.user_id, channel),
        })
    }

    /// The patterns this user may use, own id filled in; admins also see the `{userId}` rules as `*`.
    pub fn authorized_patterns(&self, user: Option<&User>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |p: String| {
            if !out.contains(&p) {
                out.push(p)
            }
        };
        for rule in &self.rules {
            let templated = rule.pattern.contains("{userId}");
            for who in &rule.who {
                let allowed = match (who, user) {
                    (Who::Anonymous, _) => true,
                    (_, None) => false,
                    (Who::Authenticated, Some(_)) | (Who::Owner, Some(_)) => true,
                    (Who::Admin, Some(u)) => u.is_admin(),
                    (Who::Role(r), Some(u)) => &u.role == r,
                };
                if !allowed {
                    continue;
                }
                match (who, user) {
                    (Who::Owner, Some(u)) if templated && !fills(&rule.pattern, &u.user_id) => {}
                    (Who::Owner, Some(u)) if templated => push(rule.pattern.replace("{userId}", &u.user_id)),
                    (Who::Owner, _) => {}
                    _ if templated => {
                        if let Some(u) = user.filter(|u| fills(&rule.pattern, &u.user_id)) {
                            push(rule.pattern.replace("{userId}", &u.user_id));
                        }
                        push(rule.pattern.replace("{userId}", "*"));
                    }
                    _ => push(rule.pattern.clone()),
                }
            }
        }
        out
    }
}

/// Does a rule pattern (with `{userId}` standing for any id) match this channel?
fn pattern_matches(pattern: &str, channel: &str) -> bool {
    if pattern.contains("{userId}") {
        glob(&pattern.replace("{userId}", "*"), channel)
    } else {
        glob(pattern, channel)
    }
}

/// May `user_id` stand for `{userId}` in `pattern`? Not when it holds a `:` and the pattern goes on
/// after a `{userId}`: the id would cross into the next segments (see the module's doc).
fn fills(pattern: &str, user_id: &str) -> bool {
    !user_id.contains(':') || pattern.split("{userId}").skip(1).all(str::is_empty)
}

/// A pattern character: `None` is a star.
type Tok = Option<u8>;

fn tokens(pattern: &str, out: &mut Vec<Tok>) {
    out.extend(pattern.bytes().map(|b| (b != b'*').then_some(b)));
}

/// Does the owner rule `pattern` match `channel` with the user's id in place of `{userId}`? The id
/// is matched literally: a `*` in it is a character, never a wildcard.
fn owner_matches(pattern: &str, user_id: &str, channel: &str) -> bool {
    if !pattern.contains("{userId}") || !fills(pattern, user_id) {
        return false;
    }
    let mut toks = Vec::with_capacity(pattern.len() + user_id.len());
    let mut parts = pattern.split("{userId}");
    tokens(parts.next().unwrap_or_default(), &mut toks);
    for part in parts {
        toks.extend(user_id.bytes().map(Some));
        tokens(part, &mut toks);
    }
    glob_tokens(&toks, channel.as_bytes())
}

/// `*` matches one or more characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut toks = Vec::with_capacity(pattern.len());
    tokens(pattern, &mut toks);
    glob_tokens(&toks, text.as_bytes())
}

fn glob_tokens(p: &[Tok], t: &[u8]) -> bool {
    // Classic two-pointer wildcard match, with each star consuming at least one byte.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi].is_none() {
            // The star takes t[ti] at least.
            star = Some((pi, ti + 1));
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == Some(t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, role: &str) -> User {
        User { user_id: id.into(), email: None, name: None, role: role.into() }
    }

    #[test]
    fn owner_rule_matches_the_id_literally() {
        let p = Policy::default();
        let star = user("*", "user");
        assert!(!p.may_subscribe(Some(&star), "user:alice"), "a '*' subject is no wildcard");
        assert!(p.may_subscribe(Some(&star), "user:*"));
        assert!(owner_matches("me:{userId}:inbox", "a*", "me:a*:inbox"));
        assert!(!owner_matches("me:{userId}:inbox", "a*", "me:ab:inbox"));
        assert!(owner_matches("me:{userId}:*", "bob", "me:bob:x"));
    }

    #[test]
    fn an_id_with_a_colon_never_crosses_a_segment() {
        let p = Policy::from_toml("[[rule]]\npattern = \"inbox:{userId}:*\"\nwho = \"owner\"\n[[rule]]\npattern = \"user:{userId}\"\nwho = \"owner\"\n").unwrap();
        let (bob, bob_alerts) = (user("bob", "user"), user("bob:alerts", "user"));
        assert!(p.may_subscribe(Some(&bob), "inbox:bob:alerts:high"));
        assert!(!p.may_subscribe(Some(&bob_alerts), "inbox:bob:alerts:high"), "bob's inbox, not bob:alerts'");
        assert!(!p.authorized_patterns(Some(&bob_alerts)).iter().any(|x| x.starts_with("inbox:")));
        // At the end of a pattern an id with `:` is unambiguous: it keeps its own channel.
        assert!(p.may_subscribe(Some(&bob_alerts), "user:bob:alerts"));
        assert!(!p.may_subscribe(Some(&bob), "user:bob:alerts"));
        assert!(p.may_subscribe(Some(&bob), "user:bob"));
        assert!(p.authorized_patterns(Some(&bob_alerts)).contains(&"user:bob:alerts".to_string()));
    }

    #[test]
    fn glob_needs_one_char_per_star() {
        assert!(glob("apps:*", "apps:created"));
        assert!(!glob("apps:*", "apps:"));
        assert!(glob("a*c", "abc"));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "ac"));
        assert!(glob("*:x", "foo:x"));
        assert!(!glob("announcements", "announcements2"));
        assert!(glob("a*b*c", "axxbyc"));
        assert!(!glob("a*b*c", "abc"));
    }

    #[test]
    fn default_matrix() {
        let p = Policy::default();
        let alice = user("alice", "user");
        let admin = user("root", "admin");
        assert!(p.may_subscribe(None, "announcements"));
        assert!(!p.may_subscribe(None, "apps:created"));
        assert!(p.may_subscribe(Some(&alice), "apps:created"));
        assert!(p.may_subscribe(Some(&alice), "user:alice"));
        assert!(!p.may_subscribe(Some(&alice), "user:bob"));
        assert!(p.may_subscribe(Some(&admin), "user:bob"));
        assert!(!p.may_subscribe(Some(&alice), "system:alerts"));
        assert!(p.may_subscribe(Some(&admin), "system:alerts"));
        assert!(!p.may_subscribe(Some(&admin), "random"), "default deny, admins included");
        assert!(!p.may_subscribe(Some(&alice), "user:"));
    }

    #[test]
    fn listing() {
        let p = Policy::default();
        assert_eq!(p.authorized_patterns(None), vec!["announcements"]);
        let a = p.authorized_patterns(Some(&user("alice", "user")));
        assert!(a.contains(&"user:alice".to_string()) && !a.contains(&"user:*".to_string()));
        assert!(!a.contains(&"system:*".to_string()));
        let r = p.authorized_patterns(Some(&user("root", "admin")));
        assert!(r.contains(&"user:root".to_string()) && r.contains(&"user:*".to_string()));
        assert!(r.contains(&"system:*".to_string()));
    }

    #[test]
    fn policy_file() {
        let p = Policy::from_toml(
            "[[rule]]\npattern = \"team:*\"\nwho = [\"role:staff\"]\n[[rule]]\npattern = \"me:{userId}\"\nwho = \"owner\"\n",
        )
        .unwrap();
        assert!(p.may_subscribe(Some(&user("x", "staff")), "team:a"));
        assert!(!p.may_subscribe(Some(&user("x", "user")), "team:a"));
        assert!(p.may_subscribe(Some(&user("x", "user")), "me:x"));
        assert!(!p.may_subscribe(Some(&user("x", "user")), "announcements"));
        let err = Policy::from_toml("[[rule]]\npattern = \"a\"\nwho = [\"nobody\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown who"), "{err:#}");
        let err = Policy::from_toml("[[rule]]\npattern = \"a\"\nwho = \n").unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
        let err = Policy::from_toml("[[rule]]\npattern = \"a\"\nwho = \"owner\"\nextra = 1\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 4"), "{err:#}");
    }
}
