//! Topic names and subscription patterns, and the [`PatternTrie`] that finds every pattern matching a topic.
//!
//! Topics are dot-separated tokens (`chat.room1.alice`), as NATS subjects. Patterns are topics that may also
//! hold the wildcards `*` (exactly one token) and `>` (one or more tokens, last position only): `chat.*.alice`,
//! `chat.>`. Wildcards let a client subscribe to a family of topics and let the ACL speak about families.
//!
//! **Inboxes.** A topic that begins with `@` is the inbox of the user named after the `@` and is always ONE token,
//! dots included: `@alice.smith` is alice.smith's inbox, not a topic `alice` with a child `smith`. User names are
//! often e-mail addresses, and if dots split inboxes, `@alice.>` (alice's "sub-inboxes") would match the inbox of
//! a user named `alice.x`. So `*` and `>` match an inbox as they match any single-token topic, `@alice.>` is not a
//! valid pattern, and the one extra wildcard pattern `@*` matches every inbox and nothing else (an ACL can let
//! everyone publish to every inbox without also allowing `*`).
//!
//! The text rules are those of [`validate_topic`](envelope::validate_topic) (1 to
//! [`MAX_TOPIC_LEN`](envelope::MAX_TOPIC_LEN) bytes, no whitespace or control characters); on top of them tokens
//! are not empty, and `*` and `>` appear only as whole tokens, so every topic that can be published is also a
//! valid exact pattern and can be subscribed to. This is stricter than the edges' check today: `a..b`, `news.`,
//! `ne*ws` and `news.*` were accepted as topics and are not, as in NATS.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use crate::protocol::envelope;

/// Separates the tokens of a topic.
pub const SEPARATOR: char = '.';
/// Starts an inbox topic, `@<user>`.
pub const INBOX_PREFIX: char = '@';
/// The pattern that matches every inbox and nothing else.
pub const ANY_INBOX: &str = "@*";
const STAR: &str = "*";
const REST: &str = ">";

/// What is wrong with a topic or a pattern. Messages name the rule that is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// The text rules shared with the ws-go envelope: empty, over
    /// [`MAX_TOPIC_LEN`](envelope::MAX_TOPIC_LEN) bytes, whitespace or control characters.
    #[error(transparent)]
    Text(#[from] envelope::TopicError),
    /// Two dots in a row, or a dot at either end.
    #[error("empty token at position {position} (tokens are separated by single dots)")]
    EmptyToken {
        /// The 1-based position of the empty token.
        position: usize,
    },
    /// `*` or `>` as a token of a topic: wildcards select topics in subscriptions, they are not topics.
    #[error("`*` and `>` are wildcards for subscriptions, not part of a topic")]
    WildcardInTopic,
    /// `*` or `>` inside a token, such as `ne*ws`.
    #[error("`*` and `>` must be whole tokens (`news.*`), not part of one (`{token}`)")]
    WildcardInToken {
        /// The offending token.
        token: String,
    },
    /// An inbox pattern with a wildcard other than `@*`, such as `@alice.>` or `@a*`.
    #[error("an inbox `@<user>` is one token: `@*` is its only wildcard form")]
    WildcardInInbox,
    /// `>` followed by more tokens.
    #[error("`>` must be the last token")]
    RestNotLast,
    /// `@` with no user name.
    #[error("`@` must be followed by a user name")]
    EmptyInbox,
}

/// A topic a message is published to: validated, borrowed from the frame it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic<'a>(&'a str);

impl<'a> Topic<'a> {
    /// Checks `text` against the topic rules (see the module documentation).
    pub fn parse(text: &'a str) -> Result<Self, SyntaxError> {
        match check(text)? {
            Shape::Exact => Ok(Self(text)),
            Shape::Wildcard => Err(SyntaxError::WildcardInTopic),
        }
    }

    /// The topic as sent.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// Whether this is a user's inbox, `@<user>`.
    pub fn is_inbox(&self) -> bool {
        self.0.starts_with(INBOX_PREFIX)
    }

    /// The tokens, in order; an inbox is one token.
    pub fn tokens(&self) -> Tokens<'a> {
        Tokens::new(self.0)
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The tokens of a topic or pattern, as [`Topic::tokens`] and [`Pattern::tokens`] split them.
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    rest: Option<&'a str>,
    split: bool,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            rest: Some(text),
            split: !text.starts_with(INBOX_PREFIX),
        }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        if self.split
            && let Some((head, tail)) = rest.split_once(SEPARATOR)
        {
            self.rest = Some(tail);
            return Some(head);
        }
        self.rest = None;
        Some(rest)
    }
}

/// One token of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternToken<'a> {
    /// Matches exactly this token.
    Literal(&'a str),
    /// `*`: matches any one token.
    Star,
    /// `>`: matches one or more tokens; always last.
    Rest,
    /// `@*`: matches any inbox; always the whole pattern.
    AnyInbox,
}

impl<'a> PatternToken<'a> {
    fn classify(token: &'a str) -> Self {
        match token {
            STAR => Self::Star,
            REST => Self::Rest,
            ANY_INBOX => Self::AnyInbox,
            literal => Self::Literal(literal),
        }
    }

    /// Whether every token this one matches is also matched by `self`.
    fn covers(self, other: Self) -> bool {
        match (self, other) {
            (Self::Star, _) => true,
            (Self::AnyInbox, Self::AnyInbox) => true,
            (Self::AnyInbox, Self::Literal(token)) => token.starts_with(INBOX_PREFIX),
            (Self::Literal(a), Self::Literal(b)) => a == b,
            _ => false,
        }
    }

    /// Whether some token is matched by both.
    fn overlaps(self, other: Self) -> bool {
        match (self, other) {
            (Self::Star, _) | (_, Self::Star) => true,
            (Self::AnyInbox, Self::AnyInbox) => true,
            (Self::AnyInbox, Self::Literal(token)) | (Self::Literal(token), Self::AnyInbox) => {
                token.starts_with(INBOX_PREFIX)
            }
            (Self::Literal(a), Self::Literal(b)) => a == b,
            _ => false,
        }
    }

    /// Whether this token, not `>`, matches the topic token `token`.
    fn matches(self, token: &str) -> bool {
        match self {
            Self::Literal(literal) => literal == token,
            Self::Star => true,
            Self::AnyInbox => token.starts_with(INBOX_PREFIX),
            Self::Rest => false,
        }
    }
}

/// A subscription pattern: a topic, or a family of topics through `*`, `>` and `@*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Box<str>,
    exact: bool,
}

impl Pattern {
    /// Checks `text` against the pattern rules (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, SyntaxError> {
        let shape = check(text)?;
        Ok(Self {
            text: text.into(),
            exact: shape == Shape::Exact,
        })
    }

    /// `>`: every topic.
    pub fn everything() -> Self {
        Self {
            text: REST.into(),
            exact: false,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has no wildcard, so it matches exactly one topic, itself.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The tokens, in order.
    pub fn tokens(&self) -> impl Iterator<Item = PatternToken<'_>> + Clone {
        Tokens::new(&self.text).map(PatternToken::classify)
    }

    /// Whether `topic` is one of the topics this pattern selects.
    pub fn matches(&self, topic: Topic<'_>) -> bool {
        if self.exact {
            return *self.text == *topic.as_str();
        }
        let mut topic = topic.tokens();
        for token in self.tokens() {
            match (token, topic.next()) {
                (PatternToken::Rest, next) => return next.is_some(),
                (token, Some(next)) if token.matches(next) => {}
                _ => return false,
            }
        }
        topic.next().is_none()
    }

    /// Whether every topic `other` matches is matched by `self` as well (`news.>` covers `news.*`; `news.sport`
    /// does not). Exact: a pattern that does not cover another always misses one of its topics.
    pub fn covers(&self, other: &Pattern) -> bool {
        let (mut mine, mut theirs) = (self.tokens(), other.tokens());
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                (Some(PatternToken::Rest), Some(_)) => return true,
                (Some(mine), Some(theirs))
                    if theirs != PatternToken::Rest && mine.covers(theirs) => {}
                _ => return false,
            }
        }
    }

    /// Whether some topic is matched by both patterns (`news.*` and `*.sport` overlap in `news.sport`).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let (mut mine, mut theirs) = (self.tokens(), other.tokens());
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                (Some(PatternToken::Rest), Some(_)) | (Some(_), Some(PatternToken::Rest)) => {
                    return true;
                }
                (Some(mine), Some(theirs)) if mine.overlaps(theirs) => {}
                _ => return false,
            }
        }
    }
}

impl From<Topic<'_>> for Pattern {
    /// The exact pattern that matches only this topic.
    fn from(topic: Topic<'_>) -> Self {
        Self {
            text: topic.as_str().into(),
            exact: true,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Exact,
    Wildcard,
}

/// The rules common to topics and patterns; tells whether a wildcard was seen.
fn check(text: &str) -> Result<Shape, SyntaxError> {
    envelope::validate_topic(text)?;
    if let Some(user) = text.strip_prefix(INBOX_PREFIX) {
        return match user {
            "" => Err(SyntaxError::EmptyInbox),
            STAR => Ok(Shape::Wildcard),
            user if user.contains(['*', '>']) => Err(SyntaxError::WildcardInInbox),
            _ => Ok(Shape::Exact),
        };
    }
    let mut shape = Shape::Exact;
    let mut tokens = Tokens::new(text).enumerate().peekable();
    while let Some((index, token)) = tokens.next() {
        match token {
            "" => {
                return Err(SyntaxError::EmptyToken {
                    position: index + 1,
                });
            }
            STAR => shape = Shape::Wildcard,
            REST if tokens.peek().is_some() => return Err(SyntaxError::RestNotLast),
            REST => shape = Shape::Wildcard,
            token if token.contains(['*', '>']) => {
                return Err(SyntaxError::WildcardInToken {
                    token: token.to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// A topic or subscription as the edges take it from a client: under the rules above, or a ws-go topic that
/// breaks only the token rules (`a..b`, `news.`, `ne*ws`, `@`), which compat clients used and which keeps working
/// as one exact topic (matched by no wildcard, and refused when an ACL is in force: patterns cannot speak about
/// it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compat<T> {
    /// Valid under the topic and pattern rules.
    Strict(T),
    /// A legacy ws-go topic, with the rule it breaks.
    Legacy(SyntaxError),
}

/// Reads a topic a client publishes to. Refused: what breaks ws-go's text rules, and every use of wildcard
/// syntax (`news.*`, `news.>`, `@*`, `a.>.b`, `@alice.>`), since such a message could not be told from a
/// pattern; other token-rule breaks are [`Compat::Legacy`].
pub fn published(text: &str) -> Result<Compat<Topic<'_>>, SyntaxError> {
    match Topic::parse(text) {
        Ok(topic) => Ok(Compat::Strict(topic)),
        Err(
            err @ (SyntaxError::Text(_)
            | SyntaxError::WildcardInTopic
            | SyntaxError::WildcardInInbox
            | SyntaxError::RestNotLast),
        ) => Err(err),
        Err(err) => Ok(Compat::Legacy(err)),
    }
}

/// Reads what a client subscribes to: a pattern, or a legacy exact topic. Refused: what breaks the text rules,
/// and misplaced wildcards (`a.>.b`, `@alice.>`), which are mistakes rather than ws-go topics.
pub fn subscribed(text: &str) -> Result<Compat<Pattern>, SyntaxError> {
    match Pattern::parse(text) {
        Ok(pattern) => Ok(Compat::Strict(pattern)),
        Err(
            err @ (SyntaxError::Text(_) | SyntaxError::WildcardInInbox | SyntaxError::RestNotLast),
        ) => Err(err),
        Err(err) => Ok(Compat::Legacy(err)),
    }
}

/// The one exact topic `text` names, as a pattern, or `None` for a wildcard pattern (which spans topics) or a legacy
/// ws-go topic outside the token rules: what a topic's history (its offsets, `history`, a resume) is asked for by.
pub fn exact(text: &str) -> Option<Pattern> {
    Pattern::parse(text).ok().filter(Pattern::is_exact)
}

/// Values (subscribers, ACL rules...) stored under patterns, found by topic.
///
/// Exact patterns live in one hash map, so a topic nobody subscribes to by wildcard costs one hash lookup, as
/// before wildcards existed. Wildcard patterns live in a trie of tokens; [`PatternTrie::for_each_match`] walks
/// only the branches whose prefix matches the topic (the literal child, the `*` child, and the `>` values of
/// each node on the way), so its cost grows with the topic's tokens and the wildcards along its path, never with
/// the number of patterns. Its recursion is as deep as the topic has tokens (at most 129, as topics are at most
/// [`MAX_TOPIC_LEN`](envelope::MAX_TOPIC_LEN) bytes). Nodes left empty by [`PatternTrie::remove`] are freed, so
/// churn does not leak.
pub struct PatternTrie<V> {
    exact: HashMap<Box<str>, HashSet<V>>,
    wild: Node<V>,
    wild_entries: usize,
    entries: usize,
}

struct Node<V> {
    literal: HashMap<Box<str>, Node<V>>,
    star: Option<Box<Node<V>>>,
    inbox: Option<Box<Node<V>>>,
    /// Values of patterns that end at this node.
    here: HashSet<V>,
    /// Values of patterns that end with `>` after this node.
    rest: HashSet<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            star: None,
            inbox: None,
            here: HashSet::new(),
            rest: HashSet::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.inbox.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<V: Eq + Hash> Node<V> {
    fn visit<'a>(&'a self, mut topic: Tokens<'_>, visit: &mut impl FnMut(&'a V)) {
        let Some(token) = topic.next() else {
            self.here.iter().for_each(visit);
            return;
        };
        self.rest.iter().for_each(&mut *visit);
        if let Some(child) = self.literal.get(token) {
            child.visit(topic.clone(), visit);
        }
        if let Some(child) = &self.star {
            child.visit(topic.clone(), visit);
        }
        if let Some(child) = &self.inbox
            && token.starts_with(INBOX_PREFIX)
        {
            child.visit(topic, visit);
        }
    }

    fn insert<'p>(
        &mut self,
        mut pattern: impl Iterator<Item = PatternToken<'p>>,
        value: V,
    ) -> bool {
        let child = match pattern.next() {
            None => return self.here.insert(value),
            Some(PatternToken::Rest) => return self.rest.insert(value),
            Some(PatternToken::Literal(token)) => self.literal.entry(token.into()).or_default(),
            Some(PatternToken::Star) => self.star.get_or_insert_with(Box::default),
            Some(PatternToken::AnyInbox) => self.inbox.get_or_insert_with(Box::default),
        };
        child.insert(pattern, value)
    }

    fn remove<'p>(
        &mut self,
        mut pattern: impl Iterator<Item = PatternToken<'p>>,
        value: &V,
    ) -> bool {
        match pattern.next() {
            None => self.here.remove(value),
            Some(PatternToken::Rest) => self.rest.remove(value),
            Some(PatternToken::Literal(token)) => {
                let Some(child) = self.literal.get_mut(token) else {
                    return false;
                };
                let removed = child.remove(pattern, value);
                if child.is_empty() {
                    self.literal.remove(token);
                }
                removed
            }
            Some(PatternToken::Star) => Self::remove_boxed(&mut self.star, pattern, value),
            Some(PatternToken::AnyInbox) => Self::remove_boxed(&mut self.inbox, pattern, value),
        }
    }

    fn remove_boxed<'p>(
        slot: &mut Option<Box<Node<V>>>,
        pattern: impl Iterator<Item = PatternToken<'p>>,
        value: &V,
    ) -> bool {
        let Some(child) = slot else {
            return false;
        };
        let removed = child.remove(pattern, value);
        if child.is_empty() {
            *slot = None;
        }
        removed
    }
}

impl<V> Default for PatternTrie<V> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wild: Node::default(),
            wild_entries: 0,
            entries: 0,
        }
    }
}

impl<V> fmt::Debug for PatternTrie<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatternTrie")
            .field("entries", &self.entries)
            .field("wildcard_entries", &self.wild_entries)
            .finish_non_exhaustive()
    }
}

impl<V: Eq + Hash> PatternTrie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value` under `pattern`; false if it was already there.
    pub fn insert(&mut self, pattern: &Pattern, value: V) -> bool {
        let inserted = if pattern.is_exact() {
            self.exact
                .entry(pattern.as_str().into())
                .or_default()
                .insert(value)
        } else {
            let inserted = self.wild.insert(pattern.tokens(), value);
            self.wild_entries += usize::from(inserted);
            inserted
        };
        self.entries += usize::from(inserted);
        inserted
    }

    /// Removes `value` from under `pattern`; false if it was not there.
    pub fn remove(&mut self, pattern: &Pattern, value: &V) -> bool {
        let removed = if pattern.is_exact() {
            let Some(values) = self.exact.get_mut(pattern.as_str()) else {
                return false;
            };
            let removed = values.remove(value);
            if values.is_empty() {
                self.exact.remove(pattern.as_str());
            }
            removed
        } else {
            let removed = self.wild.remove(pattern.tokens(), value);
            self.wild_entries -= usize::from(removed);
            removed
        };
        self.entries -= usize::from(removed);
        removed
    }

    /// Whether `value` is stored under `pattern`.
    pub fn contains(&self, pattern: &Pattern, value: &V) -> bool {
        if pattern.is_exact() {
            return self
                .exact
                .get(pattern.as_str())
                .is_some_and(|values| values.contains(value));
        }
        let mut node = &self.wild;
        for token in pattern.tokens() {
            let child = match token {
                PatternToken::Rest => return node.rest.contains(value),
                PatternToken::Literal(token) => node.literal.get(token),
                PatternToken::Star => node.star.as_deref(),
                PatternToken::AnyInbox => node.inbox.as_deref(),
            };
            match child {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.here.contains(value)
    }

    /// Calls `visit` with the value of every (pattern, value) entry whose pattern matches `topic`: a value stored
    /// under several matching patterns (`news.*` and `news.>`) is visited once per pattern, so a caller that must
    /// deliver once deduplicates. Exact entries come first.
    pub fn for_each_match<'a>(&'a self, topic: Topic<'_>, mut visit: impl FnMut(&'a V)) {
        if let Some(values) = self.exact.get(topic.as_str()) {
            values.iter().for_each(&mut visit);
        }
        if self.wild_entries > 0 {
            self.wild.visit(topic.tokens(), &mut visit);
        }
    }

    /// Number of (pattern, value) entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Number of entries under wildcard patterns (0 means every lookup is a single hash lookup).
    pub fn wildcard_len(&self) -> usize {
        self.wild_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn published_topics_refuse_wildcard_syntax_and_keep_legacy_ws_go_topics() {
        for refused in ["news.*", "news.>", "@*", "a.>.b", "@alice.>", "", "a b"] {
            assert!(published(refused).is_err(), "{refused:?}");
        }
        assert!(matches!(published("news.sport"), Ok(Compat::Strict(_))));
        for legacy in ["a..b", "news.", "ne*ws", "@"] {
            assert!(
                matches!(published(legacy), Ok(Compat::Legacy(_))),
                "{legacy:?}"
            );
        }
    }

    #[test]
    fn subscriptions_are_patterns_misplaced_wildcards_are_refused_and_legacy_topics_kept() {
        for pattern in ["news.*", "news.>", "@*", "news.sport", ">"] {
            assert!(
                matches!(subscribed(pattern), Ok(Compat::Strict(_))),
                "{pattern:?}"
            );
        }
        for refused in ["a.>.b", "@alice.>", "a b"] {
            assert!(subscribed(refused).is_err(), "{refused:?}");
        }
        for legacy in ["a..b", "ne*ws"] {
            assert!(
                matches!(subscribed(legacy), Ok(Compat::Legacy(_))),
                "{legacy:?}"
            );
        }
    }

    fn topic(text: &str) -> Topic<'_> {
        Topic::parse(text).unwrap()
    }

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn topics_follow_the_token_rules() {
        let ok = [
            "news",
            "news.sport",
            "a.b.c",
            "@alice",
            "@alice.smith",
            "news.@x",
            "a-b_c.d:e",
        ];
        for text in ok {
            assert_eq!(Topic::parse(text).map(|t| t.as_str()), Ok(text), "{text}");
        }
        let long = "a".repeat(envelope::MAX_TOPIC_LEN + 1);
        let bad: [(&str, SyntaxError); 13] = [
            ("", envelope::TopicError::Empty.into()),
            (&long, envelope::TopicError::TooLong.into()),
            ("news sport", envelope::TopicError::BadCharacter.into()),
            ("news.", SyntaxError::EmptyToken { position: 2 }),
            (".news", SyntaxError::EmptyToken { position: 1 }),
            ("a..b", SyntaxError::EmptyToken { position: 2 }),
            ("news.*", SyntaxError::WildcardInTopic),
            (">", SyntaxError::WildcardInTopic),
            ("@*", SyntaxError::WildcardInTopic),
            (
                "ne*ws",
                SyntaxError::WildcardInToken {
                    token: "ne*ws".into(),
                },
            ),
            ("a.b>", SyntaxError::WildcardInToken { token: "b>".into() }),
            ("@", SyntaxError::EmptyInbox),
            ("@al*ce", SyntaxError::WildcardInInbox),
        ];
        for (text, error) in bad {
            assert_eq!(Topic::parse(text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn patterns_follow_the_token_rules() {
        for text in [
            "news", "*", ">", "news.*", "news.>", "*.sport", "*.*.>", "@alice", "@*",
        ] {
            assert_eq!(Pattern::parse(text).map(|p| p.to_string()), Ok(text.into()));
        }
        assert!(pattern("news.sport").is_exact());
        assert!(exact("news.sport").is_some() && exact("@a.b").is_some());
        assert!(
            exact("news.*").is_none() && exact("a..b").is_none(),
            "a pattern, a legacy topic"
        );
        assert!(pattern("@a.b").is_exact());
        assert!(!pattern("news.*").is_exact());
        assert!(!pattern("@*").is_exact());
        assert_eq!(Pattern::everything(), pattern(">"));
        let bad = [
            ("news.>.x", SyntaxError::RestNotLast),
            ("news.>.>", SyntaxError::RestNotLast),
            (
                "ne*ws",
                SyntaxError::WildcardInToken {
                    token: "ne*ws".into(),
                },
            ),
            (
                "news.**",
                SyntaxError::WildcardInToken { token: "**".into() },
            ),
            (
                "news.*>",
                SyntaxError::WildcardInToken { token: "*>".into() },
            ),
            ("news..*", SyntaxError::EmptyToken { position: 2 }),
            ("@alice.>", SyntaxError::WildcardInInbox),
            ("@>", SyntaxError::WildcardInInbox),
            ("@", SyntaxError::EmptyInbox),
            ("news.\t*", envelope::TopicError::BadCharacter.into()),
        ];
        for (text, error) in bad {
            assert_eq!(Pattern::parse(text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn inboxes_are_one_token_whatever_their_dots() {
        assert_eq!(
            topic("@alice.smith").tokens().collect::<Vec<_>>(),
            ["@alice.smith"]
        );
        assert_eq!(
            topic("a.@b.c").tokens().collect::<Vec<_>>(),
            ["a", "@b", "c"]
        );
        assert!(topic("@alice.smith").is_inbox());
        assert!(!topic("a.@b").is_inbox());
    }

    #[test]
    fn matcher_table() {
        let table: &[(&str, &str, bool)] = &[
            ("news", "news", true),
            ("news", "news.sport", false),
            ("news.*", "news.sport", true),
            ("news.*", "news", false),
            ("news.*", "news.sport.live", false),
            ("news.>", "news.sport", true),
            ("news.>", "news.sport.live", true),
            ("news.>", "news", false),
            ("*.sport", "news.sport", true),
            ("*.sport", "news.weather", false),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            ("*", "news", true),
            ("*", "a.b", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*.>", "a", false),
            ("*.>", "a.b", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("*", "@alice", true),
            (">", "@alice.smith", true),
            ("@*", "@alice.smith", true),
            ("@*", "alice", false),
            ("@*", "a.@b", false),
            ("@alice", "@alice", true),
            ("@alice", "@alice.smith", false),
            ("*.*", "@alice.smith", false),
            ("a.*", "a.@b", true),
        ];
        for &(p, t, expected) in table {
            assert_eq!(pattern(p).matches(topic(t)), expected, "{p} ~ {t}");
        }
    }

    #[test]
    fn covers_and_overlaps_table() {
        let table: &[(&str, &str, bool, bool)] = &[
            // (a, b, a covers b, a and b overlap)
            ("news.>", "news.*", true, true),
            ("news.*", "news.>", false, true),
            ("news.sport", "news.*", false, true),
            ("news.*", "news.sport", true, true),
            (">", "@*", true, true),
            ("*", "@*", true, true),
            ("@*", "*", false, true),
            ("@*", "@alice", true, true),
            ("@*", "news", false, false),
            ("news.>", "news", false, false),
            ("a.*", "*.b", false, true),
            ("a.>", "b.>", false, false),
            ("*.*", "*.*.*", false, false),
            ("*.>", "*.*.*", true, true),
        ];
        for &(a, b, covers, overlaps) in table {
            assert_eq!(pattern(a).covers(&pattern(b)), covers, "{a} covers {b}");
            assert_eq!(
                pattern(a).overlaps(&pattern(b)),
                overlaps,
                "{a} overlaps {b}"
            );
        }
    }

    /// The naive model: tokenise both sides and match token by token, recursively.
    fn model_matches(pattern: &str, topic: &str) -> bool {
        fn tokenise(text: &str) -> Vec<&str> {
            if text.starts_with('@') {
                vec![text]
            } else {
                text.split('.').collect()
            }
        }
        fn go(p: &[&str], t: &[&str]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(&">"), Some(_)) => true,
                (Some(&"*"), Some(_)) => go(&p[1..], &t[1..]),
                (Some(&"@*"), Some(tok)) => tok.starts_with('@') && go(&p[1..], &t[1..]),
                (Some(lit), Some(tok)) => lit == tok && go(&p[1..], &t[1..]),
                _ => false,
            }
        }
        go(&tokenise(pattern), &tokenise(topic))
    }

    /// Every valid pattern of up to three tokens over a small alphabet, and every topic of up to four tokens over
    /// that alphabet plus a token no pattern names: a pattern that fails to cover another misses one of these.
    fn small_universe() -> (Vec<Pattern>, Vec<String>) {
        let mut patterns = vec![];
        let mut topics = vec![];
        let mut texts: Vec<String> = vec![String::new()];
        for len in 1..=4 {
            texts = texts
                .iter()
                .flat_map(|prefix| {
                    ["a", "b", "z", "*", ">"].map(|token| {
                        if prefix.is_empty() {
                            token.to_owned()
                        } else {
                            format!("{prefix}.{token}")
                        }
                    })
                })
                .collect();
            for text in &texts {
                if len <= 3 && !text.contains('z') {
                    patterns.extend(Pattern::parse(text).ok());
                }
                topics.extend(Topic::parse(text).ok().map(|t| t.as_str().to_owned()));
            }
        }
        for inbox in ["@a", "@b", "@*"] {
            patterns.push(pattern(inbox));
        }
        topics.extend(["@a", "@b", "@z", "@a.b", "a.@b"].map(String::from));
        (patterns, topics)
    }

    #[test]
    fn covers_and_overlaps_agree_with_the_topics_they_match() {
        let (patterns, topics) = small_universe();
        assert_eq!((patterns.len(), topics.len()), (55, 125));
        for a in &patterns {
            for b in &patterns {
                let of_b = || topics.iter().filter(|t| b.matches(topic(t)));
                let covers = of_b().all(|t| a.matches(topic(t)));
                let overlaps = of_b().any(|t| a.matches(topic(t)));
                assert_eq!(a.covers(b), covers, "{a} covers {b}");
                assert_eq!(a.overlaps(b), overlaps, "{a} overlaps {b}");
            }
        }
    }

    fn arb_pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*", ">"]), 1..5)
                .prop_map(|tokens| tokens.join(".")),
            1 => prop::sample::select(vec!["@a", "@b", "@a.b", "@*"]).prop_map(String::from),
        ]
        .prop_filter("valid pattern", |text| Pattern::parse(text).is_ok())
    }

    fn arb_topic() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "@a"]), 1..6)
                .prop_map(|tokens| tokens.join(".")),
            1 => prop::sample::select(vec!["@a", "@b", "@a.b", "@c"]).prop_map(String::from),
        ]
        .prop_filter("valid topic", |text| Topic::parse(text).is_ok())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u8),
        Remove(String, u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        (any::<bool>(), arb_pattern(), 0u8..6).prop_map(|(insert, pattern, value)| {
            if insert {
                Op::Insert(pattern, value)
            } else {
                Op::Remove(pattern, value)
            }
        })
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_every_topic_is_an_exact_pattern_matching_itself(
            text in "[a-c.*>@ {}\t]{0,12}|\\PC{0,300}",
        ) {
            let as_pattern = Pattern::parse(&text);
            if let Ok(topic) = Topic::parse(&text) {
                let pattern = as_pattern.expect("every topic is a pattern");
                prop_assert!(pattern.is_exact() && pattern.matches(topic));
                prop_assert!(pattern.covers(&pattern) && pattern.overlaps(&pattern));
                prop_assert_eq!(Pattern::from(topic), pattern);
            } else if let Ok(pattern) = as_pattern {
                prop_assert!(!pattern.is_exact(), "{} is a pattern but not a topic", text);
            }
        }

        #[test]
        fn matcher_agrees_with_the_naive_model(p in arb_pattern(), t in arb_topic()) {
            prop_assert_eq!(pattern(&p).matches(topic(&t)), model_matches(&p, &t));
        }

        #[test]
        fn trie_agrees_with_matching_every_pattern(
            ops in prop::collection::vec(arb_op(), 0..60),
            topics in prop::collection::vec(arb_topic(), 1..10),
        ) {
            let mut trie = PatternTrie::new();
            let mut model: HashSet<(String, u8)> = HashSet::new();
            for op in &ops {
                match op {
                    Op::Insert(p, v) => {
                        prop_assert_eq!(trie.insert(&pattern(p), *v), model.insert((p.clone(), *v)));
                    }
                    Op::Remove(p, v) => {
                        prop_assert_eq!(trie.remove(&pattern(p), v), model.remove(&(p.clone(), *v)));
                    }
                }
                prop_assert_eq!(trie.len(), model.len());
            }
            for (p, v) in &model {
                prop_assert!(trie.contains(&pattern(p), v));
            }
            for t in &topics {
                let mut found = vec![];
                trie.for_each_match(topic(t), |v| found.push(*v));
                found.sort_unstable();
                let mut expected: Vec<u8> = model
                    .iter()
                    .filter(|(p, _)| model_matches(p, t))
                    .map(|(_, v)| *v)
                    .collect();
                expected.sort_unstable();
                prop_assert_eq!(found, expected, "topic {}", t);
            }
            for (p, v) in model {
                prop_assert!(trie.remove(&pattern(&p), &v));
            }
            prop_assert!(trie.is_empty());
            prop_assert!(trie.exact.is_empty() && trie.wild.is_empty(), "emptied trie keeps no nodes");
        }
    }

    #[test]
    fn a_value_under_two_matching_patterns_is_visited_twice() {
        let mut trie = PatternTrie::new();
        trie.insert(&pattern("news.*"), 1);
        trie.insert(&pattern("news.>"), 1);
        trie.insert(&pattern("news.sport"), 2);
        trie.insert(&pattern("weather.*"), 3);
        let mut found = vec![];
        trie.for_each_match(topic("news.sport"), |v| found.push(*v));
        found.sort_unstable();
        assert_eq!(found, [1, 1, 2]);
        assert_eq!((trie.len(), trie.wildcard_len()), (4, 3));
    }
}
